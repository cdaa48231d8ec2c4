"""Registration of a case to its CT, cached: :func:`register_case` (images in memory) and :func:`register_files`
(files, read only when the transform is not cached) look a result up in this process, then in the disk cache
(:mod:`pemma.data.registration_cache`), and only then register (:func:`pemma.data.registration.register_images`)
and cache the result. Training start-up, preprocessing, ``predict`` and ``pemma check`` all come here, so every one
of them applies the same transform.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pemma.data.registration import RegistrationQC, RegistrationResult, RegistrationSettings, register_images
from pemma.data.registration_cache import cache_entry, read_entry, write_record, write_transform
from pemma.io_utils import load_nifti

log = logging.getLogger(__name__)

#: results in this process, keyed like the files of the disk cache
_MEMO: dict[str, RegistrationResult] = {}


def _read_cached(stem: Path, case_id: str, modality: str = "pet") -> RegistrationResult | None:
    entry = read_entry(stem)
    if entry is None:
        return None
    record, matrix = entry
    try:
        return RegistrationResult(case_id, record["mode"], matrix, RegistrationQC(**record["before"]),
                                  RegistrationQC(**record["after"]), float(record["shift_mm"]),
                                  float(record["rotation_deg"]), str(stem.with_suffix(".tfm")), modality)
    except (ValueError, KeyError, TypeError):
        return None


def _write_cached(stem: Path, result: RegistrationResult) -> None:
    try:
        result.transform_file = write_transform(stem, result.matrix)
        write_record(stem, result.to_dict())
    except (OSError, RuntimeError) as exc:
        result.transform_file = None
        log.warning(f"could not cache the registration of case {result.case_id} in {stem.parent} ({exc}); it is "
                    "recomputed (deterministically) where it is needed again")


def register_case(case_id: str, ct: np.ndarray, ct_affine: np.ndarray, ct_path: object, pet: np.ndarray,
                  pet_affine: np.ndarray, pet_path: object, settings: RegistrationSettings) -> RegistrationResult:
    """:func:`register_images`, cached per (case, modality) by the files' identity and the settings (memory, then
    disk).

    Args:
        case_id, ct, ct_affine, pet, pet_affine, settings: as for :func:`register_images`.
        ct_path, pet_path: the files the CT and the moving image were read from (None: not cached).
    """
    key, stem, result = _lookup(case_id, ct_path, pet_path, settings)
    if result is not None:
        return result
    result = register_images(case_id, ct, ct_affine, pet, pet_affine, settings, pet_path)
    if key is not None and stem is not None:
        log.info(result.line())
        _write_cached(stem, result)
        _MEMO[key] = result
    return result


def _lookup(case_id: str, ct_path: object, pet_path: object, settings: RegistrationSettings,
            ) -> tuple[str | None, Path | None, RegistrationResult | None]:
    """(cache key, cache file stem, the cached result or None); key and stem None when the files are unknown."""
    entry = cache_entry(case_id, ct_path, pet_path, settings.key(), settings.mode, settings.modality)
    if entry is None:
        return None, None, None
    key, stem = entry
    if key in _MEMO:
        return key, None, _MEMO[key]
    result = _read_cached(stem, case_id, settings.modality)
    if result is not None:
        _MEMO[key] = result
    return key, stem, result


def register_files(case_id: str, ct_path: str, pet_path: str, settings: RegistrationSettings) -> RegistrationResult:
    """:func:`register_case` of the CT and the moving (``settings.modality``) files of a case (read with the
    loader's checks only when the transform is not cached)."""
    cached = _lookup(case_id, ct_path, pet_path, settings)[2]
    if cached is not None:
        return cached
    ct = load_nifti(ct_path, what=f"CT of case {case_id}")
    pet = load_nifti(pet_path, what=f"{settings.label} of case {case_id}")
    return register_case(case_id, np.asanyarray(ct.dataobj).reshape(ct.shape[:3]), ct.affine, ct_path,
                         np.asanyarray(pet.dataobj).reshape(pet.shape[:3]), pet.affine, pet_path, settings)
