"""``pemma survival evaluate`` and ``predict``: risk scores of a prognosis model on a dataset.

* evaluate: cases with images and endpoints (skips counted), Harrell's C-index with a seeded bootstrap
  interval, Kaplan–Meier curves of the groups split at the **training** median risk (stored with the model)
  with the log-rank p-value as a PNG, and a JSON report.
* predict: the HECKTOR Task-2 file ``PatientID,Prediction`` (risk, higher = earlier relapse), written
  atomically; endpoints are not needed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pemma.data.case import patient_key
from pemma.data.layout import CaseRecord, discover_cases, select_cases
from pemma.errors import PemmaError
from pemma.io_utils import write_text_atomic
from pemma.runtime import resolve_device
from pemma.survival.data import CaseImages, Tables, encode_clinical, outcome_tensors
from pemma.survival.endpoints import match_endpoints
from pemma.survival.metrics import bootstrap_c_index, plot_risk_groups
from pemma.survival.runs import PrognosisRun, load_run

log = logging.getLogger("pemma.run")


def _config(run: PrognosisRun, data: str | Path, cache_dir: str | None):
    cfg = run.config
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(data), cache_dir=cache_dir))


def predict_risks(run: PrognosisRun, cases: list[CaseRecord], data: str | Path, tables: Tables,
                  device: torch.device, batch_size: int = 2, cache_dir: str | None = None) -> np.ndarray:
    """(N,) risk scores of ``cases`` (their images, and clinical rows when the model uses EHR)."""
    cfg = _config(run, data, cache_dir)
    images = CaseImages.build(cases, run.modalities, cfg)
    clinical = None
    if run.ehr:
        if tables.clinical is None or run.clinical_encoder is None:
            raise PemmaError(f"{data}: the model uses clinical data but no clinical table was found")
        clinical = torch.from_numpy(encode_clinical(run.clinical_encoder, cases, tables.clinical)).to(device)
    model = run.model.to(device).eval()
    risks = []
    with torch.no_grad():
        for i in range(0, len(cases), batch_size):
            idx = list(range(i, min(i + batch_size, len(cases))))
            out = model(images.batch(idx).to(device), None if clinical is None else clinical[idx])
            risks.append(model.risk(out).float().cpu())
    return torch.cat(risks).numpy()


SPLITS = ("all", "train", "val")


def _cases(run: PrognosisRun, data: str | Path, centres: list[str] | None, split: str = "all"
           ) -> tuple[list[CaseRecord], list[str]]:
    """Cases of ``data`` with the model's inputs, and the IDs of those left out: ``split`` "train" / "val" keeps
    the run's own case lists (an ID under either spelling, :func:`~pemma.data.case.patient_key`)."""
    if split not in SPLITS:
        raise PemmaError(f"split must be one of {SPLITS}, got {split!r}")
    cases = select_cases(discover_cases(data), centres=centres, modalities=list(run.modalities), source=str(data))
    if split == "all":
        return cases, []
    wanted = {patient_key(i) for i in run.meta.get(f"{split}_cases") or []}
    chosen = [c for c in cases if patient_key(c.case_id) in wanted]
    if not chosen:
        raise PemmaError(f"{data}: none of the model's {split} cases is here")
    return chosen, [c.case_id for c in cases if patient_key(c.case_id) not in wanted]


