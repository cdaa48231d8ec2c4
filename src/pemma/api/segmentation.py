"""Segmentation stages as Python functions: ``train``, ``adapt``, ``update``, ``predict``, ``evaluate``,
``params``, ``export``, ``synth``. Each is what the ``pemma`` verb of the same name runs."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pemma.api.run import Run, RunLike, absolute_data, name_list, path_of, run_config, warn_tiny_preset
from pemma.errors import PemmaError

Names = str | Iterable[str] | None


def train(data: str | os.PathLike, out: str | os.PathLike, *, centres: Names = None, modalities: Names = None,
          backbone: str | None = None, preset: str = "tiny", config: str | os.PathLike | None = None,
          resume: bool = False, force: bool = False, overrides: dict[str, dict[str, Any]] | None = None,
          **settings: Any) -> Run:
    """Train a segmentation backbone (CT-only, or CT+PET early fusion) and write the run folder ``out``.

    Args:
        data: HECKTOR folder, nnU-Net raw folder or datalist JSON.
        out: run folder.
        centres: centres to train on (list or ``"CHUM,CHUP"``). Default all.
        modalities: input channels, e.g. ``["ct"]`` or ``"ct,pet"`` (early fusion). Default: the config's (ct).
        backbone: ``unetr`` or ``swin_unetr``. Default: the config's (unetr).
        preset: size preset, ``tiny`` (CPU, tests) or ``paper``. Default ``tiny``.
        config: YAML with data / preprocess / model / train sections (over the preset).
        resume: continue an interrupted run in ``out``.
        force: replace a finished run in ``out`` (written beside it, swapped in only on success); without it a
            finished run in ``out`` is an error.
        overrides: ``{section: {field: value}}`` over ``config``.
        settings: the training flags (``seed``, ``epochs``, ``max_steps``, ``batch_size``, ``lr``, ``val_every``,
            ``checkpoint_every``, ``roi``, ``spacing``, ``val_fraction``, ``cache_dir``, ``device``, ``amp``,
            ``gradient_checkpointing``) or any config field by name (``weight_decay=1e-4``).

    Returns:
        The :class:`Run`; ``run.summary`` holds ``steps`` and ``best_dsc`` (best validation mean DSCagg).

    Example:
        >>> run = pemma.train("data/phantom", "runs/ct", centres=["CHUM"], modalities=["ct"], max_steps=2)
    """
    from pemma.runs import new_run_folder
    from pemma.training.segmentation import train as train_backbone

    cfg = absolute_data(run_config(preset, config, overrides, data=data, centres=centres, modalities=modalities,
                                   backbone=backbone, **settings))
    warn_tiny_preset(preset, cfg)
    with new_run_folder(out, force=force, resume=resume) as folder:
        summary = train_backbone(cfg, os.fspath(folder), resume=resume)
    return Run.open(out, summary)


def adapt(base: RunLike, data: str | os.PathLike, out: str | os.PathLike, *, centres: Names = None,
          add_modality: str = "pet", method: str = "lora", rank: int | None = None, alpha: float | None = None,
          adapter_dropout: float | None = None, target_modules: Names = None, train_parts: Names = None,
          modality_dropout: Sequence[float] | None = None, ct_route: str | None = None, recipe: str | None = None,
          preset: str = "tiny", config: str | os.PathLike | None = None, resume: bool = False,
          force: bool = False, overrides: dict[str, dict[str, Any]] | None = None, **settings: Any) -> Run:
    """Add PET to a CT-only run (PEMMA: PET pathway + LoRA / DoRA adapters), or train a baseline from it.

    The base run is never modified; the adapted run stores only what adaptation trained.

    Args:
        base: CT-only run folder of :func:`train` (a path or its :class:`Run`).
        data: dataset folder or datalist.
        out: run folder of the adapted model.
        centres: centres to adapt on. Default all.
        add_modality: modality to add (only ``pet``).
        method: ``pemma_lora`` (``lora``) or ``pemma_dora`` (``dora``); baselines ``early_fusion``,
            ``full_finetune`` (``full``), ``late_fusion`` (any spelling of :data:`pemma.vocab.METHOD_ALIASES`).
        rank, alpha, adapter_dropout: adapter rank r, scaling alpha and input dropout. Default: the recipe's
            (``pemma``: 4, 8, 0).
        target_modules: module suffixes that get adapters. Default: the recipe's (``pemma``: the attention).
        train_parts: non-adapter parts that train. Default: the recipe's, per backbone.
        modality_dropout: probabilities of the input sets (ct+pet, ct, pet). Default (0.6, 0.2, 0.2).
        ct_route: ``exact`` (CT alone runs the untouched base) or ``shared`` (the paper's: CT alone through the
            adapted network). Default: the recipe's (``pemma``: exact; ``authors``: shared).
        recipe: named defaults (:data:`pemma.vocab.RECIPES`, YAML files in ``pemma/recipes``): ``pemma`` (None,
            the default) or ``authors`` (the authors' configuration per backbone). Explicit arguments override it;
            the run records the recipe and the resolved values (``adapter_config.json``).
        preset, config, resume, force, overrides, settings: as for :func:`train`.

    Returns:
        The :class:`Run`; ``run.summary`` holds ``steps``, ``best_dsc`` (and ``weight`` for late fusion).

    Example:
        >>> ad = pemma.adapt(base=run, data="data/phantom", centres=["MDA"], method="lora", out="runs/ad")
    """
    from pemma.adapters.config import AdapterConfig
    from pemma.adapters.recipes import recipe_config
    from pemma.methods import adapt as adapt_run
    from pemma.runs import new_run_folder
    from pemma.vocab import PEMMA_METHODS, canonical_method

    if add_modality != "pet":
        raise PemmaError(f"only pet can be added, got {add_modality!r}")
    try:
        # the PEMMA methods set the adapter type; full fine-tuning builds the PEMMA pathway with LoRA
        adapter_type = PEMMA_METHODS.get(canonical_method(method), "lora")
        given = {"rank": rank, "alpha": alpha, "dropout": adapter_dropout, "target_modules": _tuple(target_modules),
                 "train_parts": _tuple(train_parts),
                 "modality_dropout": None if modality_dropout is None else tuple(modality_dropout),
                 "ct_route": ct_route}
        backbone = _base_backbone(base)
        if backbone is None:  # an unreadable base: the adaptation itself reports it (one line)
            adapter_cfg = AdapterConfig(method=adapter_type, **{k: v for k, v in given.items() if v is not None})
        else:  # recipe < what the caller gave
            adapter_cfg = recipe_config(recipe, backbone, adapter_type, given)
    except ValueError as exc:
        raise PemmaError(f"invalid adapter settings: {exc}") from None
    cfg = absolute_data(run_config(preset, config, overrides, data=data, centres=centres, **settings))
    warn_tiny_preset(preset, cfg)
    with new_run_folder(out, force=force, resume=resume, reads=[path_of(base)]) as folder:
        summary = adapt_run(path_of(base), cfg, os.fspath(folder), method=method, adapter_cfg=adapter_cfg,
                            resume=resume)
    return Run.open(out, summary)


def _base_backbone(base: RunLike) -> str | None:
    """The backbone of the CT base run ``base`` (None when its config cannot be read)."""
    from pemma.config import RunConfig
    from pemma.runs import CONFIG_FILE

    try:
        return RunConfig.load(Path(path_of(base)) / CONFIG_FILE).model.backbone
    except PemmaError:
        return None


def update(model: RunLike, data: str | os.PathLike, modalities: Names, out: str | os.PathLike, *,
           centres: Names = None, ct_route: str | None = None, recipe: str | None = None, preset: str = "tiny",
           config: str | os.PathLike | None = None, resume: bool = False, force: bool = False,
           base: RunLike | None = None, overrides: dict[str, dict[str, Any]] | None = None,
           **settings: Any) -> Run:
    """Continue training an adapted (or baseline) run on new centres with the modalities they provide, no replay.

    Args:
        model: run folder to update (adapt, baselines or an earlier update).
        data: dataset folder or datalist.
        modalities: ``ct``, ``pet`` or ``ct,pet``: what the new centres provide.
        out: run folder of the updated model.
        centres: centres to update on. Default all.
        ct_route, recipe: the CT route / recipe the run was adapted with, if the caller wants it checked (an update
            keeps both: on the shared route a CT-only update trains the same adapter; on the exact route it gets
            a ``ct_update`` adapter). None: the run's. A mismatch is an error.
        preset, config, resume, force, overrides, settings: as for :func:`train`.
        base: the CT base run of ``model``, if it moved since adaptation.

    Example:
        >>> up = pemma.update(ad, data="data/phantom", centres=["HGJ"], modalities="pet", out="runs/up")
    """
    from pemma.methods import update as update_run
    from pemma.runs import new_run_folder, run_family
    from pemma.vocab import parse_modalities

    cfg = absolute_data(run_config(preset, config, overrides, data=data, centres=centres, **settings))
    warn_tiny_preset(preset, cfg)
    reads = [*run_family(path_of(model)), path_of(base)]
    with new_run_folder(out, force=force, resume=resume, reads=reads) as folder:
        summary = update_run(path_of(model), cfg, parse_modalities(modalities or []), os.fspath(folder),
                             resume=resume, base_run=path_of(base), ct_route=ct_route, recipe=recipe)
    return Run.open(out, summary)


def _tuple(value: Names) -> tuple[str, ...] | None:
    names = name_list(value)
    return None if names is None else tuple(names)


def _loaded(model: RunLike, base: RunLike | None, modalities: Names, device: str | None, source: str):
    from pemma.methods import load_model
    from pemma.runtime import resolve_device
    from pemma.vocab import parse_modalities

    dev = resolve_device(device or "auto")
    loaded = load_model(path_of(model), dev, base_run=path_of(base))
    chosen = parse_modalities(name_list(modalities)) if modalities else loaded.input_sets[0]
    loaded.check_inputs(chosen, source)
    return loaded, chosen, dev


def _window(roi: Sequence[int] | None, overlap: float | None, sw_batch_size: int | None, amp: bool | None):
    from pemma.inference.predict import WindowSettings

    return WindowSettings(roi_size=None if roi is None else list(roi), overlap=overlap, sw_batch_size=sw_batch_size,
                          amp=bool(amp))


def predict(model: RunLike, inputs: str | os.PathLike, out: str | os.PathLike, *, modalities: Names = None,
            centres: Names = None, base: RunLike | None = None, roi: Sequence[int] | None = None,
            overlap: float | None = None, sw_batch_size: int | None = None, device: str | None = None,
            amp: bool | None = None, rtstruct: bool = False, reference: str = "ct") -> list[Path]:
    """Write a label NIfTI per case (``<case>.nii.gz``) in the original CT geometry.

    Args:
        model: run folder (or :class:`Run`).
        inputs: the CLI's ``--input``: a dataset folder (HECKTOR or nnU-Net raw), an nnU-Net ``-i`` folder of
            ``<case>_0000`` / ``_0001`` files (``imagesTs``), a datalist, a single image file, or a folder of CT
            files of any names (see :func:`pemma.data.layout.discover_cases`).
            A folder (tree) of DICOM series is also accepted: one case per patient and study, CT and PET
            (``PT``) series found by their tags, PET converted to SUVbw from its tags.
        out: output folder.
        modalities: input set, e.g. ``["ct", "pet"]``. Default: what the model was trained with.
        centres: only these centres.
        base: the CT base run of an adapted model, if it moved since adaptation.
        roi, overlap, sw_batch_size: sliding window. Default: as trained.
        device: ``auto`` (default), ``cpu``, ``cuda``, ``cuda:N``. amp: mixed precision.
        rtstruct: DICOM input only: also write ``<case>_RTSTRUCT.dcm`` beside each label, referencing the case's CT
            series, one ROI per predicted class (GTVp, GTVn).
        reference: grid of PET-only predictions: ``ct`` (default; the case's CT grid when it has a CT) or ``pet``.

    Returns:
        The label files written.

    Raises:
        PemmaError: after trying every case, when some could not be predicted (each is also a warning; the others
            are written).

    Example:
        >>> pemma.predict(ad, inputs="data/phantom/imagesTr", modalities=["ct", "pet"], out="preds/")
        >>> pemma.predict(ad, inputs="/dicom/patient42/", out="preds/", rtstruct=True)
    """
    from pemma.data.dicom import is_dicom_input
    from pemma.data.layout import discover_cases, select_cases
    from pemma.inference.predict import predict_cases

    source = os.fspath(inputs)
    dicom = is_dicom_input(source)
    if rtstruct and not dicom:
        raise PemmaError(f"{source}: --rtstruct needs DICOM input (a folder of DICOM CT series), not NIfTI")
    loaded, chosen, dev = _loaded(model, base, modalities, device, source)
    failures: dict[str, str] = {}
    if dicom:
        written, cases = _predict_dicom(loaded, source, chosen, out, dev, centres, rtstruct, failures,
                                        _window(roi, overlap, sw_batch_size, amp))
    else:
        cases = select_cases(discover_cases(source), centres=name_list(centres) or [], modalities=chosen,
                             source=source)
        written = predict_cases(loaded, cases, chosen, os.fspath(out), dev,
                                _window(roi, overlap, sw_batch_size, amp), failures=failures,
                                reference=reference)
    if failures:  # every case was tried; each bad one is a warning line, then one error with the summary
        import warnings

        for message in failures.values():
            warnings.warn(message, UserWarning, stacklevel=2)
        raise PemmaError(f"{os.fspath(out)}: wrote {len(written)} of {len(cases)} label maps; {len(failures)} "
                         f"case(s) failed: {', '.join(failures)} (see the warnings above)")
    return [Path(p) for p in written]


def _predict_dicom(loaded: Any, source: str, chosen: list[str], out: str | os.PathLike, dev: Any, centres: Names,
                   rtstruct: bool, failures: dict[str, str], window: Any) -> tuple[list[Path], list]:
    """:func:`predict` on a DICOM folder: cases staged one at a time in a temporary folder."""
    import tempfile

    from pemma.data.dicom import dicom_cases
    from pemma.data.layout import select_cases
    from pemma.inference.dicom import predict_dicom_cases

    with tempfile.TemporaryDirectory(prefix="pemma-dicom-") as staging:
        cases = dicom_cases(source, staging)
        records = select_cases([c.record for c in cases], centres=name_list(centres) or [], modalities=chosen,
                               source=source)
        kept = [c for c in cases if c.record in records]
        written = predict_dicom_cases(loaded, kept, chosen, os.fspath(out), dev, window, rtstruct=rtstruct,
                                      failures=failures)
    return written, records


def evaluate(model: RunLike | None = None, data: str | os.PathLike | None = None, *,
             pred: str | os.PathLike | None = None, centres: Names = None, modalities: Names = None, split: str = "all",
             out: str | os.PathLike | None = None, save_predictions: bool = False, base: RunLike | None = None,
             roi: Sequence[int] | None = None, overlap: float | None = None, sw_batch_size: int | None = None,
             device: str | None = None, amp: bool | None = None) -> dict[str, Any]:
    """HECKTOR DSCagg (GTVp, GTVn, mean), per-case Dice, HD95 and volumes on the labelled cases of ``data``: of a
    model's predictions (``model``), or of an existing predictions folder (``pred``, no model run).

    Writes ``metrics_<inputs>.json`` (undefined values as ``null``, the HD95 policy stated) and
    ``cases_<inputs>.csv`` into ``out``.

    Args:
        model: run folder (or :class:`Run`). Give ``model`` or ``pred``.
        data: dataset folder or datalist (the labels).
        pred: a folder of label maps named ``<case_id>.nii.gz`` on each case's CT grid (e.g. nnU-Net's output).
        centres: only these centres. Default all.
        modalities: input set. Default: what the model was trained with.
        split: with a model, which cases: ``all`` (default; a warning names the training cases scored),
            ``unseen`` (neither trained nor validated on), ``val`` (the model's validation cases) or ``train``.
        out: report folder. Default ``<model>/evaluation`` (with ``pred``: ``<pred>/evaluation``).
        save_predictions: also write the label maps (``out/predictions_<inputs>/``).
        base, roi, overlap, sw_batch_size, device, amp: as for :func:`predict`.

    Returns:
        The scores: ``{"inputs", "n_cases", "DSCagg": {"GTVp", "GTVn", "mean"}, "mean_case", "cases", "counts",
        "hd95_policy", "centres"}`` (as written to the JSON report) plus ``"report"``: the JSON and CSV paths.

    Example:
        >>> scores = pemma.evaluate(ad, data="data/phantom", centres=["MDA"], modalities=["ct", "pet"])
        >>> scores["DSCagg"]["mean"]
        >>> pemma.evaluate(pred="nnunet_preds/", data="nnUNet_raw/Dataset501_HN")["DSCagg"]
    """
    import warnings

    from pemma.data.layout import discover_cases, select_cases
    from pemma.evaluation.evaluate import evaluate_model, evaluate_predictions, write_report

    if (model is None) == (pred is None):
        raise PemmaError("evaluate needs either a model (--model) or a predictions folder (--pred), not both")
    if data is None:
        raise PemmaError("evaluate needs --data (the labelled cases)")
    source = os.fspath(data)
    if pred is not None:
        cases = select_cases(discover_cases(source), centres=name_list(centres) or [], require_label=True,
                             source=source)
        result = evaluate_predictions(os.fspath(pred), cases)
        folder = Path(os.fspath(out)) if out is not None else Path(os.fspath(pred)) / "evaluation"
    else:
        loaded, chosen, dev = _loaded(model, base, modalities, device, source)
        cases = select_cases(discover_cases(source), centres=name_list(centres) or [], modalities=chosen,
                             require_label=True, source=source)
        cases = _split_cases(cases, loaded.meta, split, path_of(model))
        trained = set(loaded.meta.get("train_cases") or [])
        seen = [c.case_id for c in cases if c.case_id in trained]
        if seen:
            listed = ", ".join(seen[:5]) + (", ..." if len(seen) > 5 else "")
            warnings.warn(f"{len(seen)} of {len(cases)} evaluated cases were training cases of {path_of(model)} "
                          f"({listed}); --split unseen or val scores only others", UserWarning, stacklevel=2)
        folder = Path(os.fspath(out)) if out is not None else Path(path_of(model)) / "evaluation"
        predictions = folder / f"predictions_{'+'.join(chosen)}" if save_predictions else None
        result = evaluate_model(loaded, cases, chosen, dev, _window(roi, overlap, sw_batch_size, amp),
                                predictions_dir=predictions)
    result["centres"] = sorted({c.centre for c in cases})
    json_path, csv_path = write_report(result, folder)
    return {**result, "report": {"json": str(json_path), "csv": str(csv_path)}}


#: ``--split`` choices of :func:`evaluate`
SPLITS = ("all", "unseen", "val", "train")


def _split_cases(cases: list, meta: dict[str, Any], split: str, source: str | None) -> list:
    if split not in SPLITS:
        raise PemmaError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "all":
        return cases
    train, val = set(meta.get("train_cases") or []), set(meta.get("val_cases") or [])
    keep = {"unseen": lambda c: c.case_id not in train | val, "val": lambda c: c.case_id in val,
            "train": lambda c: c.case_id in train}[split]
    chosen = [c for c in cases if keep(c)]
    if not chosen:
        raise PemmaError(f"{source}: no {split} cases of this model among the selected cases")
    return chosen


def params(model: RunLike | None = None, *, base: RunLike | None = None, backbone: str | None = None,
           preset: str = "tiny", recipe: str | None = None, method: str = "lora") -> dict[str, Any]:
    """Trainable / total parameters of a run, or of a configuration without a run, and their share of early fusion
    counted two ways: against early fusion of the same backbone and size, and as the PEMMA authors counted
    (UNETR: a feature-size-48 PEMMA UNETR against a feature-size-16 early fusion; Swin: trainable / total).

    Args:
        model: run folder (or :class:`Run`). Give ``model`` or ``backbone``.
        base: the CT base run of an adapted model, if it moved since adaptation.
        backbone: without a run: ``unetr`` or ``swin_unetr``.
        preset: without a run: size preset (``tiny`` default, ``paper``).
        recipe: without a run: ``pemma`` (None, default) or ``authors``.
        method: without a run: ``lora`` (default) or ``dora``.

    Example:
        >>> pemma.params(ad)["percent_of_early_fusion"]
        >>> pemma.params(backbone="unetr", preset="paper", recipe="authors")["authors_percent"]  # 8.16...
    """
    if (model is None) == (backbone is None):
        raise PemmaError("params needs either a run folder or --backbone (with --preset / --recipe), not both")
    from pemma.methods import configuration_budget, parameter_summary

    if model is None:
        from pemma.vocab import PEMMA_METHODS, canonical_method

        try:
            adapter_type = PEMMA_METHODS[canonical_method(method)]
        except (KeyError, ValueError):
            raise PemmaError(f"--method must be a PEMMA method (lora, dora), got {method!r}") from None
        return configuration_budget(backbone, preset=preset, recipe=recipe, method=adapter_type)
    return parameter_summary(Path(path_of(model)), base_run=path_of(base))


def export(model: RunLike, out: str | os.PathLike, *, format: str | None = None, modalities: Names = None,
           merge: bool = True, base: RunLike | None = None) -> dict[str, Any]:
    """Write a run as a deployable model: TorchScript, ONNX, or a MONAI bundle folder, with its preprocessing.

    Any run exports (CT base, adapted, baseline, updated); adapters are merged into the weights where the input
    set allows. The export is checked against pemma's logits (1e-4) before it is written, and the preprocessing
    it expects is written beside it as JSON. Spatial axes are fixed at the run's ROI (run it with a sliding
    window of that size); the batch axis is dynamic.

    Args:
        model: run folder (or :class:`Run`).
        out: output file (``.pt`` TorchScript, ``.onnx``) or bundle folder.
        format: ``torchscript``, ``onnx`` or ``bundle``. Default: from the suffix of ``out`` (a mismatch is an
            error).
        modalities: the input set, e.g. ``"ct,pet"``, one the run accepts. Default: the set it was trained on.
        merge: merge adapters into the weights (``False`` is an error: an unmerged adapted model is its run folder).
        base: the CT base run, if it moved since adaptation.

    Returns:
        ``{"format", "backbone", "modalities", "max_abs_diff" (exported vs pemma on a test input), "merged",
        "bytes", "out", "preprocessing"}``.

    Example:
        >>> pemma.export(ad, "model.onnx", modalities="ct,pet")
    """
    from pemma.methods import export_model
    from pemma.vocab import parse_modalities

    if not merge:
        raise PemmaError("export needs --merge (an unmerged adapted model is its run folder)")
    try:
        mods = None if modalities is None else parse_modalities(modalities)
    except ValueError as exc:
        raise PemmaError(f"--modalities: {exc}") from None
    return export_model(Path(path_of(model)), Path(os.fspath(out)), fmt=format, modalities=mods,
                        base_run=path_of(base))


def synth(out: str | os.PathLike, *, cases_per_centre: int | None = None, centres: Names = None,
          shape: Sequence[int] | None = None, ct_spacing: Sequence[float] | None = None,
          oblique_degrees: float | None = None, seed: int | None = None,
          difficulty: str | None = None) -> list[str]:
    """Write a deterministic HECKTOR-2022-layout PET/CT phantom (images, labels, clinical and endpoint CSVs).

    Args:
        out: output folder.
        cases_per_centre: cases per centre. Default 12.
        centres: centres. Default the 7 HECKTOR training centres.
        shape: CT voxels (I, J, K). ct_spacing: CT spacing in mm.
        oblique_degrees: rotate the image direction. seed: random seed (default 0).
        difficulty: ``normal`` (default) or ``hard``: weaker CT contrast, unlabelled PET hot spots and
            physiological uptake on the same labels and grids (recorded in ``OUT/phantom.json``).

    Returns:
        The case IDs written.

    Example:
        >>> pemma.synth("data/phantom", cases_per_centre=2, centres=["CHUM", "MDA"])
    """
    from pemma.data.phantom import PhantomConfig, synthesize_phantom

    kwargs = {"cases_per_centre": cases_per_centre, "ct_shape": shape, "ct_spacing": ct_spacing,
              "oblique_degrees": oblique_degrees, "seed": seed, "centres": tuple(name_list(centres) or ()) or None,
              "difficulty": difficulty}
    try:
        phantom = PhantomConfig(**{k: (tuple(v) if isinstance(v, list | tuple) else v)
                                   for k, v in kwargs.items() if v is not None})
    except ValueError as exc:
        raise PemmaError(f"invalid phantom settings: {exc}") from None
    return list(synthesize_phantom(os.fspath(out), phantom))
