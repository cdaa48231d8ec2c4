"""``pemma check``: validate a whole dataset in one pass before any training."""

from __future__ import annotations

import os
from typing import Any

from pemma.api.run import RunLike, name_list, path_of, run_config
from pemma.api.segmentation import Names
from pemma.config import PreprocessConfig


def check(data: str | os.PathLike, *, centres: Names = None, modalities: Names = None,
          endpoints: str | os.PathLike | None = None, clinical: str | os.PathLike | None = None,
          progress: bool = True, registration: bool = False, register: str | None = None,
          model: RunLike | None = None, preset: str | None = None,
          config: str | os.PathLike | None = None, roi_names: str | None = None) -> dict[str, Any]:
    """Check every case of a dataset (files readable, finite, 3-D, invertible geometry; label values; PET overlap
    with the CT; label grid overlapping the CT) and the endpoint / clinical tables, listing every problem.

    Args:
        data: HECKTOR folder, nnU-Net raw folder or datalist JSON.
        centres: centres to check. Default all.
        modalities: images every case must have (e.g. ``"ct,pet"``). Default: the images each case has.
        endpoints, clinical: the HECKTOR endpoint / clinical CSV. Default: found under ``data`` (if any).
        progress: show a progress bar.
        registration: also measure per case how well each registered modality (PET, MR...; not ``dose``, see
            :func:`pemma.data.registration.registrable`) and the CT agree (mutual information, body-mask Dice;
            :mod:`pemma.data.registration`) on the header geometry, and after ``register`` when given.
        register: ``rigid`` or ``affine``: register each case (as training with ``--register`` would) and report
            the agreement after it too (implies ``registration``). Default None: the header geometry only (or the
            mode of ``model`` / ``preset`` / ``config`` when that registers).
        model: a run folder: register with its preprocessing (registration settings, CT window, PET range), as
            predicting with it or adapting from it would.
        preset, config: a size preset and / or a YAML config: their preprocessing; with ``model``, its registration
            settings (``register*``) over the run's, as ``pemma adapt --base MODEL --preset/--config`` would
            combine them. Default: the default preprocessing (:class:`~pemma.config.PreprocessConfig`).
        roi_names: DICOM data: the RTSTRUCT / SEG names of GTVp and GTVn (``GTVp=GTV_primary,GTVn=GTV_LN``), see
            :mod:`pemma.data.dicom_labels`. Default the usual names.

    Returns:
        ``{"n_cases", "bad_cases", "problems": {case or table: [one-line problem, ...]}, "lines": [...]}``
        (with ``registration``: ``"registration": {case: {"before", "after", ...}}`` of the PET, and
        ``"registration_modalities": {modality: {case: {...}}}`` of every registered modality, too); ``lines`` ends
        with the summary. No problem: ``bad_cases`` is empty. A registration that fails or diverges is a problem of
        its case.

    Example:
        >>> report = pemma.check("data/phantom", modalities="ct,pet")
        >>> print("\\n".join(report["lines"]))
    """
    import dataclasses

    from tqdm.auto import tqdm

    from pemma.data.check import CheckReport, check_case
    from pemma.data.layout import discover_cases, select_cases
    from pemma.data.register import register_files
    from pemma.data.registration import RegistrationSettings, registrable
    from pemma.errors import PemmaError
    from pemma.survival.endpoints import find_table, read_clinical, read_endpoints
    from pemma.vocab import CLINICAL_FILE, ENDPOINT_FILE, parse_modalities

    try:
        preprocess = registration_preprocess(model, preset, config)
        if register is not None:
            preprocess = dataclasses.replace(preprocess, register=register)
    except ValueError as exc:
        raise PemmaError(f"--register: {exc}" if register is not None else str(exc)) from None
    settings = RegistrationSettings.from_preprocess(preprocess)
    registration = registration or settings.mode != "none"
    agreement: dict[str, dict[str, Any]] = {}  # modality -> case -> QC record
    agreement_lines: list[str] = []
    known = list(PreprocessConfig().modality_registry())  # CT, PET, then the other modalities pemma knows
    wanted = parse_modalities(name_list(modalities), known) if modalities else None
    unstaged: dict[str, str] = {}  # DICOM cases that could not be staged: each a problem, the others checked
    found = discover_cases(os.fspath(data), roi_names=roi_names, failures=unstaged)
    cases = select_cases(found, centres=name_list(centres), source=os.fspath(data)) if found else []
    report = CheckReport(n_cases=len(cases) + len(unstaged), problems={c: [m] for c, m in unstaged.items()})
    # a training case without a label, in a dataset whose other cases have theirs, is one training would refuse
    labelled = any(c.label is not None for c in cases)
    for case in tqdm(cases, desc="check", unit="case", disable=not progress):
        problems = check_case(case, wanted or [m for m in known if m in case.images],
                              with_label=case.label is not None or (labelled and not case.test))
        moving = [m for m in registrable(list(case.images), preprocess) if wanted is None or m in wanted]
        for modality in moving if not problems and registration else []:
            try:
                result = register_files(case.case_id, case.images["ct"], case.images[modality],
                                        RegistrationSettings.from_preprocess(preprocess, modality=modality))
                agreement.setdefault(modality, {})[case.case_id] = result.to_dict()
                agreement_lines.append(result.line())
            except PemmaError as exc:
                problems.append(str(exc))
        if problems:
            report.problems[case.case_id] = problems
    tables = ((ENDPOINT_FILE, endpoints, read_endpoints), (CLINICAL_FILE, clinical, read_clinical))
    for name, explicit, reader in tables:
        try:
            path = find_table(os.fspath(data), name, None if explicit is None else os.fspath(explicit))
            if path is not None:
                reader(path)
        except PemmaError as exc:
            report.problems[f"table {name}"] = [str(exc)]
    out = {**report.to_dict(), "lines": agreement_lines + report.lines()}
    if registration:
        out["registration"] = agreement.get("pet", {})
        out["registration_modalities"] = agreement
        out["registration_settings"] = {"mode": settings.mode, "spacing_mm": settings.spacing_mm,
                                        "iterations": settings.iterations, "max_shift_mm": settings.max_shift_mm,
                                        "from": path_of(model) or preset or (config and os.fspath(config)) or
                                        "defaults"}
    return out


