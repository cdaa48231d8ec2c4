"""Survival heads on a feature vector: Cox (log hazard) and MTLR (discrete time), each with its loss and a
risk score (higher = earlier relapse).

Shapes: ``B`` batch, ``D`` features, ``K`` MTLR bin boundaries (``K + 1`` intervals).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pemma.survival.losses import cox_neg_partial_log_likelihood, mtlr_neg_log_likelihood, mtlr_targets
from pemma.vocab import SURVIVAL_HEADS

HEADS = SURVIVAL_HEADS


@dataclass(frozen=True)
class TimeBins:
    """MTLR interval boundaries (days), from the training RFS distribution.

    Args:
        boundaries: strictly increasing, finite, non-negative, at least one.

    Example:
        >>> TimeBins.from_times([100, 200, 300, 400, 500], [1, 1, 0, 1, 1]).boundaries
        (100.0, 500.0)
    """

    boundaries: tuple[float, ...]

    def __post_init__(self) -> None:
        values = tuple(float(b) for b in self.boundaries)
        if not values or any(not math.isfinite(b) or b < 0 for b in values) \
                or any(b >= c for b, c in zip(values, values[1:], strict=False)):
            raise ValueError(f"time bin boundaries must be >= 0, finite and increasing, got {values}")
        object.__setattr__(self, "boundaries", values)

    @classmethod
    def from_times(cls, time: Sequence[float], event: Sequence[int], n_bins: int | None = None) -> TimeBins:
        """Quantiles of the *event* times (all times when there is no event), like torchmtlr's
        ``make_time_bins``: ``n_bins`` quantiles from 0 to 1 (default ``ceil(sqrt(number of events))``),
        duplicates removed.
        """
        t = np.asarray(time, dtype=np.float64)
        e = np.asarray(event).astype(bool)
        source = t[e] if e.any() else t
        if source.size == 0:
            raise ValueError("no times to build MTLR bins from")
        n = n_bins or max(1, math.ceil(math.sqrt(source.size)))
        if n < 1:
            raise ValueError(f"n_bins must be >= 1, got {n}")
        qs = np.quantile(source, np.linspace(0, 1, n)) if n > 1 else np.array([np.median(source)])
        return cls(tuple(float(q) for q in np.unique(qs)))

    def tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.tensor(self.boundaries, dtype=torch.float32, device=device)


class CoxHead(nn.Module):
    """Linear log-hazard head.

    Args:
        in_features: D.

    Shapes:
        forward: (B, D) -> (B,) log relative hazard, which is also the risk score.

    Example:
        >>> head = CoxHead(8)
        >>> out = head(torch.rand(4, 8))
        >>> head.loss(out, torch.tensor([1., 2., 3., 4.]), torch.tensor([1, 0, 1, 0])).shape
        torch.Size([])
    """

    kind = "cox"

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 1)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)[:, 0]

    def risk(self, out: torch.Tensor) -> torch.Tensor:
        """(B,) risk = log hazard."""
        return out

    def loss(self, out: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
        """Efron-tied negative partial log-likelihood of the batch (0 with a zero gradient if it has no event)."""
        return cox_neg_partial_log_likelihood(out, event, time)


class MTLRHead(nn.Module):
    """Multi-task logistic regression (Yu et al. 2011) in torchmtlr's parameterisation.

    A Linear layer gives K scores ``s``; interval ``j`` gets ``logit_j = sum_{k >= j} s_k`` (``logit_K = 0``),
    so ``softmax(logits)`` is the probability of the event falling in each of the K + 1 intervals.

    Args:
        in_features: D.
        bins: the K boundaries.

    Shapes:
        forward: (B, D) -> (B, K + 1) logits.

    Example:
        >>> head = MTLRHead(8, TimeBins((300.0, 900.0)))
        >>> head(torch.rand(2, 8)).shape
        torch.Size([2, 3])
    """

    kind = "mtlr"

    def __init__(self, in_features: int, bins: TimeBins) -> None:
        super().__init__()
        self.bins = bins
        k = len(bins.boundaries)
        self.linear = nn.Linear(in_features, k)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("boundaries", bins.tensor(), persistent=False)
        self.register_buffer("cumulate", torch.tril(torch.ones(k, k + 1)), persistent=False)  # (K, K+1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features) @ self.cumulate

    def risk(self, out: torch.Tensor) -> torch.Tensor:
        """(B,) risk: :func:`mtlr_risk`."""
        return mtlr_risk(out)

    def loss(self, out: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
        """Mean MTLR negative log-likelihood (censored and uncensored)."""
        targets = mtlr_targets(time.to(self.boundaries.device), event.to(self.boundaries.device), self.boundaries)
        return mtlr_neg_log_likelihood(out, targets.to(out.dtype))


def mtlr_survival(logits: torch.Tensor) -> torch.Tensor:
    """Survival probabilities at ``[0, b_0, ..., b_{K-1}]``: ``S_j = sum_{i >= j} softmax(logits)_i``.

    Shapes:
        (B, K + 1) -> (B, K + 1); column 0 is 1.
    """
    density = torch.softmax(logits, dim=1)
    return density.flip(1).cumsum(1).flip(1)


def mtlr_risk(logits: torch.Tensor) -> torch.Tensor:
    """Risk score of MTLR logits: the sum over the K boundaries of the cumulative discrete hazard
    ``H_j = sum_{i <= j} p_i / S_i`` (``S_i``: survival at the start of interval i); higher = earlier event.
    torchmtlr's ``mtlr_risk`` sums the same way but divides by the survival at the interval's end.

    Shapes:
        (B, K + 1) -> (B,).

    Example:
        >>> mtlr_risk(torch.tensor([[2.0, 0.0], [0.0, 0.0]]))  # more mass in the first interval = riskier
        tensor([0.8808, 0.5000])
    """
    density = torch.softmax(logits, dim=1)
    survival = mtlr_survival(logits)
    hazard = density[:, :-1] / (survival[:, :-1] + 1e-15)  # (B, K): P(event in interval j | alive at its start)
    return hazard.cumsum(dim=1).sum(dim=1)


def build_head(kind: str, in_features: int, bins: TimeBins | None = None) -> nn.Module:
    """``"cox"`` or ``"mtlr"`` (which needs ``bins``)."""
    if kind == "cox":
        return CoxHead(in_features)
    if kind == "mtlr":
        if bins is None:
            raise ValueError("an MTLR head needs time bins")
        return MTLRHead(in_features, bins)
    raise ValueError(f"head must be one of {HEADS}, got {kind!r}")
