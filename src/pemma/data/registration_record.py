"""``registration.json``: a run's record of its registrations (mode, and per registered modality the settings and per
case the QC before / after and the transform), written from the cache the preprocessing filled."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pemma.config import PreprocessConfig
from pemma.data.register import register_files
from pemma.data.registration import OPTIMIZER, RegistrationSettings, registrable
from pemma.io_utils import write_text_atomic

#: the run's record of its registrations (mode, settings, per modality and case: QC before / after, transform)
REGISTRATION_FILE = "registration.json"


def record_registration(run_dir: str | os.PathLike, cases: Sequence[Any], modalities: Sequence[str],
                        cfg: PreprocessConfig) -> dict[str, Any] | None:
    """Write ``registration.json`` into a run folder: the mode and, per registered modality (:func:`registrable`),
    the settings and per case the QC before and after and the transform (from the cache the preprocessing filled).
    Nothing for ``register: none`` or without a registered modality.

    The file has ``mode``, ``optimizer`` and ``modalities: {name: {settings, mean_body_dice, cases}}``; a run that
    registers the PET also has the PET's ``settings``, ``mean_body_dice`` and ``cases`` at the top (the file of a
    PET run as before other modalities could be registered; :func:`registration_by_modality` reads both).

    Args:
        run_dir: the run folder. cases: the run's cases (:class:`~pemma.data.layout.CaseRecord`).
        modalities: the run's inputs. cfg: the run's preprocessing.

    Returns:
        the record written, or None.
    """
    moved = registrable(modalities, cfg) if cfg.register != "none" else []
    if not moved:
        return None
    blocks: dict[str, dict[str, Any]] = {}
    for modality in moved:
        settings = RegistrationSettings.from_preprocess(cfg, modality=modality)
        per_case = {}
        for case in {c.case_id: c for c in cases}.values():
            per_case[case.case_id] = register_files(case.case_id, case.images["ct"], case.images[modality],
                                                    settings).to_dict()
        afters = [r["after"]["body_dice"] for r in per_case.values()]
        befores = [r["before"]["body_dice"] for r in per_case.values()]
        blocks[modality] = {"settings": settings.record(),
                            "mean_body_dice": {"before": round(float(np.mean(befores)), 5),
                                               "after": round(float(np.mean(afters)), 5)},
                            "cases": per_case}
    record: dict[str, Any] = {"mode": cfg.register}
    if "pet" in blocks:
        record["settings"] = blocks["pet"]["settings"]
    record["optimizer"] = OPTIMIZER
    if "pet" in blocks:
        record.update(mean_body_dice=blocks["pet"]["mean_body_dice"], cases=blocks["pet"]["cases"])
    if set(blocks) != {"pet"}:
        record["modalities"] = blocks
    write_text_atomic(Path(run_dir) / REGISTRATION_FILE, json.dumps(record, indent=1) + "\n")
    return record


def registration_by_modality(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{modality: {settings, mean_body_dice, cases}}`` of a ``registration.json`` record (a PET run's file, also
    one written before other modalities could be registered, reads as ``{"pet": ...}``)."""
    if "modalities" in record:
        return dict(record["modalities"])
    if "cases" in record:
        return {"pet": {k: record[k] for k in ("settings", "mean_body_dice", "cases") if k in record}}
    return {}
