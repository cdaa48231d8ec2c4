"""Encoding of clinical variables (EHR) into a fixed-length vector, fitted on training cases only.

* numeric columns (default Age, Weight): values parsed as numbers; a missing value is replaced by the
  **training median** and flagged by a missing indicator; then standard scaling with the training mean and
  standard deviation (of the observed values). Features: ``<col>`` and ``<col>:missing``.
* categorical / binary columns (default Gender, Tobacco, Alcohol, Performance status, HPV, Surgery,
  Chemotherapy): one-hot over the levels seen in training plus a ``missing`` level. Numbers are compared as
  numbers (``1``, ``1.0`` and `` 1 `` are the same level). A value never seen in training (an **unseen
  category**) is encoded as the ``missing`` level (the model has learnt what "unknown" means; an all-zero
  vector would be an input it never saw); :attr:`ClinicalEncoder.unseen` counts them per column.

Column names are the CSV header names, exactly (the HPV column is ``"HPV status (0=-, 1=+)"``). The fitted
encoder is plain JSON (:meth:`ClinicalEncoder.to_dict`) and is saved with the prognosis model.

Example:
    >>> enc = ClinicalEncoder(ClinicalConfig(numeric=("Age",), categorical=("Gender",)))
    >>> _ = enc.fit([{"Age": "60", "Gender": "M"}, {"Age": None, "Gender": "F"}, {"Age": "70", "Gender": "M"}])
    >>> enc.feature_names
    ['Age', 'Age:missing', 'Gender=F', 'Gender=M', 'Gender:missing']
    >>> enc.transform([{"Age": None, "Gender": "X"}]).tolist()
    [[0.0, 1.0, 0.0, 0.0, 1.0]]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pemma.errors import PemmaError
from pemma.survival.endpoints import is_missing
from pemma.vocab import HPV_COLUMN

DEFAULT_NUMERIC: tuple[str, ...] = ("Age", "Weight")
DEFAULT_CATEGORICAL: tuple[str, ...] = ("Gender", "Tobacco", "Alcohol", "Performance status", HPV_COLUMN,
                                        "Surgery", "Chemotherapy")
#: Columns that identify a patient or a data split; never used as predictors.
RESERVED: tuple[str, ...] = ("PatientID", "Task 1", "Task 2")
MISSING_LEVEL = "missing"
FORMAT_VERSION = 1


@dataclass
class ClinicalConfig:
    """Which clinical columns enter the model and how.

    Args:
        numeric: columns encoded as scaled numbers with a missing indicator. Default Age, Weight.
        categorical: columns one-hot encoded with a missing level. Default Gender, Tobacco, Alcohol,
            Performance status, HPV status, Surgery, Chemotherapy.

    Raises:
        ValueError: a name repeated or in both lists, a reserved column (PatientID, Task 1/2), no column at all.

    Example:
        >>> ClinicalConfig(numeric=("Age",), categorical=("HPV status (0=-, 1=+)",))
    """

    numeric: tuple[str, ...] = DEFAULT_NUMERIC
    categorical: tuple[str, ...] = DEFAULT_CATEGORICAL

    def __post_init__(self) -> None:
        for name in ("numeric", "categorical"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"{name} must be a list of column names, not the string {value!r}")
            names = tuple(str(v) for v in value)
            if any(not n.strip() for n in names):
                raise ValueError(f"{name} holds an empty column name")
            setattr(self, name, names)
        both = list(self.numeric) + list(self.categorical)
        repeated = sorted({n for n in both if both.count(n) > 1})
        if repeated:
            raise ValueError(f"clinical columns repeated or both numeric and categorical: {repeated}")
        reserved = [n for n in both if n in RESERVED]
        if reserved:
            raise ValueError(f"columns {reserved} identify patients or splits and cannot be predictors")
        if not both:
            raise ValueError("at least one clinical column is needed")

    @property
    def columns(self) -> tuple[str, ...]:
        return self.numeric + self.categorical


def _number(value: str | None, column: str, patient: str, source: str) -> float | None:
    if is_missing(value):
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        raise PemmaError(f"{source}: patient {patient}: clinical column {column!r} value {value!r} is not a "
                         "number") from None
    return number if math.isfinite(number) else None


def _level(value: str | None) -> str | None:
    """Canonical text of a categorical value: numbers as numbers (``1.0`` -> ``1``), else the stripped text."""
    if is_missing(value):
        return None
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return None
    return str(int(number)) if number.is_integer() else repr(number)


def _level_sort_key(level: str) -> tuple[int, float, str]:
    try:
        return (0, float(level), level)
    except ValueError:
        return (1, 0.0, level)


@dataclass
class ClinicalEncoder:
    """Clinical rows -> float32 feature matrix, with statistics learnt from training rows only.

    Args:
        config: the columns to use. Default :class:`ClinicalConfig` ().

    Attributes:
        numeric_stats: ``{column: {"median", "mean", "std"}}`` after :meth:`fit`.
        levels: ``{column: [levels seen in training]}`` after :meth:`fit`.
        unseen: ``{column: count}`` of unseen categories met by the last :meth:`transform`.

    Example:
        >>> enc = ClinicalEncoder().fit(train_rows, columns=table.columns)
        >>> x = enc.transform(test_rows)  # (len(test_rows), enc.n_features)
    """

    config: ClinicalConfig = field(default_factory=ClinicalConfig)
    numeric_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    levels: dict[str, list[str]] = field(default_factory=dict)
    unseen: dict[str, int] = field(default_factory=dict)

    @property
    def fitted(self) -> bool:
        return bool(self.numeric_stats or self.levels)

    @property
    def feature_names(self) -> list[str]:
        """Names of the output columns, in order."""
        names: list[str] = []
        for col in self.config.numeric:
            names += [col, f"{col}:{MISSING_LEVEL}"]
        for col in self.config.categorical:
            names += [f"{col}={lv}" for lv in self.levels.get(col, [])] + [f"{col}:{MISSING_LEVEL}"]
        return names

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def check_columns(self, columns: Sequence[str], source: str = "clinical CSV") -> None:
        """Raise :class:`PemmaError` for configured columns that ``columns`` (a CSV header) lacks."""
        unknown = [c for c in self.config.columns if c not in columns]
        if unknown:
            available = [c for c in columns if c not in RESERVED]
            raise PemmaError(f"{source}: unknown clinical column(s) {unknown}; available: {available}")

    def fit(self, rows: Sequence[Mapping[str, str | None]], columns: Sequence[str] | None = None,
            source: str = "clinical CSV") -> ClinicalEncoder:
        """Learn medians, means, standard deviations and levels from training ``rows``.

        Args:
            rows: one mapping per training patient (column -> raw text or None); ``PatientID`` is used in
                error messages when present.
            columns: the CSV header; configured columns it lacks raise :class:`PemmaError`. Default: not checked.
            source: the table's path, named in errors. Default "clinical CSV".

        Returns:
            ``self``.
        """
        if columns is not None:
            self.check_columns(columns, source)
        if not rows:
            raise PemmaError("clinical encoder: no training rows to fit on")
        self.numeric_stats, self.levels = {}, {}
        for col in self.config.numeric:
            values = [v for i, r in enumerate(rows)
                      if (v := _number(r.get(col), col, str(r.get("PatientID", f"#{i}")), source)) is not None]
            if values:
                arr = np.asarray(values, dtype=np.float64)
                std = float(arr.std())
                self.numeric_stats[col] = {"median": float(np.median(arr)), "mean": float(arr.mean()),
                                           "std": std if std > 1e-12 else 1.0}
            else:  # never observed in training: the feature is constant 0, only the indicator is informative
                self.numeric_stats[col] = {"median": 0.0, "mean": 0.0, "std": 1.0}
        for col in self.config.categorical:
            seen = {lv for r in rows if (lv := _level(r.get(col))) is not None}
            self.levels[col] = sorted(seen, key=_level_sort_key)
        return self

    def transform(self, rows: Sequence[Mapping[str, str | None] | None], source: str = "clinical CSV") -> np.ndarray:
        """Encode ``rows`` (a ``None`` row = every value missing; ``source``: the table's path, named in errors).

        Returns:
            float32 array (len(rows), n_features).

        Raises:
            PemmaError: not fitted, or a numeric column holds text that is not a number.
        """
        if not self.fitted:
            raise PemmaError("clinical encoder is not fitted (fit it on the training cases first)")
        self.unseen = {}
        out = np.zeros((len(rows), self.n_features), dtype=np.float32)
        for i, row in enumerate(rows):
            row = row or {}
            patient = str(row.get("PatientID", f"#{i}"))
            j = 0
            for col in self.config.numeric:
                stats = self.numeric_stats[col]
                value = _number(row.get(col), col, patient, source)
                missing = value is None
                value = stats["median"] if missing else value
                out[i, j] = (value - stats["mean"]) / stats["std"]
                out[i, j + 1] = float(missing)
                j += 2
            for col in self.config.categorical:
                levels = self.levels[col]
                level = _level(row.get(col))
                if level is not None and level in levels:
                    out[i, j + levels.index(level)] = 1.0
                else:
                    if level is not None:
                        self.unseen[col] = self.unseen.get(col, 0) + 1
                    out[i, j + len(levels)] = 1.0
                j += len(levels) + 1
        return out

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description of the fitted encoder."""
        return {"version": FORMAT_VERSION, "numeric": list(self.config.numeric),
                "categorical": list(self.config.categorical), "numeric_stats": self.numeric_stats,
                "levels": self.levels}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClinicalEncoder:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: not an encoder dict of this version, or statistics missing for a column.
        """
        if not isinstance(data, Mapping) or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a clinical encoder of version {FORMAT_VERSION}")
        config = ClinicalConfig(numeric=tuple(data["numeric"]), categorical=tuple(data["categorical"]))
        stats = {k: {s: float(v) for s, v in d.items()} for k, d in dict(data["numeric_stats"]).items()}
        levels = {k: [str(v) for v in lv] for k, lv in dict(data["levels"]).items()}
        missing = [c for c in config.numeric if c not in stats] + [c for c in config.categorical if c not in levels]
        if missing:
            raise ValueError(f"clinical encoder has no statistics for {missing}")
        return cls(config, stats, levels)
