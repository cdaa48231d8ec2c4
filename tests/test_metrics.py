"""Tests for pemma.evaluation.metrics (HECKTOR DSCagg, per-case Dice and HD95)."""

from __future__ import annotations

import doctest
import math
from typing import Any

import numpy as np
import pytest

from pemma.evaluation import metrics
from pemma.evaluation.metrics import (
    CLASS_NAMES,
    AggregatedDice,
    CaseCounts,
    case_counts,
    case_metrics,
    summarize,
)


def _vol(shape=(2, 3, 4)) -> np.ndarray:
    return np.zeros(shape, dtype=np.int64)


def _hand_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    """Three tiny (2, 3, 4) cases whose voxel counts are written out below."""
    # Case A. GTVp: GT 5 voxels, pred 3 voxels, overlap 3.  GTVn: GT 2, pred 2, overlap 1.
    la, pa = _vol(), _vol()
    la[0, 0, 0:4] = 1
    la[1, 0, 0] = 1  # GTVp GT = 5
    pa[0, 0, 0:3] = 1  # GTVp pred = 3, all inside GT -> overlap 3
    la[1, 2, 2:4] = 2  # GTVn GT = 2 : (1,2,2), (1,2,3)
    pa[1, 2, 1:3] = 2  # GTVn pred = 2: (1,2,1), (1,2,2) -> overlap 1
    # Case B. GTVp: GT 0, pred 2 (false positives).  GTVn: GT 3, pred 0.
    lb, pb = _vol(), _vol()
    pb[0, 1, 0:2] = 1
    lb[1, 1, 0:3] = 2
    # Case C. GTVp: GT 4, pred 4, overlap 4.  GTVn: GT 0, pred 0.
    lc, pc = _vol(), _vol()
    lc[1, 0:2, 2:4] = 1
    pc[1, 0:2, 2:4] = 1
    return [(pa, la), (pb, lb), (pc, lc)]


def test_case_counts_by_hand():
    (pa, la), (pb, lb), (pc, lc) = _hand_cases()
    assert case_counts(pa, la) == {1: (3, 5, 3), 2: (1, 2, 2)}
    assert case_counts(pb, lb) == {1: (0, 0, 2), 2: (0, 3, 0)}
    assert case_counts(pc, lc) == {1: (4, 4, 4), 2: (0, 0, 0)}
    assert all(isinstance(v, int) for t in case_counts(pa, la).values() for v in t)


def test_dscagg_hand_computed():
    agg = AggregatedDice()
    for pred, label in _hand_cases():
        agg.update(pred, label)
    out = agg.compute()
    gtvp = 2 * (3 + 0 + 4) / ((5 + 3) + (0 + 2) + (4 + 4))  # 14/18
    gtvn = 2 * (1 + 0 + 0) / ((2 + 2) + (3 + 0) + (0 + 0))  # 2/7
    assert out["GTVp"] == pytest.approx(14 / 18)
    assert out["GTVp"] == pytest.approx(gtvp)
    assert out["GTVn"] == pytest.approx(gtvn)
    assert out["mean"] == pytest.approx((gtvp + gtvn) / 2)
    assert agg.num_cases == 3
    assert agg.totals[1] == CaseCounts(7, 9, 9)

    agg.reset()
    assert agg.num_cases == 0 and math.isnan(agg.compute()["mean"])


def test_update_counts_matches_update():
    a, b = AggregatedDice(), AggregatedDice()
    for pred, label in _hand_cases():
        a.update(pred, label)
        b.update_counts(case_counts(pred, label))
    assert a.compute() == b.compute()
    with pytest.raises(ValueError, match="inconsistent"):
        b.update_counts({1: (5, 2, 2)})


def test_dscagg_differs_from_mean_per_case_dice():
    # Case 1: large GTVp, perfect (Dice 1).  Case 2: 1-voxel GTVp, missed (Dice 0).
    l1, p1 = _vol((4, 4, 4)), _vol((4, 4, 4))
    l1[0:2, 0:2, 0:2] = 1  # 8 voxels
    p1[0:2, 0:2, 0:2] = 1
    l2, p2 = _vol((4, 4, 4)), _vol((4, 4, 4))
    l2[3, 3, 3] = 1
    agg = AggregatedDice()
    agg.update(p1, l1)
    agg.update(p2, l2)
    per_case = [case_metrics(p1, l1, (1.0, 1.0, 1.0)), case_metrics(p2, l2, (1.0, 1.0, 1.0))]
    assert [m["dice_GTVp"] for m in per_case] == [1.0, 0.0]
    assert summarize(per_case)["dice_GTVp"] == pytest.approx(0.5)
    assert agg.compute()["GTVp"] == pytest.approx(2 * 8 / (8 + 8 + 1 + 0))  # 16/17


