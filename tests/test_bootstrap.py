"""The paired bootstrap of DSCagg differences against a plain-Python reference on hand-made counts."""

from __future__ import annotations

import numpy as np
import pytest

from pemma.protocol.bootstrap import Difference, bootstrap_relative, dscagg_mean, paired_bootstrap

# (case, class [GTVp, GTVn], (|GT∩P|, |GT|, |P|))
A = np.array([[[8, 10, 10], [3, 4, 4]], [[5, 10, 8], [0, 0, 0]], [[9, 12, 10], [1, 2, 3]], [[0, 5, 0], [2, 2, 2]]])
B = np.array([[[4, 10, 6], [1, 4, 2]], [[5, 10, 10], [0, 0, 1]], [[6, 12, 9], [0, 2, 0]], [[0, 5, 3], [1, 2, 1]]])


def _reference_dscagg_mean(counts: list) -> float:
    scores = []
    for c in range(2):
        inter = sum(case[c][0] for case in counts)
        size = sum(case[c][1] + case[c][2] for case in counts)
        if size:
            scores.append(2 * inter / size)
    return sum(scores) / len(scores)


def test_dscagg_mean_is_the_pooled_hecktor_score() -> None:
    # GTVp: 2 * 22 / (37 + 28); GTVn: 2 * 6 / (8 + 9)
    assert dscagg_mean(A) == pytest.approx((44 / 65 + 12 / 17) / 2, abs=1e-12)
    assert dscagg_mean(A) == pytest.approx(_reference_dscagg_mean(A.tolist()), abs=1e-12)
    assert np.isnan(dscagg_mean(np.zeros((2, 2, 3))))


def test_bootstrap_matches_a_plain_loop_with_the_same_draws() -> None:
    diff = paired_bootstrap(A, B, replicates=300, seed=7)
    draws = np.random.default_rng(7).integers(0, len(A), size=(300, len(A)))
    reference = [_reference_dscagg_mean(A[d].tolist()) - _reference_dscagg_mean(B[d].tolist()) for d in draws]
    low, high = np.percentile(reference, [2.5, 97.5])
    assert diff.estimate == pytest.approx(_reference_dscagg_mean(A.tolist()) - _reference_dscagg_mean(B.tolist()))
    assert (diff.low, diff.high) == pytest.approx((low, high), abs=1e-12)
    assert diff.n_cases == 4 and diff.low <= diff.estimate <= diff.high


def test_identical_methods_give_a_zero_interval_and_no_verdict() -> None:
    same = paired_bootstrap(A, A, replicates=100)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    assert same.verdict() is None


@pytest.mark.parametrize(("low", "high", "margin", "verdict"), [
    (0.01, 0.2, 0.0, True), (-0.2, -0.01, 0.0, False), (-0.1, 0.1, 0.0, None), (-0.02, 0.1, -0.03, True),
])
def test_verdict_needs_the_whole_interval(low: float, high: float, margin: float, verdict: bool | None) -> None:
    assert Difference(0.0, low, high, 10).verdict(margin) is verdict


def test_a_reference_of_zero_in_many_replicates_gives_an_infinite_bound_not_a_verdict() -> None:
    # B segments one case of ten; a replicate that misses it has B's DSCagg 0 and an infinite gain for A.
    # Leaving those out (they are A's best replicates) gave a finite CI [-0.78, -0.45] and "does not hold".
    a = np.zeros((10, 2, 3))
    b = np.zeros((10, 2, 3))
    a[:, 0] = [1, 10, 10]
    b[:, 0] = [0, 10, 0]
    b[0, 0] = [10, 10, 10]
    gain = bootstrap_relative(a, b, replicates=2000, seed=0)
    draws = np.random.default_rng(0).integers(0, 10, size=(2000, 10))
    assert ((draws == 0).sum(axis=1) == 0).mean() > 0.025  # over a tail's share of replicates are infinite
    assert gain.high == np.inf and np.isfinite(gain.low)
    assert gain.verdict() is None
    from pemma.protocol.claim_ci import ci_text

    assert ci_text(gain) == f"-45.0% [95% CI {gain.low:+.1%}, +inf%; n=10]"  # a gain in percent, like the detail
    assert gain.to_dict()["ci95"] == [gain.low, None]  # JSON has no infinity
    assert gain.estimate == pytest.approx((20 / 200) / (20 / 110) - 1)  # pooled GTVp: A 2·10/(100+100), B 2·10/(100+10)


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="paired counts"):
        paired_bootstrap(A, B[:3])


