"""Finding cases in the layouts users already have: HECKTOR 2022, nnU-Net raw, or a datalist JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from pemma.data import nnunet
from pemma.data.case import CaseRecord, CaseSplit, Specs, centre_of, found_images
from pemma.errors import MissingImageError, PemmaError
from pemma.modalities import NAME_PATTERN, default_registry
from pemma.vocab import HECKTOR_CENTRES, MODALITY_ALIASES

_NIFTI = (".nii.gz", ".nii")


def hecktor_suffixes(specs: Specs | None = None) -> dict[str, str]:
    """File suffix -> modality of the HECKTOR layout (``__CT`` -> ``ct``, ``__PT`` -> ``pet``, ``__MR`` -> ``mr``...),
    longest suffix first; a suffix two specs claim is the first's in registry order (a declared modality before the
    catalogue's). Default: pemma's registry (:func:`pemma.modalities.default_registry`)."""
    found: dict[str, str] = {}
    for name, spec in (specs or default_registry()).items():
        for suffix in spec.suffixes:
            found.setdefault(suffix, name)
    return dict(sorted(found.items(), key=lambda pair: -len(pair[0])))


def _strip_nifti(name: str) -> str | None:
    for ending in _NIFTI:
        if name.endswith(ending):
            return name[: -len(ending)]
    return None


def _is_label_folder(name: str) -> bool:
    """``labelsTr``, ``labelsTs``, ``labels``, ``labels_gtv``...: the only folders labels are taken from."""
    return name.lower().startswith("labels")


def _in_label_folder(path: Path, root: Path) -> bool:
    return any(_is_label_folder(part) for part in path.relative_to(root).parts[:-1])


def _image_suffix(stem: str, specs: Specs | None = None) -> str | None:
    """The image naming a file stem carries (``__CT``, ``__PT``, any modality's suffix, nnU-Net ``_0000``), or None
    for a label name."""
    for suffix in hecktor_suffixes(specs):
        if stem.endswith(suffix):
            return suffix
    match = re.search(r"_\d{4}$", stem)
    return match.group(0) if match else None


def _label_candidate(path: Path, root: Path, images: dict[str, dict[str, str]],
                     specs: Specs | None = None) -> str | None:
    """The case ID a file in a label folder labels (None when not under a label folder).

    Raises:
        PemmaError: the file is named like an image (``ID__CT``, ``ID__PT``, ``ID_0000``).
    """
    if not _in_label_folder(path, root):
        return None
    stem = _strip_nifti(path.name) or ""
    suffix = _image_suffix(stem, specs)
    if suffix is None:
        return stem
    cid = stem[: -len(suffix)]
    image = next(iter(images.get(cid, {}).values()), None)
    beside = f" (the case's image is {image})" if image else ""
    raise PemmaError(f"{path}: an image file ({suffix}) inside a label folder, where only labels ID.nii.gz are "
                     f"expected{beside}; move it out of {path.parent.name}/")


def _discover_hecktor(root: Path, specs: Specs | None = None) -> list[CaseRecord]:
    """HECKTOR 2022 folders, searched recursively: images anywhere (``ID__CT`` / ``ID__PT``, or any modality's suffix
    in ``specs``, e.g. ``ID__MR``), labels only from
    folders named ``labels*`` (``labelsTr``, ``labelsTs``); other NIfTI files (e.g. a ``predictions/`` folder
    inside the dataset) are ignored.

    Raises:
        PemmaError: two images of one modality or two label files for one case (e.g. two sites' folders with
            the same IDs under one root), or an image file inside a label folder (both files named).
    """
    images: dict[str, dict[str, str]] = {}
    suffixes = hecktor_suffixes(specs)
    paths = [p for p in sorted(root.rglob("*.nii*")) if _strip_nifti(p.name) is not None
             and not p.name.startswith(".")]
    for path in paths:
        if _in_label_folder(path, root):
            continue
        stem = _strip_nifti(path.name) or ""
        for suffix, modality in suffixes.items():
            if stem.endswith(suffix) and len(stem) > len(suffix):
                case_images = images.setdefault(stem[: -len(suffix)], {})
                if modality in case_images:
                    raise PemmaError(f"case {stem[: -len(suffix)]}: two {modality.upper()} images, "
                                     f"{case_images[modality]} and {path}; case IDs must be unique in a dataset "
                                     "(give one site's folder, or rename one case)")
                case_images[modality] = str(path)
                break
    labels: dict[str, str] = {}
    for path in paths:
        cid = _label_candidate(path, root, images, specs)
        if cid is None:
            continue
        if cid in labels:
            raise PemmaError(f"case {cid}: two label files, {labels[cid]} and {path}; keep one of them "
                             f"(labels are read from folders named labels*)")
        labels[cid] = str(path)
    return [CaseRecord(cid, centre_of(cid), imgs, labels.get(cid), test=_in_test_folder(imgs.values(), root))
            for cid, imgs in sorted(images.items())]


def _in_test_folder(paths: Iterable[str], root: Path) -> bool:
    """Whether a case's images lie in a folder named ``imagesTs*`` (HECKTOR's and nnU-Net's test images)."""
    return any(part.lower().startswith("imagests") for p in paths for part in Path(p).relative_to(root).parts[:-1])


def _discover_datalist(path: Path, specs: Specs | None = None) -> list[CaseRecord]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PemmaError(f"{path}: cannot read datalist JSON ({exc})") from None
    entries = raw.get("training", []) + raw.get("test", []) if isinstance(raw, dict) else raw
    n_training = len(raw.get("training", [])) if isinstance(raw, dict) else len(entries)  # "test": never trained on
    cases = []
    modalities = list(specs or default_registry())  # CT, PET, then the others (MR, dose...)
    keys = [(m, m) for m in modalities] + [(m, alias) for alias, m in MODALITY_ALIASES.items() if m in modalities]
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not any(k in entry for _, k in keys):
            raise PemmaError(f"{path}: entry {i} needs a 'ct' and/or 'pet' path (or another modality's: "
                             f"{', '.join(m for m in modalities if m not in ('ct', 'pet'))})")
        imgs = {m: str((path.parent / entry[k]).resolve()) for m, k in keys if k in entry}
        cid = str(entry.get("case_id") or entry.get("id") or Path(imgs.get("ct", imgs.get("pet", ""))).name)
        label = str((path.parent / entry["label"]).resolve()) if entry.get("label") else None
        if label is not None and label in imgs.values():
            key = next(k for k, v in imgs.items() if v == label)
            raise PemmaError(f"{path}: entry {i} ({cid}): label {entry['label']} is the same file as its {key} "
                             f"image {imgs[key]}; give the label file")
        centre = str(entry.get("centre") or entry.get("center") or centre_of(cid))
        if cid in seen:
            raise PemmaError(f"{path}: entries {seen[cid]} and {i} have the same case ID {cid}; IDs name the "
                             "predictions and results, so each must be unique")
        seen[cid] = i
        cases.append(CaseRecord(cid, centre, imgs, label, test=i >= n_training))
    return cases


def discover_cases(root: str | Path, specs: Specs | None = None, roi_names: str | Mapping[str, object] | None = None,
                   failures: dict[str, str] | None = None) -> list[CaseRecord]:
    """All cases under ``root``, whichever layout it has.

    ``specs`` names the modalities to look for (their HECKTOR suffixes, nnU-Net channel names, datalist keys);
    default pemma's registry (CT, PET, MR, dose: :func:`pemma.modalities.default_registry`), a run passes its own
    (:meth:`pemma.config.PreprocessConfig.modality_registry`).

    * a ``.json`` file: datalist (``{"training": [{"ct", "pet", "label", "id", "centre"}]}``), paths
      relative to the file;
    * a folder with ``dataset.json``: nnU-Net raw (``imagesTr/{case}_0000``, ``imagesTs``; channels found by name
      in ``channel_names``, labels remapped by name from ``labels``, any ``file_ending`` SimpleITK reads);
    * any other folder: HECKTOR 2022, searched recursively (``ID__CT.nii.gz``, ``ID__PT.nii.gz``,
      ``labelsTr/ID.nii.gz``; IDs like ``CHUM-001`` or ``CHUM_001``); labels come only from folders named
      ``labels*`` (``labelsTr``, ``labelsTs``), so e.g. a ``predictions/`` folder inside the dataset is ignored;
    * a folder of nnU-Net channel files (``imagesTs``: ``{case}_0000``, ``{case}_0001``; channels from the
      dataset's ``dataset.json`` when there is one, else 0 = CT, 1 = PET);
    * a folder of image files of any names: each a CT-only case;
    * a single ``*__CT.nii.gz`` file: that case (its ``__PT`` beside it if present); a ``{case}_0000`` file: that
      case with its other channel files; any other image file: a CT-only case;
    * a folder (tree) of DICOM series with no NIfTI in it: one case per patient and study, CT and PET (SUVbw)
      series and the label of an RTSTRUCT / DICOM-SEG on the CT (ROIs mapped to GTVp / GTVn by name, ``roi_names``
      to override), staged once as NIfTI in the cache (:func:`pemma.data.dicom_stage.discover_dicom`); with
      ``failures``, a case that cannot be staged is recorded there (``{case_id: message}``) and left out.

    Raises:
        PemmaError: the path does not exist or holds no case; two label files for one case; an image file
            where a label is expected.
    """
    root = Path(root)
    if not root.exists():
        raise PemmaError(f"{root}: dataset path not found")
    if root.is_file() and root.suffix == ".json":
        cases = _discover_datalist(root, specs)
    elif root.is_file() and nnunet.split_ending(root.name) is None and _is_dicom(root):
        cases = _discover_dicom(root, roi_names, failures)
    elif root.is_file():
        stem = nnunet.split_ending(root.name)
        stem_text = stem[0] if stem else root.name
        suffix = next((s for s in hecktor_suffixes(specs) if stem_text.endswith(s) and stem_text != s), "")
        cid = stem_text[: len(stem_text) - len(suffix)]
        cases = ([c for c in _discover_hecktor(root.parent, specs) if c.case_id == cid] if suffix else []) or \
            nnunet.channel_file_case(root, specs) or [CaseRecord(stem_text, centre_of(stem_text), {"ct": str(root)})]
    elif (root / "dataset.json").is_file() and ((root / "imagesTr").is_dir() or (root / "imagesTs").is_dir()):
        cases = nnunet.discover_nnunet(root, specs)
    else:
        cases = _discover_hecktor(root, specs) or nnunet.discover_channel_folder(root, specs) or \
            nnunet.discover_image_files(root)
        if not cases and _is_dicom(root):
            cases = _discover_dicom(root, roi_names, failures)
    if not cases and not failures:
        raise PemmaError(f"{root}: no cases found (expected HECKTOR ID__CT.nii.gz, nnU-Net dataset.json, datalist or "
                         f"DICOM series)")
    return cases


def _is_dicom(root: Path) -> bool:
    from pemma.data.dicom import is_dicom_input  # pydicom and SimpleITK are loaded only for a DICOM look-up

    return is_dicom_input(root)


def _discover_dicom(root: Path, roi_names: str | Mapping[str, object] | None,
                    failures: dict[str, str] | None) -> list[CaseRecord]:
    from pemma.data.dicom_stage import discover_dicom

    return discover_dicom(root, roi_names, failures=failures)


def select_cases(cases: list[CaseRecord], *, centres: list[str] | None = None, modalities: list[str] | None = None,
                 require_label: bool = False, source: str = "dataset") -> list[CaseRecord]:
    """Cases of the given centres that have every requested modality (and a label if required).

    Raises:
        PemmaError: a selected case lacks a requested file, or the selection is empty.
    """
    wanted = {c.upper() for c in centres or []}
    chosen = [c for c in cases if not wanted or c.centre.upper() in wanted]
    if require_label:  # nnU-Net imagesTs cases without labelsTs cannot be scored or trained on: not an error
        chosen = [c for c in chosen if c.label is not None or not c.test] or chosen
    missing = sorted(wanted - {c.centre.upper() for c in cases})
    if not chosen or missing:  # a misspelt centre beside a valid one is not silently dropped either
        found = sorted({c.centre for c in cases})
        raise PemmaError(f"{source}: no cases for centre(s) {', '.join(missing or sorted(wanted))} (centres found: "
                         f"{', '.join(found)})")
    for case in chosen:
        for modality in modalities or []:
            if not NAME_PATTERN.match(str(modality)):
                raise PemmaError(f"unknown modality {modality!r}")
            if modality not in case.images:
                raise MissingImageError(f"case {case.case_id}: no {modality.upper()} image in {source} "
                                        f"({found_images(case)})")
        if require_label and case.label is None:
            raise PemmaError(f"case {case.case_id}: no label file in {source} (labelsTr/ID.nii.gz; for DICOM an "
                             f"RTSTRUCT or DICOM-SEG drawn on the case's CT series)")
    return chosen


def has_centre_prefix(cases: list[CaseRecord]) -> bool:
    """False when the case IDs carry no centre: no ID names a HECKTOR centre and no two cases share a prefix
    (``case001``, ``001``...), so per-centre splitting would find one case per "centre"."""
    centres = [c.centre for c in cases]
    if len(cases) < 2 or any(c.upper() in HECKTOR_CENTRES for c in centres):
        return True
    return len(set(centres)) < len(centres)


def split_cases(cases: list[CaseRecord], val_fraction: float, seed: int) -> CaseSplit:
    """Seeded train / validation split within each centre (at least one training case per centre).

    Case IDs without a centre prefix (see :func:`has_centre_prefix`) are split as one group, at random with
    ``seed``, and a warning says so (per centre they would give no validation case).
    """
    if not has_centre_prefix(cases):
        import warnings

        order = np.random.default_rng([seed, 1]).permutation(len(cases))
        n_val = min(int(round(val_fraction * len(cases))), len(cases) - 1)
        warnings.warn(f"case IDs carry no centre prefix (e.g. {cases[0].case_id}): {n_val} of {len(cases)} cases drawn "
                      f"at random (seed {seed}) for validation instead of per centre", UserWarning, stacklevel=2)
        return [cases[i] for i in sorted(order[n_val:])], [cases[i] for i in sorted(order[:n_val])]
    train, val = [], []
    for centre in sorted({c.centre for c in cases}):
        members = [c for c in cases if c.centre == centre]
        order = np.random.default_rng([seed, sum(map(ord, centre))]).permutation(len(members))
        n_val = min(int(round(val_fraction * len(members))), len(members) - 1)
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    return train, val
