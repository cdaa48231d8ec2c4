"""Prognosis inputs: image cases with endpoints (and clinical rows), preprocessed once to one centre crop each.

Images go through :func:`pemma.data.transforms.preprocessing` (no label: resampling onto the CT grid, RAS,
target spacing, head-and-neck box found from the CT, intensity scaling, padding to the ROI) and then a
single **centre crop** of the ROI size, cached with :func:`pemma.data.dataset.cached_dataset`. The label is
never read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.transforms import CenterSpatialCropd, Compose

from pemma.config import RunConfig
from pemma.data.dataset import cached_dataset, case_dicts
from pemma.data.layout import CaseRecord, discover_cases, select_cases
from pemma.data.transforms import preprocessing
from pemma.errors import PemmaError
from pemma.survival.clinical import ClinicalEncoder
from pemma.survival.endpoints import (
    CLINICAL_FILE,
    ENDPOINT_FILE,
    ClinicalTable,
    Endpoint,
    MatchReport,
    find_table,
    match_endpoints,
    read_clinical,
    read_endpoints,
)

log = logging.getLogger("pemma.run")


@dataclass
class Tables:
    """Where the endpoint and clinical tables of a dataset are (either may be absent)."""

    endpoints: dict[str, Endpoint] | None = None
    clinical: ClinicalTable | None = None
    endpoint_path: Path | None = None

    @classmethod
    def find(cls, root: str | Path, endpoints: str | Path | None = None, clinical: str | Path | None = None,
             need_endpoints: bool = True, need_clinical: bool = False) -> Tables:
        """Read the tables under ``root`` (or the explicit paths).

        Raises:
            PemmaError: a needed table is not found (or a table is malformed).
        """
        end_path = find_table(root, ENDPOINT_FILE, endpoints)
        clin_path = find_table(root, CLINICAL_FILE, clinical)
        if need_endpoints and end_path is None:
            raise PemmaError(f"{root}: no {ENDPOINT_FILE} found (pass --endpoints FILE)")
        if need_clinical and clin_path is None:
            raise PemmaError(f"{root}: no {CLINICAL_FILE} found (pass --clinical FILE)")
        return cls(read_endpoints(end_path) if end_path and need_endpoints else None,
                   read_clinical(clin_path) if clin_path and need_clinical else None, end_path)


def select_image_cases(cfg: RunConfig, modalities: Sequence[str]) -> list[CaseRecord]:
    """Cases of ``cfg.data`` (root, centres) that have every modality in ``modalities``."""
    return select_cases(discover_cases(cfg.data.root), centres=cfg.data.centres, modalities=list(modalities),
                        source=str(cfg.data.root))


def match_or_fail(cases: list[CaseRecord], tables: Tables, centres: Sequence[str]) -> MatchReport:
    """Pair cases with endpoints, log the skipped counts, and fail when nothing is left."""
    assert tables.endpoints is not None
    report = match_endpoints(cases, tables.endpoints, centres)
    log.info(f"endpoints {tables.endpoint_path}: {report.summary()}")
    if not report.pairs:
        raise PemmaError(f"{tables.endpoint_path}: no endpoint row matches an image case "
                         f"({len(cases)} image cases, {len(tables.endpoints)} endpoint rows)")
    return report


def clinical_rows(cases: Sequence[CaseRecord], table: ClinicalTable) -> list[dict[str, str | None] | None]:
    """Each case's clinical row (``None`` = not in the table), with ``PatientID`` set for error messages."""
    rows: list[dict[str, str | None] | None] = []
    for case in cases:
        row = table.row(case.case_id)
        rows.append(None if row is None else {"PatientID": case.case_id, **row})
    return rows


def encode_clinical(encoder: ClinicalEncoder, cases: Sequence[CaseRecord], table: ClinicalTable) -> np.ndarray:
    """(N, F) encoded clinical matrix; patients missing from the table are logged and encoded as all-missing."""
    rows = clinical_rows(cases, table)
    absent = [c.case_id for c, r in zip(cases, rows, strict=True) if r is None]
    if absent:
        log.info(f"clinical {table.path}: {len(absent)} of {len(cases)} cases have no row "
                 f"({', '.join(absent[:3])}{', ...' if len(absent) > 3 else ''}); encoded as all missing")
    matrix = encoder.transform(rows)
    if encoder.unseen:
        log.info(f"clinical {table.path}: unseen categories encoded as missing: {encoder.unseen}")
    return matrix


@dataclass
class CaseImages:
    """Preprocessed centre crops of ``cases``: :meth:`batch` stacks them as (B, C, X, Y, Z)."""

    cases: list[CaseRecord]
    modalities: tuple[str, ...]
    dataset: object = field(repr=False)

    @classmethod
    def build(cls, cases: Sequence[CaseRecord], modalities: Sequence[str], cfg: RunConfig,
              progress: bool = False) -> CaseImages:
        """Preprocess ``cases`` (cached in memory or in ``cfg.data.cache_dir``)."""
        roi = list(cfg.model.roi_size)
        # flattened: CacheDataset caches up to the first Randomizable transform, and a nested Compose is one
        transform = Compose([preprocessing(list(modalities), cfg.preprocess, roi, with_label=False),
                             CenterSpatialCropd("image", roi)]).flatten()
        data = cached_dataset(case_dicts(list(cases), list(modalities), with_label=False), transform,
                              cfg.data.cache_dir, progress)
        return cls(list(cases), tuple(modalities), data)

    def __len__(self) -> int:
        return len(self.cases)

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        items = [self.dataset[int(i)]["image"] for i in indices]
        return torch.stack([x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x) for x in items]).float()


def outcome_tensors(report: MatchReport, cases: Sequence[CaseRecord]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) RFS days and (N,) relapse flags of ``cases`` (each in ``report``)."""
    endpoints = {c.case_id: e for c, e in report.pairs}
    time = torch.tensor([endpoints[c.case_id].rfs for c in cases], dtype=torch.float32)
    event = torch.tensor([endpoints[c.case_id].relapse for c in cases], dtype=torch.float32)
    return time, event
