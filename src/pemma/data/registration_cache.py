"""The registration cache of :mod:`pemma.data.registration`: file identities, cache keys and ITK ``.tfm`` I/O.

A registration is cached per (case, modality) as ``<cache root>/registration/<case>-<mode>-<key>.tfm`` (the
transform, ITK's LPS convention, as ITK tools read it) with ``.json`` beside it (the QC), keyed by the identity of
both files (absolute path, size, mtime) and the registration settings. A modality other than PET has its name in
the file stem (``<case>-<modality>-<mode>-<key>``); PET keeps the stems and keys it had before other modalities
could be registered.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pemma.io_utils import atomic_path, file_stamp, write_text_atomic

if TYPE_CHECKING:
    import SimpleITK as sitk

#: RAS <-> LPS (its own inverse)
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def cache_folder() -> Path:
    """``<cache root>/registration`` (``$PEMMA_CACHE_DIR`` or ``~/.cache/pemma/preprocessed``)."""
    from pemma.data.dataset import default_cache_dir

    return default_cache_dir("registration")


def cache_entry(case_id: str, fixed_path: object, moving_path: object, settings_key: str, mode: str,
                modality: str = "pet") -> tuple[str, Path] | None:
    """(cache key, file stem) of a registration; None when either file is unknown (not cached).

    Args:
        case_id: the case. fixed_path, moving_path: the CT and the moving image's files.
        settings_key: :meth:`~pemma.data.registration.RegistrationSettings.key`. mode: rigid / affine / none.
        modality: the moving modality (named in the stem unless PET).
    """
    ids = [file_stamp(fixed_path), file_stamp(moving_path)]
    if None in ids:
        return None
    key = hashlib.sha256(json.dumps([ids, settings_key]).encode("utf-8")).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in case_id)
    middle = "" if modality == "pet" else f"-{modality}"
    return key, cache_folder() / f"{safe}{middle}-{mode}-{key}"


def matrix_of(transform: sitk.Transform) -> np.ndarray:
    """4 x 4 matrix (LPS) of an affine-class transform, read off the images of the origin and unit points."""
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    out = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        out[:3, axis] = np.asarray(transform.TransformPoint(unit)) - origin
    out[:3, 3] = origin
    return out


def as_sitk(matrix_lps: np.ndarray) -> sitk.AffineTransform:
    """The SimpleITK affine transform of a 4 x 4 LPS matrix."""
    import SimpleITK as sitk
    transform = sitk.AffineTransform(3)
    transform.SetMatrix([float(v) for v in matrix_lps[:3, :3].flatten()])
    transform.SetTranslation([float(v) for v in matrix_lps[:3, 3]])
    return transform


def read_entry(stem: Path) -> tuple[dict[str, Any], np.ndarray] | None:
    """The cached record (``.json``) and RAS matrix (``.tfm``) of ``stem``; None when absent or unreadable."""
    import SimpleITK as sitk
    try:
        record = json.loads(stem.with_suffix(".json").read_text())
        matrix = FLIP @ matrix_of(sitk.ReadTransform(str(stem.with_suffix(".tfm")))) @ FLIP
    except (OSError, RuntimeError, ValueError, TypeError):
        return None
    return (record, matrix) if isinstance(record, dict) else None


def write_transform(stem: Path, matrix_ras: np.ndarray) -> str:
    """Write ``stem.tfm`` (atomically, LPS) and return its path. Raises OSError / RuntimeError when it cannot."""
    import SimpleITK as sitk
    with atomic_path(stem.with_suffix(".tfm")) as tmp:
        sitk.WriteTransform(as_sitk(FLIP @ matrix_ras @ FLIP), str(tmp))
    return str(stem.with_suffix(".tfm"))


def write_record(stem: Path, record: dict[str, Any]) -> None:
    """Write ``stem.json`` (atomically)."""
    write_text_atomic(stem.with_suffix(".json"), json.dumps(record, indent=1))
