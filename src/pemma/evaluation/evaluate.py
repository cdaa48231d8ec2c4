"""``pemma evaluate``: HECKTOR DSCagg per class and mean, per-case Dice and HD95 (mm), on the original
CT grid, labelled by the input modality set."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from nibabel.processing import resample_from_to
from tqdm.auto import tqdm

from pemma.data.layout import CaseRecord
from pemma.data.transforms import check_label_overlap
from pemma.errors import PemmaError
from pemma.evaluation.metrics import AggregatedDice, case_metrics, summarize
from pemma.inference.predict import WindowSettings, predict_case
from pemma.io_utils import load_nifti, save_nifti, write_text_atomic
from pemma.models.loaded import LoadedModel
from pemma.vocab import LABEL_VALUES


def label_on_grid(case: CaseRecord, ref: nib.Nifti1Image) -> np.ndarray:
    """The case's label on the reference grid (nearest neighbour when it is e.g. one voxel off)."""
    img = load_nifti(case.label, what=f"label of case {case.case_id}")
    data = np.asanyarray(img.dataobj)
    values = np.unique(data)
    bad = [v for v in values.tolist() if v not in LABEL_VALUES]
    if bad:
        raise PemmaError(f"{case.label}: label of case {case.case_id} has values {bad[:5]} outside {{0, 1, 2}}")
    if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
        check_label_overlap(str(case.label), case.case_id, data.reshape(data.shape[:3]), img.affine, ref.shape,
                            ref.affine)
        img = resample_from_to(img, (ref.shape[:3], ref.affine), order=0, mode="constant", cval=0)
        data = np.asanyarray(img.dataobj)
    return np.rint(data).astype(np.uint8).reshape(ref.shape[:3])


def evaluate_model(model: LoadedModel, cases: Sequence[CaseRecord], modalities: Sequence[str], device: torch.device,
                   window: WindowSettings | None = None, predictions_dir: str | Path | None = None,
                   progress: bool = True, inputs_cache: dict[tuple, Any] | None = None) -> dict[str, Any]:
    """Predict and score every case.

    Returns:
        ``{"inputs": "ct+pet", "n_cases", "DSCagg": {"GTVp", "GTVn", "mean"}, "mean_case": {...},
        "cases": [per-case dicts]}``.
    """
    agg = AggregatedDice()
    rows = []
    for case in tqdm(cases, desc="evaluate", unit="case", disable=not progress):
        pred, ref = predict_case(model, case, modalities, device, window, inputs_cache)
        label_key = ("label", case.case_id, ref.shape)
        if inputs_cache is not None and label_key in inputs_cache:
            label = inputs_cache[label_key]
        else:
            label = label_on_grid(case, ref)
            if inputs_cache is not None:
                inputs_cache[label_key] = label
        agg.update(pred, label)
        spacing = tuple(float(z) for z in ref.header.get_zooms()[:3])
        rows.append({"case_id": case.case_id, "centre": case.centre, **case_metrics(pred, label, spacing)})
        if predictions_dir is not None:
            save_nifti(pred, ref.affine, Path(predictions_dir) / f"{case.case_id}.nii.gz", header=ref.header,
                       dtype=np.uint8)
    return {"inputs": "+".join(modalities), "n_cases": len(rows), "DSCagg": agg.compute(),
            "mean_case": summarize(rows), "cases": rows}


def write_report(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``metrics_<inputs>.json`` and ``cases_<inputs>.csv`` (atomically) and return their paths."""
    out_dir = Path(out_dir)
    tag = result["inputs"]
    json_path, csv_path = out_dir / f"metrics_{tag}.json", out_dir / f"cases_{tag}.csv"
    write_text_atomic(json_path, json.dumps(result, indent=2, default=float))
    buffer = io.StringIO()
    fields = list(result["cases"][0]) if result["cases"] else ["case_id"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(result["cases"])
    write_text_atomic(csv_path, buffer.getvalue())
    return json_path, csv_path


def format_summary(result: dict[str, Any]) -> str:
    """One table of DSCagg (and mean per-case HD95) for the console."""
    d, m = result["DSCagg"], result["mean_case"]
    return (f"inputs {result['inputs']:<7} cases {result['n_cases']:>3}  DSCagg GTVp {d['GTVp']:.4f}  "
            f"GTVn {d['GTVn']:.4f}  mean {d['mean']:.4f}  |  HD95 GTVp {m.get('hd95_GTVp', float('nan')):.1f} mm  "
            f"GTVn {m.get('hd95_GTVn', float('nan')):.1f} mm")
