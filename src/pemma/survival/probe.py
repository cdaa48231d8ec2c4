"""The prognosis head solved on frozen image features, its L2 penalty chosen by inner cross-validation.

With the encoder frozen, a stage's objective (survival loss of a linear head on standardised pooled features, plus
``l2 / 2 * ||W||^2``) is convex in the head's weights; for ``l2 > 0`` strictly, so it has one optimum whatever the
starting weights (a stage that adds EHR trains the clinical projection too: head and projection compose bilinearly,
so there the solver finds a stationary point from the previous stage's head and a zero projection). :func:`solve_head`
finds it by full-batch L-BFGS (strong-Wolfe line search): the fitted head depends
on the data and the penalty only, not on a learning rate, a number of steps or the random initialisation (a fixed
number of optimiser steps from a random head stops wherever the schedule ends, so the penalty is not what decides the
fit, and choosing it by cross-validation would be choosing among unfinished fits).

:func:`select_penalty` picks ``l2`` from a grid the way :mod:`pemma.survival.coxnet` does for the lesion chain: each
inner fold's cases are scored by the head solved on the other folds, one Harrell C-index is computed over all
out-of-fold scores, and ties go to the larger penalty. Folds are stratified by event and seeded. The feature scaling
(mean / std of the training cases) is unsupervised and shared by the folds.

A stage that trains the encoder too starts from the solved head (linear probing, then fine-tuning: Kumar et al.,
"Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution", ICLR 2022).

Example:
    >>> l2, cv, folds = select_penalty(model, feats, time, event, None, grid=(0.1, 1.0, 10.0), folds=5, seed=0)
    >>> solve_head(model, feats, time, event, None, l2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pemma.survival.coxnet import stratified_folds
from pemma.survival.metrics import c_index_or_none
from pemma.survival.model import PrognosisModel


def probe_parameters(model: PrognosisModel) -> tuple[list[torch.nn.Parameter], list[torch.Tensor]]:
    """(trainable parameters of the head and clinical projection, the penalised weight matrices among them)."""
    parts = [model.head] + ([model.clinical] if model.clinical is not None else [])
    params = [p for part in parts for p in part.parameters() if p.requires_grad]
    penalised = [w for w in (model.head.linear.weight, getattr(model.clinical, "weight", None))
                 if w is not None and w.requires_grad]
    return params, penalised


def weight_penalty(penalised: Sequence[torch.Tensor], l2: float) -> torch.Tensor | float:
    """``l2 / 2`` x the squared norm of the penalised weight matrices (0 when there are none or ``l2`` is 0)."""
    return 0.5 * l2 * sum((w ** 2).sum() for w in penalised) if penalised and l2 else 0.0


def _state(params: Sequence[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _restore(params: Sequence[torch.nn.Parameter], state: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, value in zip(params, state, strict=True):
            p.copy_(value)


def objective(model: PrognosisModel, feats: torch.Tensor, time: torch.Tensor, event: torch.Tensor,
              clinical: torch.Tensor | None, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(survival loss + ``l2 / 2`` x squared norm of the penalised weights, the survival loss) on (N, D) features."""
    loss = model.head.loss(model.from_features(feats, clinical), time, event)
    return loss + weight_penalty(probe_parameters(model)[1], l2), loss


def solve_head(model: PrognosisModel, feats: torch.Tensor, time: torch.Tensor, event: torch.Tensor,
               clinical: torch.Tensor | None, l2: float, max_iter: int = 200) -> dict[str, Any]:
    """Minimise :func:`objective` over the trainable head (and clinical projection) by full-batch L-BFGS, in place.

    Args:
        model: the prognosis model (its encoder is not run: ``feats`` are its raw pooled features).
        feats: (N, D) raw pooled features. time, event: (N,). clinical: (N, C) or None.
        l2: the penalty (>= 0; 0 on separable data stops at ``max_iter`` with growing weights).
        max_iter: most L-BFGS iterations.

    Returns:
        ``{"iterations", "loss" (survival loss at the solution), "objective"}``.
    """
    params, _ = probe_parameters(model)
    if not params:
        raise ValueError("nothing to solve: the head has no trainable parameter")
    was_training = model.training
    model.eval()
    optimiser = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
                                  tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        total, _ = objective(model, feats, time, event, clinical, l2)
        total.backward()
        return total

    with torch.enable_grad():
        optimiser.step(closure)
    with torch.no_grad():
        total, loss = objective(model, feats, time, event, clinical, l2)
    for p in params:
        p.grad = None
    model.train(was_training)
    return {"iterations": int(optimiser.state[params[0]].get("n_iter", 0)), "loss": float(loss),
            "objective": float(total)}


@torch.no_grad()
def _risk(model: PrognosisModel, feats: torch.Tensor, clinical: torch.Tensor | None) -> np.ndarray:
    return model.risk(model.from_features(feats, clinical)).float().cpu().numpy()


def select_penalty(model: PrognosisModel, feats: torch.Tensor, time: torch.Tensor, event: torch.Tensor,
                   clinical: torch.Tensor | None, grid: Sequence[float], folds: int = 5, seed: int = 0,
                   max_iter: int = 200) -> tuple[float, dict[float, float | None], int]:
    """Choose ``l2`` from ``grid`` by the C-index of the out-of-fold risks of heads solved on the other folds.

    Every fit starts from the model's current head (restored afterwards, so the model is unchanged).

    Args:
        model, feats, time, event, clinical: as for :func:`solve_head` (the stage's training cases).
        grid: candidate penalties (> 0). folds: inner folds (at least 2; fewer when there are fewer events).
        seed: fold assignment seed. max_iter: L-BFGS iterations per fit.

    Returns:
        (chosen ``l2``, ``{l2: cross-validated C-index}`` (None where undefined), folds used). Ties: the larger
        penalty.
    """
    grid = sorted({float(g) for g in grid})
    if not grid or grid[0] <= 0:
        raise ValueError(f"penalty grid must hold values > 0, got {grid}")
    t, e = time.cpu().numpy(), event.cpu().numpy()
    k = max(2, min(int(folds), int(e.sum()), len(t)))
    fold = stratified_folds(e, k, seed)
    params, _ = probe_parameters(model)
    start = _state(params)
    cv: dict[float, float | None] = {}
    try:
        for l2 in grid:
            out_of_fold = np.zeros(len(t))
            for f in range(k):
                held, kept = fold == f, fold != f
                if not held.any() or not e[kept].any():
                    continue
                _restore(params, start)
                idx = torch.as_tensor(np.flatnonzero(kept), device=feats.device)
                rest = torch.as_tensor(np.flatnonzero(held), device=feats.device)
                clin = None if clinical is None else clinical[idx]
                solve_head(model, feats[idx], time[idx], event[idx], clin, l2, max_iter)
                out_of_fold[held] = _risk(model, feats[rest], None if clinical is None else clinical[rest])
            cv[l2] = c_index_or_none(t, e, out_of_fold)
    finally:
        _restore(params, start)
    scored = [(c, l2) for l2, c in cv.items() if c is not None]
    return (max(scored)[1] if scored else grid[-1]), cv, k
