"""Segmentation stages as Python functions: ``train``, ``adapt``, ``update``, ``params``, ``export``, ``synth``
(``predict`` and ``evaluate`` are in :mod:`pemma.api.inference`). Each is what the ``pemma`` verb of the same name
runs."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pemma.api.run import (
    Run,
    RunLike,
    absolute_data,
    check_kept_geometry,
    check_register,
    data_inputs,
    name_list,
    path_of,
    resolve_preset,
    run_config,
    warn_tiny_preset,
)
from pemma.config import RunConfig
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
    from pemma.run_folder import new_run_folder
    from pemma.training.segmentation import train as train_backbone

    cfg = absolute_data(run_config(preset, config, overrides, data=data, centres=centres, modalities=modalities,
                                   backbone=backbone, **settings))
    warn_tiny_preset(preset, cfg)
    with new_run_folder(out, force=force, resume=resume, data=data_inputs(cfg)) as folder:
        summary = train_backbone(cfg, os.fspath(folder), resume=resume)
    return Run.open(out, summary)


def adapt(base: RunLike, data: str | os.PathLike, out: str | os.PathLike, *, centres: Names = None,
          add_modality: str = "pet", method: str = "lora", rank: int | None = None, alpha: float | None = None,
          adapter_dropout: float | None = None, target_modules: Names = None, train_parts: Names = None,
          modality_dropout: Sequence[float] | None = None, ct_route: str | None = None, recipe: str | None = None,
          validation_inputs: str | None = None, pet_alone_skip: str | None = None,
          checkpoint_full_resolution: bool | None = None, recompute_dora: bool | None = None, preset: str | None = None,
          config: str | os.PathLike | None = None, resume: bool = False,
          force: bool = False, overrides: dict[str, dict[str, Any]] | None = None, **settings: Any) -> Run:
    """Add PET to a CT-only run (PEMMA: PET pathway + LoRA / DoRA adapters), or train a baseline from it.

    The base run is never modified; the adapted run stores only what adaptation trained.

    Args:
        base: CT-only run folder of :func:`train` (a path or its :class:`Run`); or an adapted (PEMMA) run, on which
            ``add_modality`` is then stacked (:mod:`pemma.methods.stacking`: the adapter settings are the base's;
            ``ct_route`` and ``modality_dropout[0]`` apply to the new level).
        data: dataset folder or datalist.
        out: run folder of the adapted model.
        centres: centres to adapt on. Default all.
        add_modality: modality to add: ``pet`` (default), or with the PEMMA methods, early fusion and full
            fine-tuning any other modality with a spec (``mr``, ``dose``, or one declared in the config's
            ``preprocess.modality_specs``).
        method: ``pemma_lora`` (``lora``) or ``pemma_dora`` (``dora``); baselines ``early_fusion``,
            ``full_finetune`` (``full``), ``late_fusion`` (any spelling of :data:`pemma.vocab.METHOD_ALIASES`).
        rank, alpha, adapter_dropout: adapter rank r, scaling alpha and input dropout. Default: the recipe's
            (``pemma``: 4, 8, 0).
        target_modules: module suffixes that get adapters. Default: the recipe's (``pemma``: the attention).
        train_parts: non-adapter parts that train. Default: the recipe's, per backbone.
        modality_dropout: probabilities of the input sets (ct+pet, ct, pet). Default (0.6, 0.2, 0.2).
        ct_route: ``exact`` (CT alone runs the untouched base) or ``shared`` (the paper's: CT alone through the
            adapted network). Default: the recipe's (``pemma``: exact; ``authors``: shared). Full fine-tuning is
            one network for every input set: always ``shared`` (``exact`` is refused).
        recipe: named defaults (:data:`pemma.vocab.RECIPES`, YAML files in ``pemma/recipes``): ``pemma`` (None,
            the default) or ``authors`` (the authors' configuration per backbone). Explicit arguments override it;
            the run records the recipe and the resolved values (``adapter_config.json``).
        validation_inputs: what validation scores to keep the best weights: ``full`` (CT and PET together) or
            ``each`` (CT+PET, CT and PET alone, averaged). Default: the recipe's (``pemma``: full; ``authors``:
            each).
        pet_alone_skip: UNETR: PET alone's first skip, ``added`` (``encoder1`` reads the PET, the PET skip block's
            output is added) or ``replaces`` (the PET skip block alone: ``encoder1`` only reads CT, so a PET-only
            update cannot re-fit it). Default: the recipe's (``pemma``: added; ``authors``: replaces).
        checkpoint_full_resolution: recompute the full-resolution encoders in backward (less training memory;
            :class:`~pemma.adapters.config.AdapterConfig`). Default True.
        recompute_dora: DoRA layers recompute their output in backward (less training memory; same results).
            Default True.
        preset: size preset (``tiny``, ``paper``) of the training settings; the model and preprocessing are the
            base run's whatever the preset. Default: the base run's preset (:func:`resolve_preset`).
        config, resume, force, overrides, settings: as for :func:`train`.

    Returns:
        The :class:`Run`; ``run.summary`` holds ``steps``, ``best_dsc`` (and ``weight`` for late fusion).

    Example:
        >>> ad = pemma.adapt(base=run, data="data/phantom", centres=["MDA"], method="lora", out="runs/ad")
    """
    from pemma.adapters.config import AdapterConfig
    from pemma.adapters.recipes import recipe_config
    from pemma.methods import adapt as adapt_run
    from pemma.run_folder import new_run_folder
    from pemma.vocab import MODALITY_ALIASES, PEMMA_METHODS, canonical_method

    added = str(add_modality).strip().lower()
    added = MODALITY_ALIASES.get(added, added)  # pt -> pet
    try:
        # the PEMMA methods set the adapter type; full fine-tuning builds the PEMMA pathway with LoRA
        adapter_type = PEMMA_METHODS.get(canonical_method(method), "lora")
        if canonical_method(method) == "full_finetune" and ct_route not in (None, "shared"):
            raise PemmaError(f"--ct-route {ct_route}: full fine-tuning trains the CT model itself, one network for "
                             "every input set (the shared route); --ct-route exact is for the PEMMA methods")
        given = {"rank": rank, "alpha": alpha, "dropout": adapter_dropout, "target_modules": _tuple(target_modules),
                 "train_parts": _tuple(train_parts),
                 "modality_dropout": None if modality_dropout is None else tuple(modality_dropout),
                 "ct_route": ct_route, "validation_inputs": validation_inputs, "pet_alone_skip": pet_alone_skip,
                 "checkpoint_full_resolution": checkpoint_full_resolution,
                 "recompute_dora": recompute_dora}
        backbone = _base_backbone(base)
        if backbone is None:  # an unreadable base: the adaptation itself reports it (one line)
            adapter_cfg = AdapterConfig(method=adapter_type, **{k: v for k, v in given.items() if v is not None})
        else:  # recipe < what the caller gave
            adapter_cfg = recipe_config(recipe, backbone, adapter_type, given)
    except ValueError as exc:
        raise PemmaError(f"invalid adapter settings: {exc}") from None
    preset = resolve_preset(preset, base, out if resume else None)
    cfg = absolute_data(run_config(preset, config, overrides, data=data, centres=centres, **settings))
    _check_kept(settings, overrides, base)
    known = [m for m in cfg.preprocess.modality_registry() if m != "ct"]
    if added not in known:
        raise PemmaError(f"--add-modality {add_modality}: unknown modality (known: {', '.join(known)}; declare others "
                         f"in the config's preprocess.modality_specs)")
    warn_tiny_preset(preset, cfg)
    with new_run_folder(out, force=force, resume=resume, reads=[path_of(base)], data=data_inputs(cfg)) as folder:
        summary = adapt_run(path_of(base), cfg, os.fspath(folder), method=method, adapter_cfg=adapter_cfg,
                            resume=resume, **({} if added == "pet" else {"added_modality": added}))
    return Run.open(out, summary)


def _check_kept(settings: dict[str, Any], overrides: dict[str, dict[str, Any]] | None, run: RunLike) -> None:
    """Refuse a window / spacing other than ``run``'s (adapt and update keep the run's, :func:`check_kept_geometry`);
    a run whose config cannot be read is left to the verb to report."""
    from pemma.runs import CONFIG_FILE

    try:
        kept = RunConfig.load(Path(path_of(run)) / CONFIG_FILE)
    except PemmaError:
        return
    check_kept_geometry(settings, overrides, kept, str(path_of(run)))


def _base_backbone(base: RunLike) -> str | None:
    """The backbone of the CT base run ``base`` (None when its config cannot be read)."""
    from pemma.runs import CONFIG_FILE

    try:
        return RunConfig.load(Path(path_of(base)) / CONFIG_FILE).model.backbone
    except PemmaError:
        return None


def update(model: RunLike, data: str | os.PathLike, modalities: Names, out: str | os.PathLike, *,
           centres: Names = None, ct_route: str | None = None, recipe: str | None = None, preset: str | None = None,
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
        preset: size preset of the training settings (the model and preprocessing are the run's). Default: the
            preset ``model`` was trained with (:func:`resolve_preset`).
        config, resume, force, overrides, settings: as for :func:`train`.
        base: the CT base run of ``model``, if it moved since adaptation.

    Example:
        >>> up = pemma.update(ad, data="data/phantom", centres=["HGJ"], modalities="pet", out="runs/up")
    """
    from pemma.methods import update as update_run
    from pemma.run_folder import new_run_folder
    from pemma.runs import run_family
    from pemma.vocab import parse_modalities

    if settings.get("register") is not None:
        check_register(settings["register"], Run.open(model).config.preprocess, str(path_of(model)))
    preset = resolve_preset(preset, model, out if resume else None)
    cfg = absolute_data(run_config(preset, config, overrides, data=data, centres=centres, **settings))
    _check_kept(settings, overrides, model)
    warn_tiny_preset(preset, cfg)
    reads = [*run_family(path_of(model)), path_of(base)]
    with new_run_folder(out, force=force, resume=resume, reads=reads, data=data_inputs(cfg)) as folder:
        known = list(cfg.preprocess.modality_registry())  # CT, PET and the other modalities (an added mr...)
        summary = update_run(path_of(model), cfg, parse_modalities(modalities or [], known), os.fspath(folder),
                             resume=resume, base_run=path_of(base), ct_route=ct_route, recipe=recipe)
    return Run.open(out, summary)


