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

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

_INFINITE = 1e200  # a bound above this came from an infinite replicate (no DSCagg or C-index statistic is near it)


@dataclass(frozen=True)
class Difference:
    """A difference of DSCagg means (A - B) with its bootstrap confidence interval.

    Args:
        estimate: the difference on all cases. low, high: the CI bounds (percentile method).
        n_cases: cases resampled. level: CI level (0.95). replicates: bootstrap replicates.
        relative: a relative gain (``A / B - 1``, a fraction: printed as a percentage), not a difference.
    """

    estimate: float
    low: float
    high: float
    n_cases: int
    level: float = 0.95
    replicates: int = 2000
    relative: bool = False

    def verdict(self, margin: float = 0.0) -> bool | None:
        """True when the whole CI is above ``margin``, False when it is wholly below, None (not shown) otherwise."""
        if self.low > margin:
            return True
        if self.high < margin:
            return False
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: a bound that is infinite (or undefined) is null, since JSON has no infinity."""
        bounds = [b if np.isfinite(b) else None for b in (self.low, self.high)]
        return {"estimate": self.estimate, "ci95": bounds, "n_cases": self.n_cases, "replicates": self.replicates}


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
        replicate: ``(replicates, n)`` drawn case indices -> ``(replicates,)`` statistic. A NaN replicate (the
            statistic is undefined on those cases) is left out; an infinite one is kept, so a ratio whose reference
            is 0 in many replicates gives an infinite bound (not shown), not a CI of the finite replicates only.
        estimate: the statistic on all cases.
        replicates, seed, level: bootstrap replicates, the draws' seed (``numpy.random.default_rng(seed)``) and
            CI level.
    """
    draws = np.random.default_rng(seed).integers(0, n, size=(replicates, n))
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # replicates whose statistic is undefined
        values = np.asarray(replicate(draws), dtype=np.float64)
        point = float(estimate())
    values = values[~np.isnan(values)]
    tail = (1.0 - level) / 2 * 100
    if not values.size:
        return Difference(point, np.nan, np.nan, n, level, replicates)
    # np.percentile interpolates inf with a finite neighbour to NaN: clip, then read a clipped bound back as inf
    big = np.finfo(np.float64).max / 4
    bounds = np.percentile(np.clip(values, -big, big), [tail, 100 - tail])
    low, high = (float(np.sign(b) * np.inf) if abs(b) > _INFINITE else float(b) for b in bounds)
    return Difference(point, low, high, n, level, replicates)


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
    DSCagg is undefined (or both are 0) are left out, and where only B's is 0 the gain is infinite: enough of
    those make the upper bound infinite, and the verdict "not shown".

    Args:
        a, b: counts ``(n_cases, n_classes, 3)`` of the two methods on the same cases, in the same order.
        replicates, seed, level: as for :func:`paired_bootstrap`.

    Raises:
        ValueError: shapes differ or there is no case.
    """
    a, b = (np.asarray(x, dtype=np.float64) for x in (a, b))
    if a.shape != b.shape or a.ndim != 3 or a.shape[-1] != 3 or a.shape[0] == 0:
        raise ValueError(f"paired counts must both be (n_cases > 0, n_classes, 3), got {a.shape} and {b.shape}")
    gain = bootstrap_statistic(a.shape[0], lambda draws: dscagg_mean(a[draws]) / dscagg_mean(b[draws]) - 1.0,
                               lambda: float(dscagg_mean(a) / dscagg_mean(b) - 1.0), replicates, seed, level)
    return dataclasses.replace(gain, relative=True)
