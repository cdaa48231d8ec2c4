"""Ridge-penalised Cox regression on a few named features, the penalty chosen by inner cross-validation.

The model is the proportional-hazards model ``h(t | x) = h0(t) exp(beta . z)`` on standardised covariates
``z = (x - mean) / std`` (training mean and sample standard deviation, ``ddof=1``; constant columns get std 1).
:func:`fit_cox` maximises Breslow's partial log-likelihood (ties: Breslow) minus ``n * l2 / 2 * ||beta||^2``
by Newton-Raphson with step halving. That is lifelines' ``CoxPHFitter(penalizer=l2, l1_ratio=0)`` objective
(which standardises the same way), so without tied event times the coefficients agree (tested).

:meth:`PenalisedCox.fit_cv` picks ``l2`` from a grid by the C-index of the *cross-validated linear predictor*:
each fold's cases are scored by the model fitted on the other folds, and one Harrell C is computed over all
out-of-fold scores (more stable than averaging per-fold C-indices of a handful of cases). The folds are
stratified by event and seeded; ties in the C-index go to the larger penalty (the simpler model).

Example:
    >>> model = PenalisedCox.fit_cv(x, time, event, names=["log_gtvp_ml", "log_suvmax"], grid=(0.01, 0.1, 1.0))
    >>> model.l2, model.cv_c_index, model.risk(x_test)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pemma.survival.chain_config import PENALTY_GRID
from pemma.survival.metrics import c_index_or_none


def _check(x: np.ndarray, time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape(len(x), -1)
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event, dtype=np.float64).reshape(-1)
    if not (len(x) == len(t) == len(e)):
        raise ValueError(f"x has {len(x)} rows, time {len(t)}, event {len(e)}")
    if not np.isfinite(x).all():
        raise ValueError("covariates must be finite (encode missing values before fitting)")
    return x, t, e


def partial_likelihood(z: np.ndarray, time: np.ndarray, event: np.ndarray,
                       beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Breslow's log partial likelihood, its gradient and Hessian in ``beta``.

    Args:
        z: (N, D) covariates. time, event: (N,). beta: (D,).

    Returns:
        (log-likelihood, gradient (D,), Hessian (D, D)).
    """
    order = np.argsort(-time, kind="stable")  # latest first: a risk set is a prefix
    zs, ts, es = z[order], time[order], event[order]
    eta = zs @ beta
    shift = eta.max() if eta.size else 0.0
    w = np.exp(eta - shift)
    s0 = np.cumsum(w)
    s1 = np.cumsum(w[:, None] * zs, axis=0)
    s2 = np.cumsum(w[:, None, None] * zs[:, :, None] * zs[:, None, :], axis=0)
    # the risk set of a case includes every case with the same time: take the cumulative sums at the tie's end
    last = np.searchsorted(-ts, -ts, side="right") - 1
    ev = es > 0
    s0e, s1e, s2e = s0[last][ev], s1[last][ev], s2[last][ev]
    mean = s1e / s0e[:, None]
    loglik = float((eta[ev] - shift - np.log(s0e)).sum())
    grad = (zs[ev] - mean).sum(axis=0)
    hess = -(s2e / s0e[:, None, None] - mean[:, :, None] * mean[:, None, :]).sum(axis=0)
    return loglik, grad, hess


