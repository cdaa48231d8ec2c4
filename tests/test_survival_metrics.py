"""Survival metrics against lifelines: Harrell's C (ties in time and in risk), Kaplan–Meier, log-rank.

The lifelines values are stored in ``tests/reference/lifelines_survival.json`` (written by
``tests/reference/make_reference.py``), so the comparison runs without lifelines; where lifelines is
installed the ``*_live`` tests compare against it directly as well.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pemma.survival.metrics import (
    bootstrap_c_index,
    concordance_index,
    kaplan_meier,
    logrank_test,
    plot_risk_groups,
)

try:
    import lifelines
except ImportError:  # the stored reference values still run
    lifelines = None

REFERENCE = json.loads((Path(__file__).parent / "reference" / "lifelines_survival.json").read_text())
needs_lifelines = pytest.mark.skipif(lifelines is None, reason="lifelines not installed (stored values still tested)")

# fixed data with every kind of tie: equal event times, an event and a censoring at the same time,
# equal risks inside and across time groups
TIME = np.array([5, 5, 5, 8, 8, 10, 12, 12, 15, 20, 20, 30], dtype=float)
EVENT = np.array([1, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0])
RISK = np.array([2.0, 2.0, 1.5, 1.0, 1.0, 3.0, 0.5, 2.0, 0.2, 0.5, 0.1, 0.5])


def _arrays(case: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.asarray(case["time"], dtype=float), np.asarray(case["event"], dtype=bool), np.asarray(case["risk"])


def _ll_cindex(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    from lifelines.utils import concordance_index as ll_cindex

    return float(ll_cindex(time, -risk, event))  # lifelines wants survival-like scores


def test_reference_inputs_are_the_test_data() -> None:
    for key in ("ties", "kaplan_meier", "logrank"):
        np.testing.assert_array_equal(REFERENCE[key]["time"], TIME)
        np.testing.assert_array_equal(REFERENCE[key]["event"], EVENT)
    np.testing.assert_array_equal(REFERENCE["ties"]["risk"], RISK)
    assert len(REFERENCE["random_ties"]) == 5 and REFERENCE["package"].startswith("lifelines ")


def test_c_index_matches_lifelines_with_ties() -> None:
    ours = concordance_index(TIME, EVENT, RISK)
    assert ours == pytest.approx(REFERENCE["ties"]["c_index"], abs=1e-6)
    assert 0.0 < ours < 1.0 and ours != pytest.approx(0.5)


@needs_lifelines
def test_c_index_matches_lifelines_with_ties_live() -> None:
    assert concordance_index(TIME, EVENT, RISK) == pytest.approx(_ll_cindex(TIME, EVENT, RISK), abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_c_index_matches_lifelines_random_with_ties(seed: int) -> None:
    case = REFERENCE["random_ties"][seed]
    time, event, risk = _arrays(case)
    assert len(np.unique(time)) < len(time) and len(np.unique(risk)) < len(risk)  # many ties
    assert concordance_index(time, event, risk) == pytest.approx(case["c_index"], abs=1e-6)


@needs_lifelines
@pytest.mark.parametrize("seed", range(5))
def test_c_index_matches_lifelines_random_with_ties_live(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    time = rng.integers(1, 15, n).astype(float)  # many tied times
    event = rng.uniform(size=n) < 0.6
    risk = np.round(rng.normal(size=n) - 0.1 * time, 1)  # many tied risks, informative
    assert concordance_index(time, event, risk) == pytest.approx(_ll_cindex(time, event, risk), abs=1e-6)


def test_c_index_direction_and_constant_scores() -> None:
    time, event = [1.0, 2.0, 3.0, 4.0], [1, 1, 1, 0]
    assert concordance_index(time, event, [4.0, 3.0, 2.0, 1.0]) == 1.0  # higher risk relapses earlier
    assert concordance_index(time, event, [1.0, 2.0, 3.0, 4.0]) == 0.0
    assert concordance_index(time, event, [1.0, 1.0, 1.0, 1.0]) == 0.5


def test_c_index_without_comparable_pairs_raises() -> None:
    with pytest.raises(ValueError, match="no comparable pairs"):
        concordance_index([1.0, 2.0], [0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length|values"):
        concordance_index([1.0, 2.0], [1, 0], [0.1])


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    time, event, risk = _arrays(REFERENCE["continuous"])  # exponential times, noisy informative risk (n=80)
    a = bootstrap_c_index(time, event, risk, n_bootstrap=200, seed=7)
    b = bootstrap_c_index(time, event, risk, n_bootstrap=200, seed=7)
    c = bootstrap_c_index(time, event, risk, n_bootstrap=200, seed=8)
    assert (a.low, a.high) == (b.low, b.high) and (a.low, a.high) != (c.low, c.high)
    assert a.low < a.c_index < a.high and 0.5 < a.c_index < 1.0
    assert a.c_index == pytest.approx(REFERENCE["continuous"]["c_index"], abs=1e-6)
    if lifelines is not None:
        assert a.c_index == pytest.approx(_ll_cindex(time, event, risk), abs=1e-6)
    assert "95% CI" in str(a) and a.events == int(event.sum())


def test_kaplan_meier_matches_lifelines() -> None:
    times, surv = kaplan_meier(TIME, EVENT)
    np.testing.assert_allclose(times, REFERENCE["kaplan_meier"]["times"], atol=0)
    np.testing.assert_allclose(surv, REFERENCE["kaplan_meier"]["survival"], atol=1e-10)


@needs_lifelines
def test_kaplan_meier_matches_lifelines_live() -> None:
    from lifelines import KaplanMeierFitter

    times, surv = kaplan_meier(TIME, EVENT)
    kmf = KaplanMeierFitter().fit(TIME, EVENT)
    expected = kmf.survival_function_at_times(times).to_numpy()
    np.testing.assert_allclose(surv, expected, atol=1e-10)


def test_logrank_matches_lifelines() -> None:
    group = RISK > np.median(RISK)
    np.testing.assert_array_equal(group, np.asarray(REFERENCE["logrank"]["group"], dtype=bool))
    ours = logrank_test(TIME, EVENT, group)
    assert ours.statistic == pytest.approx(REFERENCE["logrank"]["statistic"], rel=1e-9)
    assert ours.p_value == pytest.approx(REFERENCE["logrank"]["p_value"], rel=1e-9)
    assert math.isnan(logrank_test(TIME, EVENT, np.ones_like(group)).p_value)  # one group only


@needs_lifelines
def test_logrank_matches_lifelines_live() -> None:
    from lifelines.statistics import logrank_test as ll_logrank

    group = RISK > np.median(RISK)
    ours = logrank_test(TIME, EVENT, group)
    theirs = ll_logrank(TIME[group], TIME[~group], EVENT[group], EVENT[~group])
    assert ours.statistic == pytest.approx(theirs.test_statistic, rel=1e-9)
    assert ours.p_value == pytest.approx(theirs.p_value, rel=1e-9)


def test_plot_risk_groups_writes_png(tmp_path: Path) -> None:
    path = tmp_path / "km" / "plot.png"
    result = plot_risk_groups(TIME, EVENT, RISK, threshold=1.0, path=path, title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.p_value == pytest.approx(logrank_test(TIME, EVENT, RISK > 1.0).p_value)
