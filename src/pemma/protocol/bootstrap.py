"""Uncertainty of DSCagg comparisons: a seeded, paired bootstrap over test cases.

HECKTOR's DSCagg pools voxel counts over cases (``2 Σ|GT∩P| / (Σ|GT| + Σ|P|)`` per class), so a case is the unit that
is resampled: each replicate draws ``n`` cases with replacement, recomputes both methods' DSCagg mean from the drawn
cases' counts and takes their difference. The same draws serve both methods (paired), so case difficulty cancels.

Counts are arrays ``(n_cases, n_classes, 3)`` holding ``(|GT∩P|, |GT|, |P|)`` per case and tumour class (GTVp, GTVn),
as :func:`pemma.evaluation.metrics.case_counts` gives them.

Example:
    >>> a = np.array([[[8, 10, 10], [0, 0, 0]], [[5, 10, 10], [0, 0, 0]]])
    >>> b = np.array([[[4, 10, 10], [0, 0, 0]], [[5, 10, 10], [0, 0, 0]]])
    >>> d = paired_bootstrap(a, b, replicates=200, seed=0)
    >>> round(d.estimate, 3), d.n_cases
    (0.2, 2)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Difference:
    """A difference of DSCagg means (A - B) with its bootstrap confidence interval.

    Args:
        estimate: the difference on all cases. low, high: the CI bounds (percentile method).
        n_cases: cases resampled. level: CI level (0.95). replicates: bootstrap replicates.
    """

    estimate: float
    low: float
    high: float
    n_cases: int
    level: float = 0.95
    replicates: int = 2000

    def verdict(self, margin: float = 0.0) -> bool | None:
        """True when the whole CI is above ``margin``, False when it is wholly below, None (not shown) otherwise."""
        if self.low > margin:
            return True
        if self.high < margin:
            return False
        return None

    def to_dict(self) -> dict[str, float | int]:
        return {"estimate": self.estimate, "ci95": [self.low, self.high], "n_cases": self.n_cases,
                "replicates": self.replicates}


def dscagg_mean(counts: np.ndarray) -> np.ndarray:
    """DSCagg mean over the classes of pooled counts.

    Args:
        counts: ``(..., n_cases, n_classes, 3)``; the case axis is summed.

    Returns:
        ``(...)``: the mean over classes of ``2 Σ inter / (Σ gt + Σ pred)``, classes with no voxel in ground truth
        and prediction left out (NaN when every class is empty).
    """
    pooled = np.asarray(counts, dtype=np.float64).sum(axis=-3)
    denominator = pooled[..., 1] + pooled[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # every class empty: NaN, not a warning
        per_class = np.where(denominator > 0, 2.0 * pooled[..., 0] / denominator, np.nan)
        return np.nanmean(per_class, axis=-1) if per_class.size else per_class


def bootstrap_statistic(n: int, replicate: Callable[[np.ndarray], np.ndarray], estimate: Callable[[], float],
                        replicates: int = 2000, seed: int = 0, level: float = 0.95) -> Difference:
    """A seeded case bootstrap: draw ``(replicates, n)`` case indices, compute the statistic of every replicate,
    and take the percentile CI (the shared core of every paired bootstrap here).

    Args:
        n: cases resampled.
        replicate: ``(replicates, n)`` drawn case indices -> ``(replicates,)`` statistic (NaN / inf: the
            replicate is left out).
        estimate: the statistic on all cases.
        replicates, seed, level: bootstrap replicates, the draws' seed (``numpy.random.default_rng(seed)``) and
            CI level.
    """
    draws = np.random.default_rng(seed).integers(0, n, size=(replicates, n))
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # replicates whose statistic is undefined
        values = np.asarray(replicate(draws), dtype=np.float64)
        point = float(estimate())
    values = values[np.isfinite(values)]
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail]) if values.size else (np.nan, np.nan)
    return Difference(point, float(low), float(high), n, level, replicates)


def bootstrap_contrast(terms: list[tuple[float, np.ndarray]], replicates: int = 2000, seed: int = 0,
                       level: float = 0.95) -> Difference:
    """``Σ weight · DSCagg mean(counts)`` over terms that share their cases (same order), with a paired bootstrap CI.

    ``[(1, a), (-1, b)]`` is ``A - B``; a difference of forgetting drops is
    ``[(1, b_before), (-1, b_after), (-1, a_before), (1, a_after)]``.

    Raises:
        ValueError: no term, shapes differ, or there is no case.
    """
    arrays = [np.asarray(c, dtype=np.float64) for _, c in terms]
    if not arrays or any(x.shape != arrays[0].shape for x in arrays) or arrays[0].ndim != 3 \
            or arrays[0].shape[-1] != 3 or arrays[0].shape[0] == 0:
        raise ValueError(f"paired counts must all be (n_cases > 0, n_classes, 3), got {[x.shape for x in arrays]}")
    weights = [w for w, _ in terms]

    def contrast(draws: np.ndarray | slice) -> np.ndarray:
        return sum(w * dscagg_mean(x[draws]) for w, x in zip(weights, arrays, strict=True))

    return bootstrap_statistic(arrays[0].shape[0], contrast, lambda: float(contrast(slice(None))), replicates, seed,
                               level)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, replicates: int = 2000, seed: int = 0,
                     level: float = 0.95) -> Difference:
    """The DSCagg-mean difference ``A - B`` on the same cases, with a paired bootstrap CI.

    Args:
        a, b: counts ``(n_cases, n_classes, 3)`` of the two methods on the same cases, in the same order.
        replicates: bootstrap replicates. Default 2000. seed: the draws' seed. Default 0.
        level: CI level. Default 0.95.

    Raises:
        ValueError: shapes differ or there is no case.
    """
    return bootstrap_contrast([(1.0, a), (-1.0, b)], replicates, seed, level)


def bootstrap_relative(a: np.ndarray, b: np.ndarray, replicates: int = 2000, seed: int = 0,
                       level: float = 0.95) -> Difference:
    """The relative gain ``DSCagg mean(A) / DSCagg mean(B) - 1`` on the same cases, with a paired bootstrap CI.

    Same draws as :func:`paired_bootstrap` (the same ``seed`` resamples the same cases); replicates where B's
    DSCagg is 0 or undefined are left out.

    Args:
        a, b: counts ``(n_cases, n_classes, 3)`` of the two methods on the same cases, in the same order.
        replicates, seed, level: as for :func:`paired_bootstrap`.

    Raises:
        ValueError: shapes differ or there is no case.
    """
    a, b = (np.asarray(x, dtype=np.float64) for x in (a, b))
    if a.shape != b.shape or a.ndim != 3 or a.shape[-1] != 3 or a.shape[0] == 0:
        raise ValueError(f"paired counts must both be (n_cases > 0, n_classes, 3), got {a.shape} and {b.shape}")
    return bootstrap_statistic(a.shape[0], lambda draws: dscagg_mean(a[draws]) / dscagg_mean(b[draws]) - 1.0,
                               lambda: float(dscagg_mean(a) / dscagg_mean(b) - 1.0), replicates, seed, level)