def test_class_absent_everywhere_is_nan_and_mean_uses_other():
    label, pred = _vol(), _vol()
    label[0, 0, 0:2] = 1
    pred[0, 0, 1:3] = 1  # GTVp: overlap 1, GT 2, pred 2 -> 0.5
    agg = AggregatedDice()
    agg.update(pred, label)
    agg.update(_vol(), _vol())
    out = agg.compute()
    assert math.isnan(out["GTVn"])
    assert out["GTVp"] == pytest.approx(0.5)
    assert out["mean"] == pytest.approx(0.5)


def test_hd95_honours_anisotropic_spacing():
    label, pred = _vol((10, 10, 12)), _vol((10, 10, 12))
    label[3:6, 3:6, 2:5] = 2  # GTVn cube, 3 voxels wide
    pred[3:6, 3:6, 4:7] = 2  # same cube shifted 2 voxels along axis 2
    m = case_metrics(pred, label, spacing=(1.0, 1.0, 3.0))
    assert m["hd95_GTVn"] == pytest.approx(2 * 3.0)  # 2 voxels x 3 mm
    assert m["dice_GTVn"] == pytest.approx(2 * 9 / (27 + 27))  # overlap is one 3x3 slice
    # same shift along an axis with 1 mm spacing -> 2 mm
    m_iso = case_metrics(pred, label, spacing=(3.0, 3.0, 1.0))
    assert m_iso["hd95_GTVn"] == pytest.approx(2.0)
    # GTVp absent from both: Dice and HD95 are NaN
    assert math.isnan(m["dice_GTVp"]) and math.isnan(m["hd95_GTVp"])


def test_empty_prediction_dice_zero_hd95_nan():
    label = _vol((6, 6, 6))
    label[1:3, 1:3, 1:3] = 1
    label[4, 4, 4] = 2
    m = case_metrics(_vol((6, 6, 6)), label, spacing=(1.0, 1.0, 1.0))
    assert set(m) == {"dice_GTVp", "dice_GTVn", "hd95_GTVp", "hd95_GTVn"}
    for name in CLASS_NAMES.values():
        assert m[f"dice_{name}"] == 0.0
        assert math.isnan(m[f"hd95_{name}"]) and not math.isinf(m[f"hd95_{name}"])
    # empty ground truth with a prediction: Dice 0, HD95 NaN too
    m2 = case_metrics(label, _vol((6, 6, 6)), spacing=(1.0, 1.0, 1.0))
    assert m2["dice_GTVp"] == 0.0 and math.isnan(m2["hd95_GTVp"])


def test_perfect_prediction():
    label = _vol((6, 6, 6))
    label[1:4, 1:4, 1:4] = 1
    label[4:6, 4:6, 4:6] = 2
    m = case_metrics(label.copy(), label, spacing=(0.9, 0.9, 3.0))
    assert m == {"dice_GTVp": 1.0, "dice_GTVn": 1.0, "hd95_GTVp": 0.0, "hd95_GTVn": 0.0}


def test_bad_label_value_raises_naming_value():
    label, pred = _vol(), _vol()
    label[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"label.*\b3\b"):
        case_counts(pred, label)
    pred[1, 1, 1] = -1
    with pytest.raises(ValueError, match=r"prediction.*-1"):
        AggregatedDice().update(pred, _vol())
    with pytest.raises(ValueError, match=r"1\.5"):
        case_metrics(_vol().astype(float) + 1.5, _vol(), spacing=(1.0, 1.0, 1.0))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        case_counts(_vol((2, 3, 4)), _vol((2, 3, 5)))
    with pytest.raises(ValueError, match="shape"):
        case_metrics(_vol((2, 3, 4)), _vol((3, 3, 4)), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="3-D"):
        case_counts(np.zeros((3, 4), dtype=int), np.zeros((3, 4), dtype=int))