def evaluate_survival(model_run: str | Path, data: str | Path, centres: list[str] | None = None,
                      out_dir: str | Path | None = None, device: str = "auto", n_bootstrap: int = 1000,
                      seed: int = 0, endpoints: str | Path | None = None, clinical: str | Path | None = None,
                      base_run: str | Path | None = None, cache_dir: str | None = None,
                      split: str = "all", case_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """C-index (bootstrap CI), Kaplan–Meier PNG and JSON report of a prognosis model on ``data``.

    Args:
        model_run: prognosis run folder.
        data: dataset folder (images + endpoint CSV [+ clinical CSV]).
        centres: only these centres. Default all.
        out_dir: report folder. Default ``<model_run>/evaluation``.
        device: ``auto`` (default), ``cpu``, ``cuda``, ``cuda:N``.
        n_bootstrap, seed: bootstrap resamples and seed.
        endpoints, clinical: endpoint and clinical CSVs. Default: HECKTOR's file names under ``data``.
        base_run: the segmentation base run, if it moved since training. cache_dir: preprocessed-case cache.
        split: "all" cases of ``data``, or only the model's "train" or held-out "val" cases. Default "all".
        case_ids: only these cases (e.g. a protocol's held-out cases). Default: no restriction.

    Returns:
        The report dict (also written to ``survival_<stage>.json``; the plot is ``km_<stage>.png``).

    Example:
        >>> res = evaluate_survival("runs/surv_ctpet_ehr", "data/phantom", centres=["MDA"])
        >>> res["c_index"], res["ci_low"], res["ci_high"]
    """
    dev = resolve_device(device)
    run = load_run(model_run, dev, base_run=base_run)
    tables = Tables.find(data, endpoints=endpoints, clinical=clinical, need_clinical=run.ehr)
    assert tables.endpoints is not None
    cases, left_out = _cases(run, data, centres, split)
    if case_ids is not None:
        wanted = {patient_key(i) for i in case_ids}
        left_out += [c.case_id for c in cases if patient_key(c.case_id) not in wanted]
        cases = [c for c in cases if patient_key(c.case_id) in wanted]
    report = match_endpoints(cases, tables.endpoints, centres, left_out)
    if not report.pairs:
        raise PemmaError(f"{tables.endpoint_path}: no endpoint row matches an image case of {data}")
    cases = report.cases
    risk = predict_risks(run, cases, data, tables, dev, cache_dir=cache_dir)
    time_, event = (t.numpy() for t in outcome_tensors(report, cases))
    if not event.any():
        raise PemmaError(f"{data}: the {len(cases)} evaluated cases have no relapse; the C-index is undefined")
    try:
        result = bootstrap_c_index(time_, event, risk, n_bootstrap=n_bootstrap, seed=seed)
    except ValueError as exc:
        raise PemmaError(f"{data}: {exc}") from None
    out = Path(out_dir) if out_dir is not None else Path(model_run) / "evaluation"
    tag = run.stage if split == "all" else f"{run.stage}_{split}"
    png = out / f"km_{tag}.png"
    threshold = float(run.meta["risk_threshold"])
    test = plot_risk_groups(time_, event, risk, threshold, png, title=f"{tag} ({len(cases)} cases)")
    if split == "all" and run.meta.get("val_cases"):
        seen = {patient_key(i) for i in run.meta.get("train_cases", [])}  # CHUM-001 is CHUM_001
        overlap = sum(patient_key(c.case_id) in seen for c in cases)
        if overlap:
            log.info(f"note: {overlap} of the {len(cases)} evaluated cases were training cases of this model "
                     "(use --split val for the held-out ones)")
    summary = {"model": str(model_run), "stage": run.stage, "split": split, "data": str(data),
               "centres": sorted({c.centre for c in cases}),
               "n_cases": len(cases), "events": int(event.sum()), "c_index": result.c_index, "ci_low": result.low,
               "ci_high": result.high, "ci_level": result.level, "n_bootstrap": result.n_bootstrap,
               "risk_threshold": threshold, "high_risk": int((risk > threshold).sum()),
               "logrank_statistic": None if math.isnan(test.statistic) else test.statistic,
               "logrank_p": None if math.isnan(test.p_value) else test.p_value,
               "skipped_endpoints_without_images": report.endpoints_without_images,
               "skipped_images_without_endpoints": report.images_without_endpoints,
               "trainable_parameters": run.meta.get("parameters", {}).get("trainable"),
               "history": run.meta.get("history", []), "km_plot": str(png),
               "cases": [{"PatientID": c.case_id, "risk": float(r), "RFS": float(t), "Relapse": int(e)}
                         for c, r, t, e in zip(cases, risk, time_, event, strict=True)]}
    write_text_atomic(out / f"survival_{tag}.json", json.dumps(summary, indent=2) + "\n")
    summary["text"] = str(result)
    summary["report"] = str(out / f"survival_{tag}.json")
    summary["skipped"] = report.summary()
    return summary


def _check_not_an_input(out_csv: Path, data: str | Path, tables: Tables, cases: Sequence[CaseRecord]) -> None:
    """The risk CSV must not replace a file the prediction reads: the dataset's endpoint or clinical table (e.g.
    ``--out data/hecktor2022_endpoint_training.csv``), its datalist, a case's image or label.

    Raises:
        PemmaError: naming the file; before anything is predicted.
    """
    reads = [tables.endpoint_path, tables.clinical_path, *([data] if Path(data).is_file() else []),  # a datalist
             *(p for c in cases for p in (*c.images.values(), c.label) if p)]
    target = out_csv.resolve()
    for path in reads:
        if path is not None and Path(path).resolve() == target:
            raise PemmaError(f"{out_csv}: is {path}, a file this prediction reads; write the risks to another --out")


def predict_survival(model_run: str | Path, data: str | Path, out_csv: str | Path, centres: list[str] | None = None,
                     device: str = "auto", clinical: str | Path | None = None, base_run: str | Path | None = None,
                     cache_dir: str | None = None) -> dict[str, Any]:
    """Write ``PatientID,Prediction`` (risk scores) for every case of ``data`` with the model's inputs.

    Returns:
        ``{"n": cases written, "path": out_csv, "stage": the model's stage}``.

    Example:
        >>> predict_survival("runs/surv_ctpet_ehr", "data/phantom", "risk.csv")
    """
    dev = resolve_device(device)
    run = load_run(model_run, dev, base_run=base_run)
    tables = Tables.find(data, clinical=clinical, need_endpoints=False, need_clinical=run.ehr)
    cases, _ = _cases(run, data, centres)
    _check_not_an_input(Path(out_csv), data, tables, cases)
    risk = predict_risks(run, cases, data, tables, dev, cache_dir=cache_dir)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["PatientID", "Prediction"])
    for case, r in zip(cases, risk, strict=True):
        writer.writerow([case.case_id, f"{float(r):.10g}"])
    write_text_atomic(out_csv, buf.getvalue())
    return {"n": len(cases), "path": str(out_csv), "stage": run.stage}
