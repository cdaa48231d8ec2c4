"""Inference stages as Python functions: ``predict`` (NIfTI, nnU-Net, datalist or DICOM input; RTSTRUCT out) and
``evaluate`` (with a model, or model-free on a predictions folder). Each is what the ``pemma`` verb of the same name
runs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pemma.api.run import RunLike, name_list, path_of
from pemma.api.segmentation import Names
from pemma.errors import MissingImageError, PemmaError


def _loaded(model: RunLike, base: RunLike | None, modalities: Names, device: str | None, source: str):
    from pemma.methods import load_model
    from pemma.runtime import resolve_device
    from pemma.vocab import parse_modalities

    dev = resolve_device(device or "auto")
    loaded = load_model(path_of(model), dev, base_run=path_of(base))
    known = list(loaded.config.preprocess.modality_registry())  # CT, PET and the run's other modalities
    chosen = parse_modalities(name_list(modalities), known) if modalities else loaded.input_sets[0]
    loaded.check_inputs(chosen, source)
    from pemma.methods.importing import untrained_head

    reason = untrained_head(loaded.meta, Path(path_of(model)), list(chosen))
    if reason is not None:
        import warnings

        warnings.warn(reason, UserWarning, stacklevel=3)
    return loaded, chosen, dev


@contextlib.contextmanager
def _missing_image_hint(loaded: Any, chosen: Sequence[str], asked: bool) -> Iterator[None]:
    """A case without an image of the input set the model defaults to (no ``--modalities`` given): the one-line
    error also names the other input sets the model takes (a CT+PET model given CT alone: ``--modalities ct``)."""
    try:
        yield
    except MissingImageError as exc:
        others = [",".join(s) for s in loaded.input_sets if list(s) != list(chosen)]
        if asked or not others:
            raise
        raise PemmaError(f"{exc}; the model also takes {' or '.join(others)} (--modalities)") from None


def _window(roi: Sequence[int] | None, overlap: float | None, sw_batch_size: int | None, amp: bool | None):
    from pemma.inference.predict import WindowSettings

    return WindowSettings(roi_size=None if roi is None else list(roi), overlap=overlap, sw_batch_size=sw_batch_size,
                          amp=bool(amp))


def _check_roi(roi: Sequence[int] | None, loaded: Any) -> None:
    from pemma.inference.predict import check_window_roi

    if roi is not None:
        check_window_roi(list(roi), loaded.config)


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
        reference: grid of PET-only (MR-only...) predictions: ``ct`` (default; the case's CT grid when it has a
            CT; a run trained with ``--register`` maps them there through the case's PET (MR...) -> CT
            registration) or ``pet`` (that modality's own grid).

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
    _check_roi(roi, loaded)  # once, before any case is read (not a failure per case)
    failures: dict[str, str] = {}
    if dicom:
        written, cases = _predict_dicom(loaded, source, chosen, out, dev, centres, rtstruct, failures,
                                        _window(roi, overlap, sw_batch_size, amp), reference)
    else:
        specs = loaded.config.preprocess.modality_registry()  # the run's modalities (a declared one's suffix)
        with _missing_image_hint(loaded, chosen, asked=modalities is not None):
            cases = select_cases(discover_cases(source, specs), centres=name_list(centres) or [], modalities=chosen,
                                 source=source)
        _log_inputs(cases, chosen, asked=modalities is not None, preprocess=loaded.config.preprocess)
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


def _log_inputs(cases: list, chosen: list[str], asked: bool, preprocess: Any = None) -> None:
    """Log how many cases, the input set and whose choice it is; for a single case the file read as each modality (a
    CT file given alone brings the PET found beside it when the model reads CT+PET); and the region predicted (the
    run's crop box: outside it the label map is background, e.g. most of a chest CT for a head-and-neck run)."""
    import logging

    from pemma.vocab import input_set_name

    whose = "as asked" if asked else "the model's; --modalities to choose"
    line = f"predicting {len(cases)} case{'s' if len(cases) != 1 else ''} with {input_set_name(chosen).upper()} " \
           f"input ({whose})"
    if len(cases) == 1:
        line += f"; {cases[0].case_id}: " + ", ".join(f"{m.upper()} {cases[0].images[m]}" for m in chosen)
    logger = logging.getLogger("pemma.predict")
    logger.info(line)
    if preprocess is not None:
        logger.info(f"region: the run's box of {list(preprocess.crop_mm)} mm below the top of the body (CT > "
                    f"{preprocess.body_threshold_hu} HU); outside it the label map is background (preprocess.crop_mm)")


def _predict_dicom(loaded: Any, source: str, chosen: list[str], out: str | os.PathLike, dev: Any, centres: Names,
                   rtstruct: bool, failures: dict[str, str], window: Any,
                   reference: str = "ct") -> tuple[list[Path], list]:
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
                                      failures=failures, reference=reference)
    return written, records


