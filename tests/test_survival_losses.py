"""Cox and MTLR losses on hand-computed answers, batches without events, and the survival heads."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from pemma.survival.heads import CoxHead, MTLRHead, TimeBins, build_head, mtlr_risk, mtlr_survival
from pemma.survival.losses import cox_neg_partial_log_likelihood as cox_nll
from pemma.survival.losses import mtlr_neg_log_likelihood, mtlr_targets


def lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def test_cox_three_samples_closed_form() -> None:
    h = torch.tensor([0.3, -0.2, 0.5])
    # events at t=1 (subject 0) and t=3 (subject 2); subject 1 censored at t=2
    loss = cox_nll(h, torch.tensor([1, 0, 1]), torch.tensor([1.0, 2.0, 3.0]), reduction="sum")
    expected = -((0.3 - lse(0.3, -0.2, 0.5)) + (0.5 - 0.5))
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    mean = cox_nll(h, torch.tensor([1, 0, 1]), torch.tensor([1.0, 2.0, 3.0]))
    assert float(mean) == pytest.approx(expected / 2, abs=1e-6)


@pytest.mark.parametrize("order", [[0, 1, 2], [1, 0, 2], [2, 1, 0]])
def test_cox_censoring_tied_with_event_is_at_risk_in_any_order(order: list[int]) -> None:
    h = torch.tensor([0.3, -0.2, 0.5])
    event, time = torch.tensor([0, 1, 1]), torch.tensor([1.0, 1.0, 2.0])  # censored at the event's time
    p = torch.tensor(order)
    loss = cox_nll(h[p], event[p], time[p], reduction="sum")
    expected = -((-0.2 - lse(0.3, -0.2, 0.5)) + 0.0)  # the censored subject is in the risk set
    assert float(loss) == pytest.approx(expected, abs=1e-6)


def test_cox_tied_events_efron_and_breslow() -> None:
    h = torch.tensor([0.4, -0.3, 0.1])
    event, time = torch.tensor([1, 1, 0]), torch.tensor([2.0, 2.0, 5.0])
    a, b, c = (math.exp(v) for v in h.tolist())
    breslow = -((0.4 - 0.3) - 2 * math.log(a + b + c))
    efron = -((0.4 - 0.3) - math.log(a + b + c) - math.log(a + b + c - 0.5 * (a + b)))
    assert float(cox_nll(h, event, time, ties="breslow", reduction="sum")) == pytest.approx(breslow, abs=1e-6)
    assert float(cox_nll(h, event, time, ties="efron", reduction="sum")) == pytest.approx(efron, abs=1e-6)


@pytest.mark.parametrize("case", range(3))
def test_cox_agrees_with_stored_torchsurv_without_ties(case: int) -> None:
    """Stored torchsurv values (tests/reference/make_reference.py): run even where torchsurv is absent."""
    reference = json.loads((Path(__file__).parent / "reference" / "torchsurv_cox.json").read_text())
    ref = reference["cox_no_ties"][case]
    h = torch.tensor(ref["log_hazard"], dtype=torch.float64)
    event, time = torch.tensor(ref["event"], dtype=torch.bool), torch.tensor(ref["time"], dtype=torch.float64)
    assert len(set(ref["time"])) == len(ref["time"]) and event.any()  # no ties, at least one event
    ours = cox_nll(h, event, time, reduction="sum")
    assert float(ours) == pytest.approx(ref["neg_partial_log_likelihood_sum"], rel=1e-5)


def test_cox_agrees_with_torchsurv_without_ties() -> None:
    torchsurv_cox = pytest.importorskip("torchsurv.loss.cox")
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        h = torch.randn(9, generator=g)
        time = torch.randperm(9, generator=g).float() + 1
        event = torch.rand(9, generator=g) < 0.6
        event[0] = True
        ours = cox_nll(h, event, time, reduction="sum")
        theirs = torchsurv_cox.neg_partial_log_likelihood(h, event, time, reduction="sum")
        assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_cox_batch_without_events_is_zero_with_a_gradient() -> None:
    h = torch.tensor([0.2, -1.0, 3.0], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either
        loss = cox_nll(h, torch.zeros(3), torch.tensor([1.0, 2.0, 3.0]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert h.grad is not None and torch.equal(h.grad, torch.zeros(3))
    one = torch.tensor([0.7], requires_grad=True)  # one sample with an event: log(e^h / e^h) = 0
    assert cox_nll(one, torch.tensor([1]), torch.tensor([4.0])).item() == pytest.approx(0.0, abs=1e-7)


def test_cox_is_finite_for_large_log_hazards() -> None:
    h = torch.tensor([200.0, -150.0, 90.0], requires_grad=True)
    loss = cox_nll(h, torch.tensor([1, 1, 0]), torch.tensor([1.0, 2.0, 3.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(h.grad).all()


def test_mtlr_targets_intervals() -> None:
    bins = torch.tensor([10.0, 20.0])
    time = torch.tensor([5.0, 10.0, 15.0, 25.0, 15.0, 25.0])
    event = torch.tensor([1, 1, 1, 1, 0, 0])
    expected = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1], [0, 0, 1]], dtype=torch.float32)
    assert torch.equal(mtlr_targets(time, event, bins), expected)


def test_mtlr_two_bin_known_answers() -> None:
    """One boundary, two intervals: logits (psi, 0), so P(first interval) = sigmoid(psi)."""
    head = MTLRHead(1, TimeBins((100.0,)))
    with torch.no_grad():
        head.linear.weight.fill_(1.0)
        head.linear.bias.zero_()
    psi = 0.8
    logits = head(torch.tensor([[psi]] * 4))
    assert torch.allclose(logits, torch.tensor([[psi, 0.0]] * 4))
    time = torch.tensor([50.0, 150.0, 50.0, 150.0])
    event = torch.tensor([1, 1, 0, 0])
    targets = mtlr_targets(time, event, head.boundaries)
    per_sample = [mtlr_neg_log_likelihood(logits[i:i + 1], targets[i:i + 1]).item() for i in range(4)]
    softplus = math.log1p(math.exp(psi))
    assert per_sample == pytest.approx([softplus - psi, softplus, 0.0, softplus], abs=1e-6)
    assert head.loss(logits, time, event).item() == pytest.approx(sum(per_sample) / 4, abs=1e-6)
    surv = mtlr_survival(logits)
    sig = 1 / (1 + math.exp(-psi))
    assert surv[0].tolist() == pytest.approx([1.0, 1 - sig], abs=1e-6)
    assert mtlr_risk(logits)[0].item() == pytest.approx(sig, abs=1e-6)


def test_mtlr_risk_orders_by_early_mass_and_survival_is_monotone() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [-3.0, -2.0, -1.0, 0.0]])
    risk = mtlr_risk(logits)
    assert risk[0] > risk[1] > risk[2]
    surv = mtlr_survival(logits)
    assert torch.all(surv[:, 1:] <= surv[:, :-1] + 1e-7) and torch.allclose(surv[:, 0], torch.ones(3))


def test_time_bins_from_event_quantiles() -> None:
    bins = TimeBins.from_times([10, 20, 30, 40, 50, 60, 70, 80, 90, 1000], [1] * 9 + [0])
    assert bins.boundaries == (10.0, 50.0, 90.0)  # ceil(sqrt(9)) = 3 quantiles of the event times
    assert TimeBins.from_times([5, 7], [0, 0]).boundaries == (5.0, 7.0)  # no event: all times
    with pytest.raises(ValueError):
        TimeBins((3.0, 2.0))


def test_heads_shapes_and_gradients() -> None:
    x = torch.rand(5, 8, requires_grad=True)
    time, event = torch.tensor([1.0, 2, 3, 4, 5]), torch.tensor([1, 0, 1, 1, 0])
    for head in (build_head("cox", 8), build_head("mtlr", 8, TimeBins((2.0, 4.0)))):
        out = head(x)
        assert head.risk(out).shape == (5,)
        head.loss(out, time, event).backward()
    assert isinstance(build_head("cox", 8), CoxHead) and x.grad is not None
    with pytest.raises(ValueError):
        build_head("deephit", 8)