def _tuple(value: Names) -> tuple[str, ...] | None:
    names = name_list(value)
    return None if names is None else tuple(names)


def params(model: RunLike | None = None, *, base: RunLike | None = None, backbone: str | None = None,
           preset: str = "tiny", recipe: str | None = None, method: str = "lora",
           ct_route: str | None = None) -> dict[str, Any]:
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
        ct_route: without a run: ``exact`` or ``shared`` (the Swin CT adapter exists on the shared route only).
            Default: the recipe's.

    Example:
        >>> pemma.params(ad)["percent_of_early_fusion"]
        >>> pemma.params(backbone="unetr", preset="paper", recipe="authors")["authors_percent"]  # 8.16...
    """
    if (model is None) == (backbone is None):
        given = "not both" if model is not None else "got neither"
        raise PemmaError(f"params needs either a run folder or --backbone (with --preset / --recipe), {given}")
    from pemma.methods import configuration_budget, parameter_summary

    if model is None:
        from pemma.vocab import PEMMA_METHODS, canonical_method

        try:
            adapter_type = PEMMA_METHODS[canonical_method(method)]
        except (KeyError, ValueError):
            raise PemmaError(f"--method must be a PEMMA method (lora, dora), got {method!r}") from None
        return configuration_budget(backbone, preset=preset, recipe=recipe, method=adapter_type, ct_route=ct_route)
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
    mods = None
    if modalities is not None:
        known = list(Run.open(model).config.preprocess.modality_registry())  # CT, PET and any it added (MR...)
        try:
            mods = parse_modalities(modalities, known)
        except ValueError as exc:
            raise PemmaError(f"--modalities: {exc}") from None
    return export_model(Path(path_of(model)), Path(os.fspath(out)), fmt=format, modalities=mods,
                        base_run=path_of(base))


def synth(out: str | os.PathLike, *, cases_per_centre: int | None = None, centres: Names = None,
          shape: Sequence[int] | None = None, ct_spacing: Sequence[float] | None = None,
          oblique_degrees: float | None = None, seed: int | None = None,
          difficulty: str | None = None, modalities: Names = None) -> list[str]:
    """Write a deterministic HECKTOR-2022-layout PET/CT phantom (images, labels, clinical and endpoint CSVs).

    Args:
        out: output folder.
        cases_per_centre: cases per centre. Default 12.
        centres: centres. Default the 7 HECKTOR training centres.
        shape: CT voxels (I, J, K). ct_spacing: CT spacing in mm.
        oblique_degrees: rotate the image direction. seed: random seed (default 0).
        difficulty: ``normal`` (default) or ``hard``: weaker CT contrast, unlabelled PET hot spots and
            physiological uptake on the same labels and grids (recorded in ``OUT/phantom.json``).
        modalities: ``ct,pet`` (default), plus ``mr``: an MR-like T2 channel (``ID__MR.nii.gz``: soft-tissue
            contrast, visible tumour, a smooth bias field) and / or ``dose``: a planned RT dose in Gy on the CT grid
            (``ID__RTDOSE.nii.gz``, :mod:`pemma.data.phantom_dose`); CT, PET and labels unchanged; recorded in
            ``OUT/phantom.json``.

    Returns:
        The case IDs written.

    Example:
        >>> pemma.synth("data/phantom", cases_per_centre=2, centres=["CHUM", "MDA"])
    """
    from pemma.data.phantom import PhantomConfig, synthesize_phantom

    kwargs = {"cases_per_centre": cases_per_centre, "ct_shape": shape, "ct_spacing": ct_spacing,
              "oblique_degrees": oblique_degrees, "seed": seed, "centres": tuple(name_list(centres) or ()) or None,
              "difficulty": difficulty, "modalities": tuple(name_list(modalities) or ()) or None}
    try:
        phantom = PhantomConfig(**{k: (tuple(v) if isinstance(v, list | tuple) else v)
                                   for k, v in kwargs.items() if v is not None})
    except ValueError as exc:
        raise PemmaError(f"invalid phantom settings: {exc}") from None
    return list(synthesize_phantom(os.fspath(out), phantom))