def evaluate(model: RunLike | None = None, data: str | os.PathLike | None = None, *,
             pred: str | os.PathLike | None = None, centres: Names = None, modalities: Names = None, split: str = "all",
             out: str | os.PathLike | None = None, save_predictions: bool = False, base: RunLike | None = None,
             roi: Sequence[int] | None = None, overlap: float | None = None, sw_batch_size: int | None = None,
             device: str | None = None, amp: bool | None = None, roi_names: str | None = None,
             pred_labels: str | None = None) -> dict[str, Any]:
    """HECKTOR DSCagg (GTVp, GTVn, mean), per-case Dice, HD95 and volumes on the labelled cases of ``data``: of a
    model's predictions (``model``), or of an existing predictions folder (``pred``, no model run).

    Writes ``metrics_<inputs>.json`` (undefined values as ``null``, the HD95 policy stated) and
    ``cases_<inputs>.csv`` into ``out`` (``..._<split>`` names with a ``split`` other than ``all``).

    Args:
        model: run folder (or :class:`Run`). Give ``model`` or ``pred``.
        data: dataset folder or datalist (the labels).
        pred: a folder of label maps named ``<case_id>.nii.gz`` on each case's CT grid (e.g. nnU-Net's output).
        centres: only these centres. Default all.
        modalities: input set. Default: what the model was trained with.
        split: with a model, which cases: ``all`` (default; a warning names the training cases scored; ``train``
            scores them without one),
            ``unseen`` (neither trained nor validated on, by the model nor by any run it was built on: its CT
            base, the run an update continued, recursively; logged how many each left out), ``val`` (the model's
            validation cases) or ``train``.
        out: report folder. Default ``<model>/evaluation`` (with ``pred``: ``<pred>/evaluation``).
        save_predictions: also write the label maps (``out/predictions_<inputs>/``).
        base, roi, overlap, sw_batch_size, device, amp: as for :func:`predict`.
        roi_names: ``data`` a DICOM tree: the RTSTRUCT / SEG names of GTVp and GTVn
            (``GTVp=GTV_primary,GTVn=GTV_LN``), see :mod:`pemma.data.dicom_labels`. Default the usual names.
        pred_labels: with ``pred``, how the predictions number their labels: ``pemma`` (GTVp 1, GTVn 2) or
            ``dataset`` (the nnU-Net dataset's ``dataset.json`` labels, as nnU-Net predicts them). Required when
            the dataset numbers its labels otherwise than pemma; else pemma's.

    Returns:
        The scores: ``{"inputs", "n_cases", "DSCagg": {"GTVp", "GTVn", "mean"}, "mean_case", "cases", "counts",
        "hd95_policy", "centres", "data"}`` (as written to the JSON report; ``data``: the dataset's absolute
        path) plus ``"report"``: the JSON and CSV paths.

    Example:
        >>> scores = pemma.evaluate(ad, data="data/phantom", centres=["MDA"], modalities=["ct", "pet"])
        >>> scores["DSCagg"]["mean"]
        >>> pemma.evaluate(pred="nnunet_preds/", data="nnUNet_raw/Dataset501_HN", pred_labels="dataset")["DSCagg"]
    """
    import warnings

    from pemma.data.case import patient_key
    from pemma.data.layout import discover_cases, select_cases
    from pemma.evaluation.evaluate import evaluate_model, evaluate_predictions, write_report

    if (model is None) == (pred is None):
        raise PemmaError("evaluate needs either a model (--model) or a predictions folder (--pred), not both")
    if data is None:
        raise PemmaError("evaluate needs --data (the labelled cases)")
    if pred_labels is not None and pred is None:
        raise PemmaError("--pred-labels applies to a predictions folder (--pred), not to --model")
    source = os.fspath(data)
    if pred is not None:
        cases = select_cases(discover_cases(source, roi_names=roi_names), centres=name_list(centres) or [],
                             require_label=True, source=source)
        result = evaluate_predictions(os.fspath(pred), cases, numbering=pred_labels)
        folder = Path(os.fspath(out)) if out is not None else Path(os.fspath(pred)) / "evaluation"
    else:
        loaded, chosen, dev = _loaded(model, base, modalities, device, source)
        _check_roi(roi, loaded)
        specs = loaded.config.preprocess.modality_registry()  # the run's modalities (a declared one's suffix)
        with _missing_image_hint(loaded, chosen, asked=modalities is not None):
            cases = select_cases(discover_cases(source, specs, roi_names), centres=name_list(centres) or [],
                                 modalities=chosen, require_label=True, source=source)
        lineage = _lineage_cases(path_of(model), loaded.meta, path_of(base)) if split == "unseen" else []
        cases = _split_cases(cases, loaded.meta, split, path_of(model), lineage)
        trained = {patient_key(i) for i in loaded.meta.get("train_cases") or []}  # CHUM-001 is CHUM_001
        seen = [c.case_id for c in cases if patient_key(c.case_id) in trained]
        if seen and split != "train":  # asked for: no warning
            listed = ", ".join(seen[:5]) + (", ..." if len(seen) > 5 else "")
            warnings.warn(f"{len(seen)} of {len(cases)} evaluated cases were training cases of {path_of(model)} "
                          f"({listed}); --split unseen or val scores only others", UserWarning, stacklevel=2)
        folder = Path(os.fspath(out)) if out is not None else Path(path_of(model)) / "evaluation"
        predictions = folder / f"predictions_{'+'.join(chosen)}" if save_predictions else None
        result = evaluate_model(loaded, cases, chosen, dev, _window(roi, overlap, sw_batch_size, amp),
                                predictions_dir=predictions)
    result["centres"] = sorted({c.centre for c in cases})
    result["data"] = str(Path(source).resolve())  # the report says what it scored (a later one may replace it)
    json_path, csv_path = write_report(result, folder, split if model is not None else "all")
    return {**result, "report": {"json": str(json_path), "csv": str(csv_path)}}


