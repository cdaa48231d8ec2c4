"""Settings of a prognosis stage (``pemma survival train | adapt``): one validated dataclass, saved in the run's
``survival.json`` under ``"settings"`` (runs written before it existed load without it).

Optimisation, sampling and the device are the run's :class:`~pemma.config.TrainConfig` (``epochs``, ``lr``,
``batch_size``, ``max_steps``, ``seed``, ...) in ``config.yaml``; this class holds what only a prognosis stage has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pemma.errors import PemmaError
from pemma.vocab import SURVIVAL_HEADS as HEADS
from pemma.vocab import adapter_type

#: learning-rate factor of trainable encoder parts (adapters, PET pathway) relative to the head's
ENCODER_LR_SCALE = 0.1
#: candidate L2 penalties ``l2 / 2 * ||W||^2`` on the head's and the clinical projection's weights (MTLR's C1
#: regulariser), chosen by inner cross-validation unless ``l2`` is given (:mod:`pemma.survival.probe`)
L2_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
#: training minus validation C-index above which a prognosis stage is reported as overfitting
OVERFIT_GAP = 0.1


@dataclass
class SurvivalConfig:
    """What a prognosis stage trains and how (besides the run's ``train`` section).

    Raises:
        ValueError: a value out of range (see each field's help).

    Example:
        >>> SurvivalConfig(head="cox", l2=0.5)
        >>> SurvivalConfig(head="cox", l2_grid=(0.1, 1.0, 10.0), cv_folds=4)
        >>> SurvivalConfig(add_modality="pet", method="dora", rank=8, alpha=16.0)
    """

    head: str = field(default="mtlr", metadata={"help": "survival head: mtlr or cox (stage ct; later stages keep it)"})
    bins: int | None = field(default=None, metadata={
        "help": "MTLR time bins (default: ceil(sqrt(training relapses)))"})
    l2: float | None = field(default=None, metadata={
        "help": "L2 penalty l2/2 ||W||^2 on the head's and the clinical projection's weights; default: chosen "
                "from l2_grid by inner cross-validation on the training cases"})
    l2_grid: tuple[float, ...] = field(default=L2_GRID, metadata={
        "help": "candidate penalties when l2 is not given"})
    cv_folds: int = field(default=5, metadata={"help": "inner cross-validation folds choosing l2 (>= 2)"})
    probe_iterations: int = field(default=200, metadata={
        "help": "most L-BFGS iterations solving the head on the frozen features"})
    encoder_lr_scale: float = field(default=ENCODER_LR_SCALE, metadata={
        "help": "learning rate of adapters and PET pathway relative to train.lr"})
    clip_norm: float = field(default=1.0, metadata={"help": "gradient-norm clipping of the trainable parameters"})
    add_modality: str | None = field(default=None, metadata={
        "help": "adapt: image modality to add (pet; default: none)"})
    add_ehr: bool = field(default=False, metadata={"help": "adapt: add the clinical vector (zero-initialised)"})
    method: str | None = field(default=None, metadata={
        "help": "adapt: lora or dora (pemma_lora, pemma_dora) for new adapters (default: the previous stage's, "
                "else lora)"})
    rank: int = field(default=4, metadata={"help": "adapt: rank of new adapters"})
    alpha: float = field(default=8.0, metadata={"help": "adapt: scaling alpha of new adapters"})
    train_adapters: bool = field(default=True, metadata={
        "help": "adapt: train existing / initialised adapters and the PET pathway too; False trains the head "
                "(and clinical projection) on features computed once"})

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.bins is not None and int(self.bins) < 1:
            raise ValueError(f"bins must be >= 1, got {self.bins}")
        if self.l2 is not None and not self.l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        self.l2_grid = tuple(float(g) for g in self.l2_grid)
        if not self.l2_grid or min(self.l2_grid) <= 0:
            raise ValueError(f"l2_grid must hold values > 0, got {self.l2_grid}")
        if int(self.cv_folds) < 2:
            raise ValueError(f"cv_folds must be >= 2, got {self.cv_folds}")
        if int(self.probe_iterations) < 1:
            raise ValueError(f"probe_iterations must be >= 1, got {self.probe_iterations}")
        if not self.encoder_lr_scale > 0:
            raise ValueError(f"encoder_lr_scale must be > 0, got {self.encoder_lr_scale}")
        if not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0, got {self.clip_norm}")
        if self.add_modality not in (None, "pet"):
            raise ValueError(f"add_modality must be pet, got {self.add_modality!r}")
        if self.method is not None:  # pemma_lora / pemma_dora name the same adapters as lora / dora
            self.method = adapter_type(self.method)
        if int(self.rank) < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SurvivalConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown survival settings {unknown}")
        return cls(**raw)


def survival_settings(settings: SurvivalConfig | None = None, **changes: Any) -> SurvivalConfig:
    """``settings`` (default :class:`SurvivalConfig` ()) with ``changes`` applied; bad values are a
    :class:`~pemma.errors.PemmaError`."""
    try:
        return dataclasses.replace(settings or SurvivalConfig(), **changes)
    except (TypeError, ValueError) as exc:
        raise PemmaError(f"invalid survival settings: {exc}") from None
