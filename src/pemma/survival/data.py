"""Prognosis inputs: image cases with endpoints (and clinical rows), preprocessed once to one centre crop each.

Images go through :func:`pemma.data.transforms.preprocessing` (no label: the CT to RAS, the target
spacing and the head-and-neck box found from it, the PET resampled onto that box, intensity scaling, padding to
the ROI) and then a single **centre crop** of the ROI size, cached with
:func:`pemma.data.dataset.cached_dataset`. The label is never read.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import CenterSpatialCropd, Compose

from pemma.config import RunConfig
from pemma.data.check import preflight
from pemma.data.dataset import cached_dataset, case_dicts
from pemma.data.layout import CaseRecord, discover_cases, select_cases, split_cases
from pemma.data.transforms import preprocessing
from pemma.errors import PemmaError
from pemma.survival.clinical import ClinicalEncoder
from pemma.survival.endpoints import (
    ClinicalTable,
    Endpoint,
    MatchReport,
    find_table,
    match_endpoints,
    read_clinical,
    read_endpoints,
)
from pemma.vocab import CLINICAL_FILE, ENDPOINT_FILE

log = logging.getLogger("pemma.run")


@dataclass
class Tables:
    """Where the endpoint and clinical tables of a dataset are (either may be absent)."""

    endpoints: dict[str, Endpoint] | None = None
    clinical: ClinicalTable | None = None
    endpoint_path: Path | None = None
    clinical_path: Path | None = None

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
                   read_clinical(clin_path) if clin_path and need_clinical else None, end_path, clin_path)


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
    """(N, F) encoded clinical matrix; patients missing from the table are logged and encoded as all-missing.

    Raises:
        PemmaError: the table lacks a column the encoder was fitted on (renamed or dropped: every patient's value
            would silently be "missing").

    Warns:
        UserWarning: values of a categorical column the encoder never saw, for half the cases or more (another
            coding, e.g. 1/0 for M/F), encoded as missing; fewer (a level rare in training) are logged.
    """
    encoder.check_columns(table.columns, str(table.path))
    rows = clinical_rows(cases, table)
    absent = [c.case_id for c, r in zip(cases, rows, strict=True) if r is None]
    if absent:
        log.info(f"clinical {table.path}: {len(absent)} of {len(cases)} cases have no row "
                 f"({', '.join(absent[:3])}{', ...' if len(absent) > 3 else ''}); encoded as all missing")
    matrix = encoder.transform(rows, str(table.path))
    if encoder.unseen:
        counts = ", ".join(f"{col} {n} of {len(cases)}" for col, n in encoder.unseen.items())
        text = f"clinical {table.path}: values the model never saw in training, encoded as missing: {counts} cases"
        if 2 * max(encoder.unseen.values()) >= len(cases):  # most patients: another coding of the column
            warnings.warn(f"{text} (another coding of the column?)", UserWarning, stacklevel=2)
        else:  # a rare level of a small training set
            log.info(text)
    return matrix


@dataclass
class CaseImages:
    """Preprocessed centre crops of ``cases``: :meth:`batch` stacks them as (B, C, X, Y, Z)."""

    cases: list[CaseRecord]
    modalities: tuple[str, ...]
    dataset: object = field(repr=False)
    #: what the crops depend on besides the case (preprocessing and roi); None: features are never memoised
    preprocessing: str | None = None

    def case_key(self, i: int) -> tuple | None:
        """What case ``i``'s crop depends on (preprocessing, case, image files and their modification times), for
        :func:`pemma.survival.fit.features_of`'s memo; None when unknown."""
        if self.preprocessing is None:
            return None
        case = self.cases[i]
        files = tuple((m, str(case.images[m]), _mtime(case.images[m])) for m in self.modalities)
        return (self.preprocessing, case.case_id, files)

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
        return cls(list(cases), tuple(modalities), data, preprocessing=f"{cfg.preprocess!r}|{roi}")

    def __len__(self) -> int:
        return len(self.cases)

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        items = [self.dataset[int(i)]["image"] for i in indices]
        return torch.stack([x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x) for x in items]).float()


def _mtime(path: str | Path) -> int:
    try:
        return Path(path).stat().st_mtime_ns
    except OSError:
        return -1