def registration_preprocess(model: RunLike | None, preset: str | None,
                            config: str | os.PathLike | None) -> PreprocessConfig:
    """The preprocessing ``pemma check`` registers with: the run's (``model``), the preset's / config's, or, with
    both, the run's with the preset's / config's registration settings (what ``pemma adapt`` combines).

    Args:
        model: a run folder or None. preset, config: a size preset name and a YAML config, or None.
    """
    import dataclasses

    from pemma.api.run import Run
    from pemma.config import REGISTRATION_FIELDS

    given = run_config(preset or "tiny", config).preprocess if (preset or config) else None
    if model is None:
        return given or PreprocessConfig()
    run = Run.open(model).config.preprocess
    if given is None:
        return run
    return dataclasses.replace(run, **{f: getattr(given, f) for f in REGISTRATION_FIELDS})


def convert_dicom(data: str | os.PathLike, out: str | os.PathLike, *, roi_names: str | None = None,
                  progress: bool = True, force: bool = False) -> list[str]:
    """Write a DICOM tree as a HECKTOR-layout dataset: ``out/imagesTr/<case>__CT.nii.gz``, ``__PT.nii.gz`` (SUVbw)
    and ``out/labelsTr/<case>.nii.gz`` (from the case's RTSTRUCT / DICOM-SEG, on the CT grid).

    The cases are staged as every verb stages DICOM (:func:`pemma.data.dicom_stage.discover_dicom`), then copied.

    Args:
        data: a folder (tree) of DICOM CT / PET series, with RTSTRUCT or SEG files for labels.
        out: the dataset folder to write.
        roi_names: the RTSTRUCT / SEG names of GTVp and GTVn (``GTVp=GTV_primary,GTVn=GTV_LN``). Default the usual
            names (:mod:`pemma.data.dicom_labels`).
        progress: show a progress bar.
        force: replace files in ``out`` named like a converted case's (default: an error, nothing written).

    Returns:
        The case IDs written.

    Example:
        >>> pemma.convert_dicom("/dicom/hn_cohort", "data/hn_nifti", roi_names="GTVp=GTV_T,GTVn=GTV_N")
    """
    from pemma.data.dicom import is_dicom_input
    from pemma.data.dicom_stage import convert_dicom as convert
    from pemma.errors import PemmaError

    if not os.path.exists(data):
        raise PemmaError(f"{os.fspath(data)}: not found")
    if not is_dicom_input(os.fspath(data)):
        raise PemmaError(f"{os.fspath(data)}: not a DICOM file or a folder of DICOM series (without NIfTI files)")
    return [r.case_id for r in convert(os.fspath(data), os.fspath(out), roi_names, progress, force=force)]
