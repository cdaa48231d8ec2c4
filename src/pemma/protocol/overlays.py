"""The overlay figure of ``pemma reproduce``: CT / PET / ground truth / predictions on a few test cases.

Cases: the held-out test cases with the largest labelled tumour burden (GTVp + GTVn voxels), at most one per
centre first. Slice: the axial slice (last voxel axis of the CT grid) with the most labelled voxels. The PET
is resampled onto the CT grid (linear) for display; predictions come back on the CT grid from
:func:`pemma.inference.predict.predict_case`, or from a :class:`~pemma.inference.prediction_cache.PredictionCache`
that already holds them (``pemma reproduce`` shows evaluated test cases, so no network runs for the figure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nibabel.processing import resample_from_to

from pemma.data.layout import CaseRecord
from pemma.evaluation.evaluate import label_on_grid
from pemma.inference.prediction_cache import PredictionCache
from pemma.io_utils import load_nifti
from pemma.methods.loading import load_model
from pemma.models.loaded import LoadedModel
from pemma.protocol.figures import plot_overlays


def pick_cases(cases: Sequence[CaseRecord], n: int = 3) -> list[tuple[CaseRecord, np.ndarray, Any]]:
    """The ``n`` cases to show: ``(case, label on the CT grid, CT image)``, largest burden first, one per
    centre before a second from the same centre."""
    scored = []
    for case in cases:
        ct = load_nifti(case.images["ct"], what=f"CT of case {case.case_id}")
        label = label_on_grid(case, ct)
        scored.append((int((label > 0).sum()), case, label, ct))
    scored.sort(key=lambda s: -s[0])
    first, rest, seen = [], [], set()
    for entry in scored:
        (rest if entry[1].centre in seen else first).append(entry)
        seen.add(entry[1].centre)
    return [(case, label, ct) for _, case, label, ct in (first + rest)[:n]]


def overlay_figure(cases: Sequence[CaseRecord], runs: Mapping[str, tuple[Path, Sequence[str]]], path: Path,
                   device: torch.device, title: str, n_cases: int = 3,
                   inputs_cache: dict[tuple, Any] | None = None,
                   predictions: PredictionCache | None = None) -> Path:
    """Draw the overlay PNG.

    Args:
        cases: candidate test cases (CT, PET and label).
        runs: ``{column title: (run folder, input modalities)}``, e.g.
            ``{"CT model (CT)": (base_run, ["ct"]), "pemma_lora (CT+PET)": (run, ["ct", "pet"])}``.
        path: the PNG to write.
        device: where the models run.
        title: figure title.
        n_cases: rows. Default 3.
        inputs_cache: shared preprocessed inputs (see :func:`predict_case`).
        predictions: predictions made earlier (e.g. by the evaluation of the same runs): a case a run already
            predicted is drawn from there, and a run whose every case is there is not even loaded.
    """
    picked = pick_cases([c for c in cases if {"ct", "pet"} <= set(c.images) and c.label is not None], n_cases)
    predictions = predictions if predictions is not None else PredictionCache()
    models: dict[str, LoadedModel] = {}

    def predict(name: str, case: CaseRecord) -> np.ndarray:
        run, mods = runs[name]
        found = predictions.cached(run, case, list(mods))
        if found is not None:
            return found[0]
        if name not in models:
            models[name] = load_model(run, device)
        return predictions.predict(models[name], case, list(mods), device, inputs_cache=inputs_cache)[0]

    rows = []
    for case, label, ct in picked:
        k = int(np.argmax((label > 0).sum(axis=(0, 1))))
        pet = load_nifti(case.images["pet"], what=f"PET of case {case.case_id}")
        pet_on_ct = resample_from_to(pet, (ct.shape[:3], ct.affine), order=1, mode="constant", cval=0.0)
        rows.append({"case_id": f"{case.case_id} (k={k})", "ct": np.asanyarray(ct.dataobj)[:, :, k],
                     "pet": np.asanyarray(pet_on_ct.dataobj)[:, :, k], "label": label[:, :, k],
                     "predictions": {name: predict(name, case)[:, :, k] for name in runs}})
    return plot_overlays(rows, path, title=title)
