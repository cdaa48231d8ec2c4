"""Settings of the lesion-feature prognosis chain (:mod:`pemma.survival.chain`): a light module (no numpy, torch), so
the CLI can build its flags from the fields without importing the fitting code."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pemma.survival.config import OVERFIT_GAP

#: default grid of ridge penalties (lifelines' ``penalizer`` scale: per case, on standardised covariates)
PENALTY_GRID: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
#: absolute SUV threshold of the metabolic tumour volume, and the relative one (fraction of SUVmax)
SUV_THRESHOLD, SUV_RELATIVE = 2.5, 0.41
#: smallest GTVn component counted as a node (ml)
MIN_NODE_ML = 0.1


@dataclass
class ChainConfig:
    """Settings of the lesion-feature chain (``pemma survival chain``).

    Raises:
        ValueError: a value out of range (see each field's help).

    Example:
        >>> ChainConfig(folds=4, grid=(0.01, 0.1, 1.0))
    """

    grid: tuple[float, ...] = field(default=PENALTY_GRID, metadata={
        "help": "ridge penalties (per case, standardised covariates) tried by inner cross-validation"})
    folds: int = field(default=5, metadata={"help": "inner cross-validation folds on the training cases (>= 2)"})
    seed: int = field(default=0, metadata={"help": "seed of the inner folds, the held-out split and the bootstrap"})
    overfit_gap: float = field(default=OVERFIT_GAP, metadata={
        "help": "training minus cross-validated C-index above which a stage is reported as overfitting"})
    suv_threshold: float = field(default=SUV_THRESHOLD, metadata={"help": "SUV threshold of the MTV"})
    suv_relative: float = field(default=SUV_RELATIVE, metadata={
        "help": "fraction of the lesions' SUVmax of the relative MTV (0.41 = 41 %)"})
    min_node_ml: float = field(default=MIN_NODE_ML, metadata={"help": "smallest GTVn component counted (ml)"})
    test_fraction: float = field(default=0.4, metadata={
        "help": "held-out fraction of the cases when no split is given (stratified by relapse, seeded)"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap replicates of each held-out C-index CI"})

    def __post_init__(self) -> None:
        self.grid = tuple(float(g) for g in self.grid)
        if not self.grid or min(self.grid) <= 0:
            raise ValueError(f"grid must hold penalties > 0, got {self.grid}")
        if int(self.folds) < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        if int(self.seed) < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not self.overfit_gap > 0:
            raise ValueError(f"overfit_gap must be > 0, got {self.overfit_gap}")
        if not self.suv_threshold > 0:
            raise ValueError(f"suv_threshold must be > 0, got {self.suv_threshold}")
        if not 0 < self.suv_relative < 1:
            raise ValueError(f"suv_relative must be in (0, 1), got {self.suv_relative}")
        if not self.min_node_ml >= 0:
            raise ValueError(f"min_node_ml must be >= 0, got {self.min_node_ml}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if int(self.bootstrap) < 1:
            raise ValueError(f"bootstrap must be >= 1, got {self.bootstrap}")

    @property
    def lesion_settings(self) -> dict[str, float]:
        return {"suv_threshold": self.suv_threshold, "suv_relative": self.suv_relative,
                "min_node_ml": self.min_node_ml}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