#: ``--split`` choices of :func:`evaluate`
SPLITS = ("all", "unseen", "val", "train")


def _split_cases(cases: list, meta: dict[str, Any], split: str, source: str | None,
                 lineage: Sequence[tuple[str, set[str]]] = ()) -> list:
    """The cases of ``split`` among ``cases``, a model's training / validation cases recognised under either
    spelling of their IDs (:func:`pemma.data.case.patient_key`). ``unseen`` also leaves out the cases of
    ``lineage`` (:func:`_lineage_cases`: the runs the model was built on), logging how many each run took."""
    from pemma.data.case import patient_key

    if split not in SPLITS:
        raise PemmaError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "all":
        return cases
    train, val = ({patient_key(i) for i in meta.get(key) or []} for key in ("train_cases", "val_cases"))
    if split == "unseen":
        return _unseen_cases(cases, [(f"{source} (this model)", train | val), *lineage], source)
    keep = {"val": lambda c: patient_key(c.case_id) in val, "train": lambda c: patient_key(c.case_id) in train}[split]
    chosen = [c for c in cases if keep(c)]
    if not chosen:
        raise PemmaError(f"{source}: no {split} cases of this model among the selected cases")
    return chosen


def _unseen_cases(cases: list, seen_by: Sequence[tuple[str, set[str]]], source: str | None) -> list:
    """``cases`` less those in any set of ``seen_by`` (``(run, patient keys)``, nearest run first; a case counts
    for the first run that has it); one log line says how many each run left out."""
    import logging

    from pemma.data.case import patient_key

    chosen: list = []
    left_out = dict.fromkeys((run for run, _ in seen_by), 0)
    for case in cases:
        by = next((run for run, keys in seen_by if patient_key(case.case_id) in keys), None)
        if by is None:
            chosen.append(case)
        else:
            left_out[by] += 1
    text = "; ".join(f"{n} by {run}" for run, n in left_out.items() if n)
    if not chosen:
        raise PemmaError(f"{source}: no unseen cases of this model among the {len(cases)} selected cases: each "
                         f"trained or validated it or a run it was built on ({text})")
    if any(left_out.values()):
        logging.getLogger("pemma.evaluate").info(
            f"--split unseen: left out {sum(left_out.values())} of {len(cases)} cases trained or validated on: {text}")
    return chosen


def _lineage_cases(run_dir: str | None, meta: dict[str, Any], base: str | None) -> list[tuple[str, set[str]]]:
    """``(run, patient keys of its training and validation cases)`` for every run the model at ``run_dir`` was
    built on (:func:`pemma.runs.run_lineage`: its CT base, the run an update continued, recursively), nearest
    first; ``base`` is where the CT base is now if it moved.

    A lineage run no longer at its recorded path is a one-line warning naming it, and its cases are not left out:
    the model still loads without it (an update does not read the run it continued), and no run records its
    ancestors' cases, so they are unknown; failing would make such a model impossible to evaluate at all."""
    import warnings

    from pemma.data.case import patient_key
    from pemma.runs import run_lineage

    if run_dir is None:
        return []
    moved = {str(meta["base_run"]): base} if base and meta.get("base_run") else None
    out = []
    for run in run_lineage(run_dir, meta, moved):
        if run.meta is None:
            warnings.warn(f"{run.path}: not found ({run.relation} of {run.child}); the cases it trained or "
                          "validated on cannot be left out of --split unseen", UserWarning, stacklevel=3)
            continue
        keys = {patient_key(i) for key in ("train_cases", "val_cases") for i in run.meta.get(key) or []}
        out.append((f"{run.path} ({run.relation} of {run.child})", keys))
    return out