def _counts(rng: np.random.Generator, quality: float, n: int) -> list[list[list[int]]]:
    """n cases of GTVp (GTVn empty): 100-voxel tumours, predicted with about ``quality`` overlap (noisy)."""
    out = []
    for _ in range(n):
        inter = int(np.clip(rng.normal(quality, 0.08), 0.0, 1.0) * 100)
        out.append([[inter, 100, 100], [0, 0, 0]])
    return out


def _tables(ct_quality: float, fused_quality: float, n: int = 12, seed: int = 0) -> tuple[list, list]:
    """Summary rows and per-case rows of the CT model (PEMMA's CT route) and PEMMA CT+PET after adapt on MDA."""
    from pemma.protocol.bootstrap import dscagg_mean

    rng = np.random.default_rng(seed)
    rows, cases = [], []
    for method, inputs, quality in (("pemma_lora", "ct", ct_quality), ("pemma_lora", "ct+pet", fused_quality)):
        counts = _counts(rng, quality, n)
        mean = float(dscagg_mean(np.asarray(counts)))
        rows.append({"backbone": "unetr", "method": method, "variant": "v", "phase": "adapt_mda", "phase_index": 1,
                     "eval_centre": "MDA", "inputs": inputs, "DSCagg_GTVp": mean, "DSCagg_GTVn": None,
                     "DSCagg_mean": mean, "trainable_params": 10, "percent_of_early_fusion": 5.0})
        cases += [{"backbone": "unetr", "method": method, "variant": "v", "phase_index": 1, "eval_centre": "MDA",
                   "inputs": inputs, "case_id": f"MDA-{i:03d}", "counts": c} for i, c in enumerate(counts)]
    return rows, cases


def test_claims_are_decided_by_the_confidence_interval() -> None:
    from pemma.protocol.findings import check_findings
    from pemma.protocol.phases import Phase

    phases = (Phase("pretrain", "pretrain", ("CHUM",), ("ct",)), Phase("adapt_mda", "adapt", ("MDA",), ("ct", "pet")))
    rows, cases = _tables(0.40, 0.70)
    clear = next(c for c in check_findings(rows, phases, "v", cases=cases) if c["id"] == "ctpet_beats_ct")
    assert clear["holds"] is True and clear["n_cases"] == 12
    (low, high), = [c["ci95"] for c in clear["ci"].values()]
    assert 0.0 < low < clear["values"]["ct+pet:pemma_lora"] - clear["values"]["ct"] < high
    assert "paired bootstrap over test cases (DSCagg pooled over them" in clear["detail"]
    rows, cases = _tables(0.40, 0.41)  # a difference inside the noise of 12 cases
    close = next(c for c in check_findings(rows, phases, "v", cases=cases) if c["id"] == "ctpet_beats_ct")
    assert close["holds"] is None
    rows, cases = _tables(0.70, 0.40)
    worse = next(c for c in check_findings(rows, phases, "v", cases=cases) if c["id"] == "ctpet_beats_ct")
    assert worse["holds"] is False
    point = next(c for c in check_findings(rows, phases, "v") if c["id"] == "ctpet_beats_ct")
    assert point["holds"] is False and "point estimate" in point["detail"] and "ci" not in point


def test_ci_text_shows_differences_that_would_print_as_zero() -> None:
    from pemma.protocol.bootstrap import Difference
    from pemma.protocol.claim_ci import ci_text

    # a verdict on +1.6e-05 printed "+0.000 [95% CI +0.000, +0.000]" (2 training steps: holds on a negligible gain)
    tiny = Difference(estimate=1.6e-5, low=1.1e-5, high=2.04e-5, n_cases=5)
    assert ci_text(tiny) == "+1.6e-05 [95% CI +1.1e-05, +2e-05; n=5]"
    assert ci_text(Difference(0.12, 0.05, 0.19, 15)) == "+0.120 [95% CI +0.050, +0.190; n=15]"
    assert ci_text(Difference(0.0001, -0.02, 0.03, 15)) == "+0.000 [95% CI -0.020, +0.030; n=15]"  # CI says enough
    assert ci_text(Difference(0.0, 0.0, 0.0, 3)) == "+0.000 [95% CI +0.000, +0.000; n=3]"  # exactly equal
    assert ci_text(Difference(2e-6, 1e-6, 3e-6, 4, relative=True)) == "+0.0002% [95% CI +0.0001%, +0.0003%; n=4]"