def fit_cox(z: np.ndarray, time: np.ndarray, event: np.ndarray, l2: float, max_iter: int = 100,
            tol: float = 1e-10, weights: np.ndarray | None = None) -> np.ndarray:
    """Coefficients maximising ``loglik(beta) - n * l2 / 2 * sum_j w_j beta_j^2`` (Newton-Raphson, step halving).

    Args:
        z: (N, D) covariates (standardise them first for a fair penalty). time, event: (N,).
        l2: ridge penalty per case, > 0 keeps the problem strictly concave (no infinite coefficients).
        max_iter, tol: Newton iterations and the stop on the objective's change.
        weights: (D,) penalty factor per coefficient (glmnet's ``penalty.factor``; 0 = unpenalised). Default 1.

    Returns:
        (D,) coefficients.
    """
    z, t, e = _check(z, time, event)
    n, d = z.shape
    beta = np.zeros(d)
    if not e.any() or d == 0:
        return beta
    w = np.ones(d) if weights is None else np.asarray(weights, dtype=np.float64).reshape(d)

    def objective(b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        ll, g, h = partial_likelihood(z, t, e, b)
        return ll - 0.5 * n * l2 * float((w * b) @ b), g - n * l2 * w * b, h - n * l2 * np.diag(w)

    value, grad, hess = objective(beta)
    for _ in range(max_iter):
        try:
            step = np.linalg.solve(-hess, grad)
        except np.linalg.LinAlgError:
            step = grad / max(1.0, float(np.abs(np.diag(hess)).max()))
        size = 1.0
        while True:
            candidate = beta + size * step
            new = objective(candidate)
            if np.isfinite(new[0]) and np.isfinite(new[1]).all() and new[0] >= value - 1e-12:
                break
            if size < 1e-6:  # no finite improvement along the step (e.g. an unpenalised coefficient on separable
                return beta  # data, whose likelihood only approaches its supremum): the current fit is the answer
            size /= 2
        change = new[0] - value
        beta, (value, grad, hess) = candidate, new
        if abs(change) < tol * max(1.0, abs(value)):
            break
    return beta


def stratified_folds(event: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(N,) fold index of every case: events and censored cases each dealt round-robin after a seeded shuffle."""
    e = np.asarray(event).reshape(-1) > 0
    rng = np.random.default_rng([seed, 29])
    out = np.zeros(len(e), dtype=int)
    start = 0
    for group in (np.flatnonzero(e), np.flatnonzero(~e)):
        shuffled = rng.permutation(group)
        out[shuffled] = (np.arange(len(shuffled)) + start) % folds
        start += len(shuffled)
    return out


@dataclass
class PenalisedCox:
    """A fitted ridge Cox model: feature names, standardisation, coefficients and how ``l2`` was chosen.

    Attributes:
        names: feature names (D). mean, std: training standardisation (D,). beta: coefficients on the
            standardised scale (D,). l2: the penalty used. cv: ``{l2: cross-validated C-index}`` of the grid
            (empty when ``l2`` was given). folds: inner folds used.
    """

    names: list[str]
    mean: np.ndarray
    std: np.ndarray
    beta: np.ndarray
    l2: float
    cv: dict[float, float | None] = field(default_factory=dict)
    folds: int = 0
    weights: np.ndarray | None = None
    #: out-of-fold linear predictor of the training cases at the chosen ``l2`` (after :meth:`fit_cv`; not saved)
    oof: np.ndarray | None = field(default=None, repr=False)

    @property
    def coef(self) -> np.ndarray:
        """Coefficients per unit of the raw features (lifelines' ``params_``)."""
        return self.beta / self.std

    @property
    def cv_c_index(self) -> float | None:
        return self.cv.get(self.l2)

    def risk(self, x: np.ndarray) -> np.ndarray:
        """(N,) linear predictor ``coef . x`` on the raw features (higher = earlier relapse).

        Not centred: it ranks cases exactly as ``beta . z`` does, and out-of-fold predictors of models fitted on
        different folds are pooled without a fold-specific centring offset."""
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if x.shape[1] != len(self.names):
            raise ValueError(f"expected {len(self.names)} features ({', '.join(self.names)}), got {x.shape[1]}")
        return x @ self.coef

    @classmethod
    def fit(cls, x: np.ndarray, time: np.ndarray, event: np.ndarray, l2: float,
            names: Sequence[str] | None = None, weights: Sequence[float] | None = None) -> PenalisedCox:
        """Standardise ``x`` (N, D) and fit with penalty ``l2`` (``weights``: per-feature factors, default 1)."""
        x, t, e = _check(x, time, event)
        mean = x.mean(axis=0)
        std = x.std(axis=0, ddof=1) if len(x) > 1 else np.ones(x.shape[1])
        std = np.where(std > 1e-12, std, 1.0)
        w = None if weights is None else np.asarray(weights, dtype=np.float64)
        beta = fit_cox((x - mean) / std, t, e, l2, weights=w)
        names = list(names) if names is not None else [f"x{i}" for i in range(x.shape[1])]
        return cls(names, mean, std, beta, float(l2), weights=w)

    @classmethod
    def fit_cv(cls, x: np.ndarray, time: np.ndarray, event: np.ndarray, names: Sequence[str] | None = None,
               grid: Sequence[float] = PENALTY_GRID, folds: int = 5, seed: int = 0,
               weights: Sequence[float] | None = None) -> PenalisedCox:
        """Choose ``l2`` from ``grid`` by the C-index of the cross-validated linear predictor, then refit on all.

        Args:
            x: (N, D) raw features. time, event: (N,).
            names: feature names. grid: candidate penalties (> 0). folds: inner folds (at least 2; fewer when
                there are fewer events). seed: fold assignment seed. weights: per-feature penalty factors.
        """
        x, t, e = _check(x, time, event)
        grid = sorted({float(g) for g in grid})
        if not grid or grid[0] <= 0:
            raise ValueError(f"penalty grid must hold values > 0, got {grid}")
        k = max(2, min(int(folds), int(e.sum()), len(t)))
        fold = stratified_folds(e, k, seed)
        cv: dict[float, float | None] = {}
        oof: dict[float, np.ndarray] = {}
        for l2 in grid:
            out_of_fold = np.zeros(len(t))
            for f in range(k):
                train = fold != f
                if not (fold == f).any() or not e[train].any():
                    continue
                out_of_fold[fold == f] = cls.fit(x[train], t[train], e[train], l2, weights=weights).risk(x[fold == f])
            cv[l2], oof[l2] = c_index_or_none(t, e, out_of_fold), out_of_fold
        scored = [(c, l2) for l2, c in cv.items() if c is not None]
        best = max(scored)[1] if scored else grid[-1]  # ties: the larger penalty (max on (c, l2))
        model = cls.fit(x, t, e, best, names, weights)
        model.cv, model.folds, model.oof = cv, k, oof[best]
        return model

    def to_dict(self) -> dict[str, Any]:
        return {"names": self.names, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "beta": self.beta.tolist(), "coef": self.coef.tolist(), "l2": self.l2, "folds": self.folds,
                "cv": [{"l2": k, "c_index": v} for k, v in self.cv.items()],
                "weights": None if self.weights is None else self.weights.tolist()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PenalisedCox:
        cv = {float(r["l2"]): (None if r["c_index"] is None else float(r["c_index"])) for r in raw.get("cv", [])}
        return cls(list(raw["names"]), np.asarray(raw["mean"], float), np.asarray(raw["std"], float),
                   np.asarray(raw["beta"], float), float(raw["l2"]), cv, int(raw.get("folds", 0)),
                   None if raw.get("weights") is None else np.asarray(raw["weights"], float))
