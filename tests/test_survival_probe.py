"""The prognosis head solved on frozen features (L-BFGS) and its penalty chosen by inner CV (pemma.survival.probe)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import UNETR

from pemma.survival.coxnet import fit_cox
from pemma.survival.heads import CoxHead, MTLRHead, TimeBins
from pemma.survival.metrics import c_index_or_none
from pemma.survival.model import PrognosisModel
from pemma.survival.probe import select_penalty, solve_head

D = 145  # pooled features of the tiny UNETR below


@pytest.fixture(scope="module")
def unetr() -> UNETR:
    torch.manual_seed(0)
    return UNETR(1, 3, img_size=32, feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4).eval()


def cohort(n: int, informative: int, seed: int, effect: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, D) standard-normal features; exponential event times with log hazard ``effect`` x the sum of the first
    ``informative`` features; about 30 % censored at random (continuous times: no ties)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D))
    log_hazard = effect * x[:, :informative].sum(axis=1)
    t = rng.exponential(1.0 / np.exp(log_hazard)) * 365.0
    e = (rng.random(n) > 0.3).astype(float)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), torch.tensor(e)


def model_with(unetr: UNETR, head: str, time: torch.Tensor, event: torch.Tensor, seed: int) -> PrognosisModel:
    torch.manual_seed(seed)
    bins = TimeBins.from_times(time.numpy(), event.numpy()) if head == "mtlr" else None
    model = PrognosisModel(unetr, CoxHead(D) if head == "cox" else MTLRHead(D, bins), ("ct",))
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    return model  # feature scaling: mean 0, std 1 (the features are used as they are)


def test_solved_cox_head_is_the_ridge_cox_optimum(unetr: UNETR) -> None:
    """Known answer: the head's objective (Efron = Breslow without ties, mean over the E events, + l2/2 ||w||^2)
    has coxnet's Newton solution with the per-case penalty l2 * E / N."""
    x, t, e = cohort(60, 3, seed=1)
    model = model_with(unetr, "cox", t, e, seed=0)
    l2 = 0.5
    result = solve_head(model, x, t, e, None, l2)
    beta = fit_cox(x.double().numpy(), t.numpy(), e.numpy(), l2 * float(e.sum()) / len(e))
    np.testing.assert_allclose(model.head.linear.weight.detach().numpy()[0], beta, atol=2e-4)
    assert result["iterations"] > 0 and result["objective"] >= result["loss"]


@pytest.mark.parametrize("head", ["cox", "mtlr"])
def test_solved_head_does_not_depend_on_its_random_start(unetr: UNETR, head: str) -> None:
    """Two random initialisations end at the same head (the penalised objective is strictly convex); a few
    optimiser steps from each would not."""
    x, t, e = cohort(50, 3, seed=2)
    weights = []
    for seed in (0, 1):
        model = model_with(unetr, head, t, e, seed)
        solve_head(model, x, t, e, None, 1.0)
        weights.append(model.head.linear.weight.detach().clone())
    start_gap = (model_with(unetr, head, t, e, 0).head.linear.weight
                 - model_with(unetr, head, t, e, 1).head.linear.weight).abs().max()
    assert start_gap > 0.05
    torch.testing.assert_close(weights[0], weights[1], atol=1e-3, rtol=1e-2)


def test_select_penalty_leaves_the_model_and_picks_the_best_out_of_fold_c_index(unetr: UNETR) -> None:
    x, t, e = cohort(80, 3, seed=3, effect=2.0)
    model = model_with(unetr, "cox", t, e, seed=0)
    before = [p.detach().clone() for p in model.head.parameters()]
    grid = (0.01, 1.0, 100.0, 0.1)
    chosen, cv, folds = select_penalty(model, x, t, e, None, grid, folds=4, seed=0)
    assert folds == 4
    assert all(torch.equal(a, b) for a, b in zip(before, model.head.parameters(), strict=True))
    assert list(cv) == sorted(grid)
    assert max((c, l2) for l2, c in cv.items())[1] == chosen
    # 3 informative features of 145, 80 cases: the out-of-fold risk ranks the cases, and so does the head solved at
    # the chosen penalty on new cases of the same population
    assert cv[chosen] > 0.6, cv
    solve_head(model, x, t, e, None, chosen)
    xt, tt, et = cohort(300, 3, seed=4, effect=2.0)
    with torch.no_grad():
        risk = model.risk(model.from_features(xt)).numpy()
    assert c_index_or_none(tt.numpy(), et.numpy(), risk) > 0.6


def test_select_penalty_checks_its_grid(unetr: UNETR) -> None:
    x, t, e = cohort(20, 1, seed=5)
    model = model_with(unetr, "cox", t, e, seed=0)
    with pytest.raises(ValueError, match="penalty grid"):
        select_penalty(model, x, t, e, None, (0.0, 1.0))