def test_bad_spacing_raises():
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(_vol(), _vol(), spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(_vol(), _vol(), spacing=(1.0, 1.0))


def test_summarize_nanmean_skips_non_numeric():
    rows = [
        {"case_id": "CHUM-001", "dice_GTVp": 0.8, "hd95_GTVp": float("nan")},
        {"case_id": "CHUM-002", "dice_GTVp": 0.4, "hd95_GTVp": 4.0},
        {"case_id": "CHUM-003", "dice_GTVp": float("nan"), "hd95_GTVp": float("nan")},
    ]
    out = summarize(rows)
    assert out["dice_GTVp"] == pytest.approx(0.6)
    assert out["hd95_GTVp"] == pytest.approx(4.0)
    assert out["n_cases"] == 3
    assert "case_id" not in out
    assert math.isnan(summarize([{"x": float("nan")}])["x"])
    assert summarize([]) == {"n_cases": 0.0}


def test_docstring_examples():
    result = doctest.testmod(metrics, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def _numpy_dscagg(cases: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """DSCagg from direct numpy voxel counts (independent of MONAI), NaN for a class absent everywhere."""
    out = {}
    for c, name in CLASS_NAMES.items():
        inter = sum(int(np.sum((p == c) & (g == c))) for p, g in cases)
        size = sum(int(np.sum(p == c)) + int(np.sum(g == c)) for p, g in cases)
        out[name] = 2.0 * inter / size if size else math.nan
    finite = [v for v in out.values() if not math.isnan(v)]
    out["mean"] = sum(finite) / len(finite) if finite else math.nan
    return out


@pytest.mark.parametrize("absent", [None, 1, 2, "both"])
def test_dscagg_matches_numpy_counts_on_random_maps(absent):
    """The MONAI-backed DSCagg equals a plain numpy count; an absent class stays NaN, the mean skips it."""
    rng = np.random.default_rng(7 if absent is None else len(str(absent)))
    cases = []
    for _ in range(4):
        shape = tuple(int(s) for s in rng.integers(5, 17, size=3))
        # sparse foreground, as in CT: mostly background, some of each class
        pred = rng.choice(3, size=shape, p=[0.8, 0.12, 0.08])
        label = np.where(rng.random(shape) < 0.7, pred, rng.choice(3, size=shape, p=[0.8, 0.1, 0.1]))
        for c in {"both": (1, 2), None: ()}.get(absent, (absent,)):
            pred[pred == c] = 0
            label[label == c] = 0
        cases.append((pred, label))
    agg = AggregatedDice()
    for pred, label in cases:
        agg.update(pred, label)
        assert case_counts(pred, label) == {
            c: (int(np.sum((pred == c) & (label == c))), int(np.sum(label == c)), int(np.sum(pred == c)))
            for c in CLASS_NAMES
        }
    got, want = agg.compute(), _numpy_dscagg(cases)
    assert agg.num_cases == len(cases)
    for key, value in want.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, abs=1e-6), key
            assert 0.0 < got[key] < 1.0
    absent_names = {None: set(), 1: {"GTVp"}, 2: {"GTVn"}, "both": {"GTVp", "GTVn", "mean"}}[absent]
    assert {k for k, v in got.items() if math.isnan(v)} == absent_names
    by_counts = AggregatedDice()
    for pred, label in cases:
        by_counts.update_counts(case_counts(pred, label))
    assert by_counts.compute().keys() == got.keys()
    assert all(math.isnan(v) if math.isnan(got[k]) else v == got[k] for k, v in by_counts.compute().items())


def _dice_on_rank_zero_only(rank: int, port: int, errors: Any) -> None:
    """Rank 0 computes DSCagg while rank 1 waits at a barrier, as validation runs under torchrun."""
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=30))
    try:
        if rank == 0:
            agg = AggregatedDice()
            agg.update(np.array([[[1, 1, 0]]]), np.array([[[1, 0, 0]]]))
            assert round(agg.compute()["GTVp"], 4) == 0.6667 and agg.num_cases == 1
        dist.barrier()
    except Exception as exc:  # noqa: BLE001  (reported to the test)
        errors.put(f"rank {rank}: {exc!r}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes (each imports torch)
def test_aggregated_dice_does_not_synchronise_processes() -> None:
    # MONAI's cumulative metric all-gathered its buffer under torch.distributed: rank 0 validating alone waited for
    # the other rank, which waited at a barrier (a torchrun adapt hung at its first validation)
    import os

    import torch.multiprocessing as mp

    errors = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_dice_on_rank_zero_only, args=(29000 + os.getpid() % 1000, errors), nprocs=2, join=True)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert not found, found