def outcome_tensors(report: MatchReport, cases: Sequence[CaseRecord]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) RFS days and (N,) relapse flags of ``cases`` (each in ``report``)."""
    endpoints = {c.case_id: e for c, e in report.pairs}
    time = torch.tensor([endpoints[c.case_id].rfs for c in cases], dtype=torch.float32)
    event = torch.tensor([endpoints[c.case_id].relapse for c in cases], dtype=torch.float32)
    return time, event


@dataclass
class Split:
    """Images, outcomes and encoded clinical vectors of one side of the case split."""

    images: CaseImages
    time: torch.Tensor
    event: torch.Tensor
    clinical: torch.Tensor | None = None

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.images.cases]


def split_for_stage(cfg: RunConfig, modalities: tuple[str, ...], tables: Tables, previous: dict[str, Any] | None = None,
                    fixed: tuple[Sequence[str], Sequence[str]] | None = None
                    ) -> tuple[MatchReport, list[CaseRecord], list[CaseRecord]]:
    """Cases with endpoints, split per centre (seeded). With ``previous`` (the metadata of the stage being
    extended) its training and validation cases keep their side, so no stage validates on an earlier stage's
    training cases; cases it did not have are split as usual. ``fixed`` = (training IDs, validation IDs) given
    by the caller (e.g. the protocol's split): only those cases are used, on those sides."""
    report = match_or_fail(select_image_cases(cfg, modalities), tables, cfg.data.centres)
    if fixed is not None:
        train_ids, val_ids = set(fixed[0]), set(fixed[1])
        if train_ids & val_ids:
            raise PemmaError(f"case {sorted(train_ids & val_ids)[0]} is both a training and a validation case")
        return (report, [c for c in report.cases if c.case_id in train_ids],
                [c for c in report.cases if c.case_id in val_ids])
    old_train = set((previous or {}).get("train_cases") or [])
    old_val = set((previous or {}).get("val_cases") or [])
    new = [c for c in report.cases if c.case_id not in old_train | old_val]
    train_new, val_new = split_cases(new, cfg.data.val_fraction, cfg.train.seed) if new else ([], [])
    train = [c for c in report.cases if c.case_id in old_train] + train_new
    val = [c for c in report.cases if c.case_id in old_val] + val_new
    if previous is not None and new:
        log.info(f"{len(new)} cases new to this stage were split by val_fraction "
                 f"({len(train_new)} training, {len(val_new)} validation)")
    return report, train, val


def prepare_splits(cfg: RunConfig, modalities: tuple[str, ...], tables: Tables, encoder: ClinicalEncoder | None,
                   progress: bool, report: MatchReport, train_cases: list[CaseRecord],
                   val_cases: list[CaseRecord]) -> tuple[Split, Split | None]:
    """Preprocessed images, outcomes and encoded clinical vectors of both sides of the split.

    Every image is checked first (:func:`~pemma.data.check.preflight`): a bad case stops the stage before any
    training, or is left out with ``data.exclude_bad_cases`` (and logged).
    """
    good, checked = preflight([*train_cases, *val_cases], modalities, cfg.data.exclude_bad_cases, with_label=False,
                              source=cfg.data.root)
    if not checked.ok:
        kept = {c.case_id for c in good}
        train_cases = [c for c in train_cases if c.case_id in kept]
        val_cases = [c for c in val_cases if c.case_id in kept]
        logging.getLogger("pemma.run").warning(f"left out {len(checked.problems)} bad case(s): "
                                               + "; ".join(p[0] for p in checked.problems.values()))
    sides = []
    for cases in (train_cases, val_cases):
        if not cases:
            sides.append(None)
            continue
        t, e = outcome_tensors(report, cases)
        clin = None
        if encoder is not None:
            assert tables.clinical is not None
            clin = torch.from_numpy(encode_clinical(encoder, cases, tables.clinical))
        sides.append(Split(CaseImages.build(cases, modalities, cfg, progress), t, e, clin))
    train = sides[0]
    if train is None or not bool(train.event.any()):
        n = 0 if train is None else len(train.images)
        raise PemmaError(f"{tables.endpoint_path}: no relapse among the {n} training cases; a survival model "
                         "cannot be trained (add cases or centres)")
    return train, sides[1]
