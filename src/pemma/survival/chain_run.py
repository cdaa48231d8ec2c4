"""``pemma survival chain``: measure every case's lesions with the model's own segmentation, then fit and score
the CT -> CT+PET -> CT+PET+EHR chain (:mod:`pemma.survival.chain`).

Writes ``OUT/features.csv`` (one row per case: split side, outcome, the CT and CT+PET lesion features) and
``OUT/chain.json`` (settings, segmentation runs, split, every stage's penalty, CV / training / held-out C-index,
overfitting flag, coefficients and held-out risks), both atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pemma.data.layout import CaseRecord, discover_cases, select_cases
from pemma.errors import PemmaError
from pemma.inference.prediction_cache import PredictionCache
from pemma.io_utils import write_text_atomic
from pemma.survival.chain import ChainConfig, ChainData, run_chain, split_held_out
from pemma.survival.clinical import ClinicalConfig, ClinicalEncoder
from pemma.survival.data import Tables, clinical_rows, encode_clinical, match_or_fail
from pemma.survival.lesion import CT_FEATURES, PET_FEATURES, Segmenter, label_segmenter, measure_case, model_segmenter

log = logging.getLogger("pemma.run")

#: the value of a segmentation argument that reads the reference labels instead of a model (oracle)
ORACLE_LABELS = "labels"


def _segmenter(spec: str | Path | Segmenter, modalities: Sequence[str], device: str,
               predictions: PredictionCache | None = None) -> tuple[Segmenter, str]:
    if callable(spec):
        return spec, getattr(spec, "__name__", "callable")
    if str(spec) == ORACLE_LABELS:
        return label_segmenter, ORACLE_LABELS
    return model_segmenter(spec, modalities, device, predictions), str(Path(spec).resolve())


def _split(cases: list[CaseRecord], event: np.ndarray, cfg: ChainConfig, train_ids: Sequence[str] | None,
           test_ids: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    if train_ids is None and test_ids is None:
        return split_held_out(event, cfg.test_fraction, cfg.seed)
    if train_ids is None or test_ids is None:
        raise PemmaError("give both the training and the held-out case IDs, or neither")
    index = {c.case_id: i for i, c in enumerate(cases)}
    missing = [c for c in list(train_ids) + list(test_ids) if c not in index]
    if missing:
        log.warning(f"{len(missing)} cases of the split have no CT, PET or endpoint and are left out: "
                    f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
    train_ids, test_ids = [c for c in train_ids if c in index], [c for c in test_ids if c in index]
    if not train_ids:
        raise PemmaError("no training case of the split has CT, PET and an endpoint")
    overlap = sorted(set(train_ids) & set(test_ids))
    if overlap:
        raise PemmaError(f"cases both in training and held out: {', '.join(overlap[:5])}")
    return np.array([index[c] for c in train_ids], int), np.array([index[c] for c in test_ids], int)


def features_csv(data: ChainData, side: dict[str, str]) -> str:
    names = [f"ct:{n}" for n in CT_FEATURES] + [f"ct+pet:{n}" for n in (*CT_FEATURES, *PET_FEATURES)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case_id", "split", "rfs", "relapse", *names])
    for i, case in enumerate(data.case_ids):
        writer.writerow([case, side[case], f"{data.time[i]:g}", int(data.event[i]),
                         *(f"{v:.6g}" for v in np.concatenate([data.ct[i], data.pet[i]]))])
    return buf.getvalue()


def survival_chain(data_root: str | Path, out_dir: str | Path, seg_ct: str | Path | Segmenter,
                   seg_ctpet: str | Path | Segmenter | None = None, *, centres: Sequence[str] | None = None,
                   cfg: ChainConfig | None = None, clinical_config: ClinicalConfig | None = None,
                   train_ids: Sequence[str] | None = None, test_ids: Sequence[str] | None = None,
                   endpoints: str | Path | None = None, clinical: str | Path | None = None, ehr: bool = True,
                   device: str = "cpu", progress: bool = False,
                   predictions: PredictionCache | None = None) -> dict[str, Any]:
    """Measure lesions, fit the chain on the training cases, score it on the held-out ones.

    Args:
        data_root: dataset folder (CT, PET, endpoint and clinical CSVs).
        out_dir: where ``features.csv`` and ``chain.json`` go (created).
        seg_ct: the CT segmentation run (segments CT input), ``"labels"`` (reference labels, an oracle) or a
            :data:`~pemma.survival.lesion.Segmenter`.
        seg_ctpet: the run that segments CT+PET input (e.g. ``pemma adapt``'s PEMMA run); default ``seg_ct`` on CT
            (PET uptake is then measured in the CT segmentation).
        centres: centres whose cases are used. Default all.
        cfg: chain settings (:class:`ChainConfig`). clinical_config: clinical columns.
        train_ids, test_ids: the split; default a stratified ``cfg.test_fraction`` held out, seeded.
        endpoints, clinical: explicit table paths. ehr: fit the ``ct+pet+ehr`` stage. Default True.
        device: where segmentation runs. progress: a bar over cases.
        predictions: segmentations made earlier in this process (:class:`PredictionCache`, e.g. evaluation's, or
            another chain's with the same CT run), reused instead of segmenting a case again. Default None.

    Returns:
        The ``chain.json`` content.

    Raises:
        PemmaError: no case with CT, PET and an endpoint; a bad split; a bad image (one line naming the case).
    """
    cfg = cfg or ChainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = Tables.find(data_root, endpoints=endpoints, clinical=clinical, need_clinical=ehr)
    cases = select_cases(discover_cases(data_root), centres=list(centres) if centres else None,
                         modalities=["ct", "pet"], source=str(data_root))
    report = match_or_fail(cases, tables, list(centres or []))
    cases = report.cases
    ends = {c.case_id: e for c, e in report.pairs}
    time = np.array([ends[c.case_id].rfs for c in cases], float)
    event = np.array([ends[c.case_id].relapse for c in cases], float)
    train, test = _split(cases, event, cfg, train_ids, test_ids)
    ct_seg, ct_name = _segmenter(seg_ct, ["ct"], device, predictions)
    if seg_ctpet is None:
        pet_seg, pet_name = ct_seg, ct_name
    else:
        pet_seg, pet_name = _segmenter(seg_ctpet, ["ct", "pet"], device, predictions)
    log.info(f"lesion features of {len(cases)} cases ({int(event.sum())} relapses): CT stage segmented by {ct_name}, "
             f"CT+PET stage by {pet_name} (sliding window over the whole case)")
    ct_rows, pet_rows = [], []
    for case in tqdm(cases, desc="lesions", unit="case", disable=not progress):
        ct_feats = measure_case(case, ct_seg, False, **cfg.lesion_settings)
        pet_feats = measure_case(case, pet_seg, True, **cfg.lesion_settings)
        ct_rows.append([ct_feats[n] for n in CT_FEATURES])
        pet_rows.append([pet_feats[n] for n in (*CT_FEATURES, *PET_FEATURES)])
    matrix, names = None, []
    if ehr:
        assert tables.clinical is not None
        encoder = ClinicalEncoder(clinical_config or ClinicalConfig())
        encoder.check_columns(tables.clinical.columns, str(tables.clinical.path))
        rows = [r for r in clinical_rows([cases[i] for i in train], tables.clinical) if r is not None]
        if not rows:
            raise PemmaError(f"{tables.clinical.path}: no training case has a clinical row")
        encoder.fit(rows, source=str(tables.clinical.path))
        matrix, names = encode_clinical(encoder, cases, tables.clinical).astype(np.float64), encoder.feature_names
    data = ChainData([c.case_id for c in cases], time, event, np.array(ct_rows, float), np.array(pet_rows, float),
                     matrix, names)
    result = run_chain(data, cfg, train, test)
    result.update({"segmentation": {"ct": ct_name, "ct+pet": pet_name}, "data": str(Path(data_root).resolve()),
                   "centres": sorted({c.centre for c in cases})})
    side = {**{data.case_ids[i]: "train" for i in train}, **{data.case_ids[i]: "test" for i in test}}
    write_text_atomic(out / "features.csv", features_csv(data, side))
    write_text_atomic(out / "chain.json", json.dumps(result, indent=2, default=float))
    return result
