"""The nnU-Net raw layout: ``dataset.json`` (``channel_names``, ``labels``, ``file_ending``), ``imagesTr`` /
``labelsTr`` / ``imagesTs`` / ``labelsTs``, and folders of channel files ``<case>_0000``, ``<case>_0001`` (an nnU-Net
``-i`` folder) with or without a ``dataset.json`` beside them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pemma.data.case import CaseRecord, Specs, centre_of
from pemma.data.labels import LabelMap, label_map_from_names
from pemma.errors import PemmaError
from pemma.io_utils import IMAGE_ENDINGS
from pemma.modalities import default_registry

#: channel-name tokens (lower case) that mean each modality of pemma's registry (CT, PET, MR, dose)
CHANNEL_TOKENS = {name: tuple(n.lower() for n in spec.channel_names) for name, spec in default_registry().items()}
#: the modalities whose channels a ``dataset.json`` must name recognisably when it has channels pemma cannot tell
REQUIRED_CHANNELS = ("ct", "pet")
#: channels of a folder of ``_0000`` / ``_0001`` files that has no ``dataset.json`` (HECKTOR's nnU-Net convention)
DEFAULT_CHANNELS = {"ct": 0, "pet": 1}
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def channel_modality(name: str, specs: Specs | None = None) -> str | None:
    """``"CT"`` -> ``ct``; ``"PET"``, ``"PT"``, ``"FDG-PET"``, ``"SUV"`` -> ``pet``; ``"MR"``, ``"T1"`` -> ``mr``;
    anything else (or several) None.

    The whole name meaning a modality (its name or one of its channel names) wins, the first in registry order (a
    declared modality before the catalogue's); else the modality one of its words means. ``specs``: the
    modalities to tell apart. Default pemma's registry.
    """
    tokens_of = CHANNEL_TOKENS if specs is None else {
        m: tuple(n.lower() for n in (m, *spec.channel_names)) for m, spec in specs.items()}
    key = name.strip().lower()
    whole = [m for m, names in tokens_of.items() if key == m or key in names]
    if whole:
        return whole[0]
    tokens = set(re.split(r"[^a-z0-9]+", key)) | {key}
    found = [m for m, names in tokens_of.items() if tokens & set(names)]
    return found[0] if len(found) == 1 else None


def split_ending(name: str, endings: tuple[str, ...] = IMAGE_ENDINGS) -> tuple[str, str] | None:
    """``"a_0000.nii.gz"`` -> ``("a_0000", ".nii.gz")``; None when the name has none of ``endings``."""
    lower = name.lower()
    for ending in endings:
        if lower.endswith(ending.lower()):
            return name[: -len(ending)], name[len(name) - len(ending):]
    return None


@dataclass(frozen=True)
class NnunetMeta:
    """What pemma reads from a ``dataset.json``.

    Args:
        channels: modality -> channel index (``{"ct": 0, "pet": 1}``).
        ending: the image file ending (``.nii.gz``, ``.mha``, ``.nrrd``...); None: any SimpleITK reads.
        label_map: (file value, pemma value) pairs when the labels are numbered otherwise than pemma's.
        source: the ``dataset.json`` (None for the defaults of a folder without one).
    """

    channels: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CHANNELS))
    ending: str | None = None
    label_map: LabelMap | None = None
    source: str | None = None


def _channels(raw: object, path: Path, specs: Specs | None = None) -> dict[str, int]:
    if not isinstance(raw, dict) or not raw:
        raise PemmaError(f"{path}: dataset.json needs channel_names ({{\"0\": \"CT\", \"1\": \"PET\"}})")
    channels: dict[str, int] = {}
    unknown, twice = [], set()
    for index, name in raw.items():
        modality = channel_modality(str(name), specs)
        if modality is None:
            unknown.append(f"{index}: {name!r}")
        elif modality in channels and modality in REQUIRED_CHANNELS:
            raise PemmaError(f"{path}: channel_names {raw} name {modality.upper()} twice")
        elif modality in channels or modality in twice:  # e.g. T1 and T2 both MR: neither is taken for MR
            twice.add(modality)
            channels.pop(modality, None)
        else:
            try:
                channels[modality] = int(index)
            except ValueError:
                raise PemmaError(f"{path}: channel_names key {index!r} is not a channel number") from None
    missing = [m.upper() for m in REQUIRED_CHANNELS if m not in channels]
    if missing and unknown:
        raise PemmaError(f"{path}: cannot tell which channel is {' or '.join(missing)}: channel_names {raw} "
                         f"({', '.join(unknown)} not recognised; CT is named CT, PET one of PET, PT, FDG, SUV); "
                         f"rename the channel in dataset.json")
    return channels


def _labels(raw: object, path: Path) -> LabelMap | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise PemmaError(f"{path}: labels must map names to values ({{\"background\": 0, \"GTVp\": 1, \"GTVn\": 2}})")
    if all(str(k).isdigit() for k in raw) and all(isinstance(v, str) for v in raw.values()):
        raw = {v: int(k) for k, v in raw.items()}  # nnU-Net v1: {"0": "background", "1": "GTVp"}
    return label_map_from_names(raw, str(path))


def read_dataset_json(path: str | Path, specs: Specs | None = None) -> NnunetMeta:
    """Channels (CT, PET and the other modalities of ``specs`` found by name), labels (remapped by name to GTVp 1,
    GTVn 2) and file ending.

    Raises:
        PemmaError: the file cannot be read, a needed channel cannot be told by its name (the names are listed),
            a label name is not background / GTVp / GTVn.
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PemmaError(f"{path}: cannot read nnU-Net dataset.json ({exc})") from None
    if not isinstance(meta, dict):
        raise PemmaError(f"{path}: dataset.json must hold an object")
    channels = _channels(meta.get("channel_names") or meta.get("modality"), path, specs)
    ending = meta.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise PemmaError(f"{path}: file_ending {ending!r} is not a file ending such as .nii.gz or .mha")
    return NnunetMeta(channels, ending, _labels(meta.get("labels"), path), str(path))


def _group(folder: Path, ending: str | None) -> dict[str, dict[int, Path]]:
    """Case ID -> channel index -> file of the ``<case>_<NNNN><ending>`` files in ``folder``."""
    groups: dict[str, dict[int, Path]] = {}
    endings = (ending,) if ending else IMAGE_ENDINGS
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        parts = split_ending(path.name, endings)
        match = _CHANNEL_FILE.match(parts[0]) if parts and not path.name.startswith(".") else None
        if match and path.is_file():
            groups.setdefault(match["case"], {})[int(match["channel"])] = path
    return groups


def _cases(folder: Path, meta: NnunetMeta, label_folder: Path | None, declared: bool, test: bool) -> list[CaseRecord]:
    cases = []
    for cid, files in _group(folder, meta.ending).items():
        ending = meta.ending or split_ending(next(iter(files.values())).name)[1]  # type: ignore[index]
        if declared:  # dataset.json names the channels: a missing one is reported when it is read
            images = {m: str(folder / f"{cid}_{ch:04d}{ending}") for m, ch in meta.channels.items()}
        else:
            images = {m: str(files[ch]) for m, ch in meta.channels.items() if ch in files}
        if not images:
            continue
        label = label_folder / f"{cid}{ending}" if label_folder is not None else None
        cases.append(CaseRecord(cid, centre_of(cid), images, str(label) if label and label.is_file() else None,
                                label_map=meta.label_map if label else None, test=test))
    return cases


def discover_nnunet(root: Path, specs: Specs | None = None) -> list[CaseRecord]:
    """The cases of an nnU-Net raw dataset folder: ``imagesTr`` (labels from ``labelsTr``) and ``imagesTs``
    (labels from ``labelsTs`` when there are; these cases are marked ``test`` and never trained on)."""
    meta = read_dataset_json(root / "dataset.json", specs)
    cases = [case for images, labels in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs"))
             for case in _cases(root / images, meta, root / labels, True, images == "imagesTs")]
    seen: dict[str, CaseRecord] = {}
    for case in cases:
        if case.case_id in seen:
            raise PemmaError(f"{root}: case {case.case_id} is in both imagesTr and imagesTs "
                             f"({next(iter(seen[case.case_id].images.values()))}, {next(iter(case.images.values()))}); "
                             "IDs name the predictions and results, so each must be unique")
        seen[case.case_id] = case
    return cases


def folder_meta(folder: Path, specs: Specs | None = None) -> NnunetMeta:
    """The ``dataset.json`` of an ``imagesTr`` / ``imagesTs`` folder's dataset (beside it, or one level up); the
    defaults (channel 0 CT, channel 1 PET, any ending) when there is none."""
    for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
        if candidate.is_file():
            return read_dataset_json(candidate, specs)
    return NnunetMeta()


def discover_channel_folder(folder: Path, specs: Specs | None = None) -> list[CaseRecord]:
    """Cases of a folder of ``<case>_0000`` / ``<case>_0001`` files (an nnU-Net ``-i`` folder such as ``imagesTs``).

    Channels come from the dataset's ``dataset.json`` (see :func:`folder_meta`); labels from the matching
    ``labels*`` folder beside an ``imagesTr`` / ``imagesTs`` folder.
    """
    meta = folder_meta(folder, specs)
    labels = None
    if meta.source is not None and folder.name.lower().startswith("images"):
        labels = folder.parent / ("labels" + folder.name[len("images"):])
    return _cases(folder, meta, labels if labels is not None and labels.is_dir() else None, False,
                  folder.name == "imagesTs")


def channel_file_case(path: Path, specs: Specs | None = None) -> list[CaseRecord]:
    """The case of one ``<case>_0000`` file, with its other channel files beside it (empty: not such a name)."""
    parts = split_ending(path.name)
    match = _CHANNEL_FILE.match(parts[0]) if parts else None
    if match is None:
        return []
    return [c for c in discover_channel_folder(path.parent, specs) if c.case_id == match["case"]]


def discover_image_files(folder: Path) -> list[CaseRecord]:
    """A folder of CT files of any names (``.nii.gz``, ``.mha``, ``.nrrd``...): each file is a CT-only case whose ID
    is its name without the ending."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        parts = split_ending(path.name)
        if parts and path.is_file() and not path.name.startswith("."):
            if parts[0] in found:
                raise PemmaError(f"{folder}: two files for case {parts[0]}, {found[parts[0]].name} and {path.name}; "
                                 f"keep one (each file of a folder of CTs is one case, named by the file)")
            found[parts[0]] = path
    return [CaseRecord(cid, centre_of(cid), {"ct": str(path)}) for cid, path in found.items()]
