"""Lesion-feature prognosis chain: ridge Cox against lifelines, penalty by inner CV, lesion measurements of known
size and uptake, the overfitting flag, the C-index gain claims, and the chain on a phantom."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import main_result, run_main
from lifelines import CoxPHFitter

from pemma.data.phantom import PhantomConfig, synthesize_phantom
from pemma.protocol.claims.cindex import chain_claims, cindex_gain
from pemma.survival.chain import ChainConfig, ChainData, run_chain
from pemma.survival.chain_run import survival_chain
from pemma.survival.coxnet import PenalisedCox, fit_cox, partial_likelihood
from pemma.survival.lesion import CT_FEATURES, PET_FEATURES, lesion_features
from pemma.survival.metrics import concordance_index


def simulate(n: int, coefs: np.ndarray, seed: int, noise: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exponential proportional-hazards times (continuous: no ties) with exponential censoring."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(coefs) + noise)) * np.linspace(0.5, 3.0, len(coefs) + noise) + 1.0
    lp = x[:, :len(coefs)] @ coefs
    t, c = rng.exponential(np.exp(-lp)), rng.exponential(np.exp(-lp).mean() * 1.5, n)
    return x, np.minimum(t, c), (t <= c).astype(float)


@pytest.mark.parametrize("penalizer", [0.05, 0.5])
def test_ridge_cox_equals_lifelines(penalizer: float) -> None:
    """Same objective as CoxPHFitter(penalizer, l1_ratio=0): coefficients agree per raw unit."""
    x, t, e = simulate(90, np.array([0.8, -0.3, 0.0, 0.2]), seed=3)
    df = pd.DataFrame(x, columns=list("abcd")).assign(T=t, E=e)
    reference = CoxPHFitter(penalizer=penalizer).fit(df, "T", "E").params_.to_numpy()
    ours = PenalisedCox.fit(x, t, e, penalizer).coef
    np.testing.assert_allclose(ours, reference, atol=2e-4, rtol=1e-3)


def test_unpenalised_feature_equals_lifelines_penalty_array() -> None:
    """A penalty factor 0 leaves that coefficient unpenalised (lifelines: a per-parameter penalizer array)."""
    x, t, e = simulate(80, np.array([0.6, 0.4, -0.5]), seed=5)
    df = pd.DataFrame(x, columns=list("abc")).assign(T=t, E=e)
    reference = CoxPHFitter(penalizer=np.array([0.0, 0.4, 0.4])).fit(df, "T", "E").params_.to_numpy()
    ours = PenalisedCox.fit(x, t, e, 0.4, weights=[0.0, 1.0, 1.0]).coef
    np.testing.assert_allclose(ours, reference, atol=2e-4, rtol=1e-3)


def test_partial_likelihood_gradient_matches_finite_differences() -> None:
    x, t, e = simulate(30, np.array([0.5, -0.5]), seed=1)
    t[3] = t[4]  # a tie: the risk set must include both
    beta = np.array([0.3, -0.2])
    _, grad, hess = partial_likelihood(x, t, e, beta)
    h = 1e-6
    for j in range(2):
        step = np.eye(2)[j] * h
        up, g_up, _ = partial_likelihood(x, t, e, beta + step)
        down, g_down, _ = partial_likelihood(x, t, e, beta - step)
        assert (up - down) / (2 * h) == pytest.approx(grad[j], rel=1e-5)
        np.testing.assert_allclose((g_up - g_down) / (2 * h), hess[:, j], rtol=1e-4, atol=1e-6)


def test_inner_cv_penalty_generalises_better_than_almost_none() -> None:
    """Two weak signals among twenty noise columns, 60 cases: over five seeded draws, the CV-chosen penalty's
    model ranks 400 new cases better on average than the least-penalised one, and CV does not always pick it."""
    grid = (0.001, 0.01, 0.1, 1.0, 10.0)
    chosen, weak, picked = [], [], []
    for seed in range(5):
        x, t, e = simulate(60, np.array([1.0, -0.6]), seed=seed, noise=20)
        xt, tt, et = simulate(400, np.array([1.0, -0.6]), seed=100 + seed, noise=20)
        model = PenalisedCox.fit_cv(x, t, e, grid=grid, folds=5, seed=0)
        assert len(model.oof) == 60 and set(model.cv) == set(grid) and model.cv_c_index == max(model.cv.values())
        chosen.append(concordance_index(tt, et, model.risk(xt)))
        weak.append(concordance_index(tt, et, PenalisedCox.fit(x, t, e, grid[0]).risk(xt)))
        picked.append(model.l2)
    assert np.mean(chosen) > np.mean(weak) and max(picked) > grid[0]
    restored = PenalisedCox.from_dict(json.loads(json.dumps(model.to_dict())))
    assert restored.risk(xt) == pytest.approx(model.risk(xt))


def test_lesion_features_known_answer() -> None:
    """A 10-ml primary with uniform SUV 4 and one voxel at 9, two separate nodes, PET on a shifted grid."""
    affine = np.diag([2.0, 2.0, 2.5, 1.0])  # 10 ul voxels
    label = np.zeros((40, 40, 40), np.uint8)
    label[5:15, 5:15, 5:15] = 1  # 1000 voxels = 10 ml
    label[30:33, 30:33, 30:33] = 2  # 27 voxels
    label[20:22, 30:32, 30:32] = 2  # 8 voxels, not touching the first node
    pet = np.full((40, 40, 40), 1.0, np.float32)
    pet[5:15, 5:15, 5:15] = 4.0
    pet[10, 10, 10] = 9.0
    pet_affine = affine.copy()
    pet_affine[:3, 3] = [-4.0, 0.0, 0.0]  # PET voxel i sits at CT voxel i - 2 (integer shift: exact sampling)
    pet = np.roll(pet, 2, axis=0)
    out = lesion_features(label, affine, pet, pet_affine, min_node_ml=0.05)
    assert set(out) == set(CT_FEATURES) | set(PET_FEATURES)
    assert out["log_gtvp_ml"] == pytest.approx(np.log1p(10.0))
    assert out["log_gtvn_ml"] == pytest.approx(np.log1p(0.35))
    assert out["nodes"] == 2.0
    assert out["log_suvmax"] == pytest.approx(np.log1p(9.0))
    assert out["suvmean"] == pytest.approx((999 * 4.0 + 9.0 + 35 * 1.0) / 1035)
    assert out["log_mtv_ml"] == pytest.approx(np.log1p(10.0))  # SUV >= 2.5: the primary only
    assert out["log_mtv41_ml"] == pytest.approx(np.log1p(10.0))  # >= 0.41 * 9 = 3.69: the primary only
    assert lesion_features(label, affine, pet, pet_affine, min_node_ml=0.1)["nodes"] == 1.0  # 0.08 ml too small
    empty = lesion_features(np.zeros_like(label), affine, pet, pet_affine)
    assert all(v == 0.0 for v in empty.values())


def _chain_data(n: int, seed: int, clinical_signal: float) -> ChainData:
    """CT features weakly, PET strongly and a clinical column (plus noise columns) informative."""
    rng = np.random.default_rng(seed)
    ct = rng.normal(size=(n, 3))
    pet = np.concatenate([ct + 0.0, rng.normal(size=(n, 4))], axis=1)
    clin = rng.normal(size=(n, 6))
    lp = 0.4 * ct[:, 0] + 1.2 * pet[:, 3] + clinical_signal * clin[:, 0]
    t, c = rng.exponential(np.exp(-lp)), rng.exponential(2.0, n)
    return ChainData([f"C-{i:03d}" for i in range(n)], np.minimum(t, c), (t <= c).astype(float), ct, pet, clin,
                     [f"c{i}" for i in range(6)])


def test_chain_learns_each_added_signal_and_the_gain_claims_hold() -> None:
    data = _chain_data(300, seed=0, clinical_signal=1.0)
    result = run_chain(data, ChainConfig(folds=4, bootstrap=200))
    c = {s["stage"]: s["test_c_index"] for s in result["stages"]}
    assert c["ct"] < c["ct+pet"] < c["ct+pet+ehr"] and c["ct+pet+ehr"] > 0.75
    assert not any(s["overfitting"] for s in result["stages"])
    ehr = result["stages"][2]
    assert ehr["features"][0] == "ct+pet_risk" and ehr["model"]["weights"][0] == 0.0
    claims = chain_claims(result, replicates=300)
    assert [cl["id"] for cl in claims] == ["cindex_gain_pet", "cindex_gain_pet_ehr"]
    assert all(cl["holds"] is True and cl["ci"] and cl["n_cases"] == 120 for cl in claims)


def test_overfitting_is_flagged() -> None:
    """Forty noise columns with almost no penalty on 40 cases: training C far above the cross-validated C."""
    rng = np.random.default_rng(4)
    n = 60
    noise = rng.normal(size=(n, 40))
    t, e = rng.exponential(1.0, n), (rng.uniform(size=n) < 0.7).astype(float)
    data = ChainData([str(i) for i in range(n)], t, e, noise[:, :3], noise[:, :7], noise[:, 7:], [])
    data.clinical_names = [f"n{i}" for i in range(33)]
    result = run_chain(data, ChainConfig(grid=(1e-4,), folds=4, bootstrap=50))
    by_stage = {s["stage"]: s for s in result["stages"]}
    assert by_stage["ct+pet+ehr"]["overfitting"] is True
    assert by_stage["ct+pet+ehr"]["train_c_index"] - by_stage["ct+pet+ehr"]["cv_c_index"] > 0.1


def _chain_result(t: np.ndarray, e: np.ndarray, risks: dict[str, np.ndarray]) -> dict:
    """A chain result (what ``chain.json`` holds of the held-out cases) from risks per stage."""
    return {"test_cases": [f"C-{i:03d}" for i in range(len(t))], "test_time": t.tolist(),
            "test_event": e.astype(int).tolist(),
            "stages": [{"stage": stage, "test_risk": np.asarray(r).tolist(), "test_c_index": concordance_index(t, e, r),
                        "test_ci": None, "n_test": len(t), "events_test": int(e.sum()), "cv_c_index": None,
                        "n_features": 1, "overfitting": False} for stage, r in risks.items()]}


def test_paired_bootstrap_known_answers() -> None:
    """Perfect vs random vs reversed risks: the point gain is Harrell's, and the gains' CIs decide."""
    rng = np.random.default_rng(0)
    t = rng.permutation(np.arange(1.0, 41.0))
    e = (rng.uniform(size=40) < 0.6).astype(float)
    perfect, rand = -t, rng.normal(size=40)
    gain = cindex_gain(t, e, rand, perfect, replicates=100, seed=1)
    assert gain.estimate == pytest.approx(1.0 / concordance_index(t, e, rand) - 1.0) and gain.low > 0
    same = cindex_gain(t, e, perfect, perfect, replicates=100, seed=1)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0) and same.replicates == 100
    half = {"ct": perfect, "ct+pet": perfect, "ct+pet+ehr": t}  # the same, then reversed
    claims = {c["id"]: c for c in chain_claims(_chain_result(t, e, half), replicates=200)}
    assert claims["cindex_gain_pet"]["holds"] is None  # no change: CI [0, 0] excludes neither side
    assert claims["cindex_gain_pet_ehr"]["holds"] is False  # C 1.0 -> 0.0
    assert claims["cindex_gain_pet_ehr"]["ci"]["relative_gain"]["ci95"] == [-1.0, -1.0]
    assert claims["cindex_gain_pet_ehr"]["values"]["relative_gain"] == -1.0
    missing = chain_claims(_chain_result(t, e, {"ct": perfect}))
    assert [c["holds"] for c in missing] == [None, None] and "not computed" in missing[0]["detail"]


@pytest.mark.slow
def test_chain_on_phantom_with_reference_segmentation(tmp_path: Path) -> None:
    """On the phantom (hazard driven by volume, SUVmax, HPV, age, PS) the CT+PET stage beats chance with its CI
    when the lesions are segmented well (reference labels: the chain's upper bound)."""
    root = tmp_path / "phantom"
    synthesize_phantom(root, PhantomConfig(cases_per_centre=40, centres=("CHUM", "MDA"), ct_shape=(64, 64, 48)),
                       progress=False)
    result = survival_chain(root, tmp_path / "chain", "labels", cfg=ChainConfig(bootstrap=300))
    stages = {s["stage"]: s for s in result["stages"]}
    assert result["stages"][0]["events_test"] + result["stages"][0]["events_train"] >= 20
    assert stages["ct+pet"]["test_ci"][0] > 0.5
    assert (tmp_path / "chain" / "features.csv").read_text().count("\n") == 81


@pytest.mark.slow
@pytest.mark.long  # trains the tiny UNETR base and segments every case
def test_cli_chain_segments_with_the_model(phantom: Path, bases: dict[str, Path], tmp_path: Path) -> None:
    """``pemma survival chain`` with a trained CT run: every case is segmented by the run (sliding window over
    the whole case), measured, split, and the three stages and both claims are reported."""
    out = tmp_path / "chain"
    stdout = run_main("survival", "chain", "--seg-ct", str(bases["unetr"]), "--data", str(phantom), "--out", str(out),
                      "--folds", "2", "--bootstrap", "20", "--test-fraction", "0.5", "--device", "cpu")
    result = json.loads((out / "chain.json").read_text())
    assert result["segmentation"] == {"ct": str(bases["unetr"].resolve()), "ct+pet": str(bases["unetr"].resolve())}
    assert [s["stage"] for s in result["stages"]] == ["ct", "ct+pet", "ct+pet+ehr"]
    assert sorted(result["train_cases"] + result["test_cases"]) == sorted(
        line.split(",")[0] for line in (phantom / "hecktor2022_endpoint_training.csv").read_text().splitlines()[1:])
    rows = (out / "features.csv").read_text().splitlines()
    assert len(rows) == 7 and rows[0].startswith("case_id,split,rfs,relapse,ct:log_gtvp_ml")
    assert "ct+pet+ehr" in stdout and "cindex_gain_pet:" in stdout and "cindex_gain_pet_ehr:" in stdout


def test_cli_chain_bad_run_is_one_line(phantom: Path, tmp_path: Path) -> None:
    proc = main_result("survival", "chain", "--seg-ct", str(tmp_path / "nope"), "--data", str(phantom), "--out",
                       str(tmp_path / "c"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and str(tmp_path / "nope") in proc.stderr


def test_prognosis_findings_reads_the_current_chains_only(tmp_path: Path) -> None:
    """The findings hook: claims of ``runs/<backbone>/prognosis_<digest>/lesion_*/chain.json`` of this digest."""
    from pemma.protocol.claims.cindex import prognosis_findings

    data = _chain_data(120, seed=1, clinical_signal=1.0)
    result = run_chain(data, ChainConfig(folds=3, bootstrap=20))
    for digest in ("abcd1234", "old00000"):
        path = tmp_path / "runs" / "unetr" / f"prognosis_{digest}" / "lesion_lora" / "chain.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(result))
    found = prognosis_findings(tmp_path, seed=0, folders="runs/*/prognosis_abcd1234")
    assert list(found) == ["unetr · prognosis (lesion_lora)"]
    assert [c["id"] for c in found["unetr · prognosis (lesion_lora)"]] == ["cindex_gain_pet", "cindex_gain_pet_ehr"]
    assert prognosis_findings(tmp_path / "nothing") == {}


def test_unpenalised_coefficient_on_separable_cases_stays_finite() -> None:
    """Three standardised training cases, one relapse, an unpenalised column (the +EHR stage's image risk): Newton
    steps along it only approach the likelihood's supremum, and a step that made the objective NaN was accepted
    (``reproduce`` then stopped on non-finite risks). Captured from the tiny reproduce of tests/test_reproduce.py."""
    a, b = 0.5773502691896257, 1.1547005383792515
    z = np.zeros((3, 19))
    z[:, 0] = [-a, -a, b]
    z[:, 1] = [-0.060522753266880246, -0.9683640522700839, 1.0288868055369642]
    z[:, 3] = [-1.0, 1.0, 0.0]
    z[:, 4] = z[:, 8] = [-0.5773502691896256, -0.5773502691896256, b]
    z[:, 9] = z[:, 11] = z[:, 13] = [-0.5773502691896256, b, -0.5773502691896256]
    z[:, 10] = [b, -0.5773502691896256, -0.5773502691896256]
    z[:, 12] = z[:, 14] = [a, -1.1547005383792512, a]
    time, event = np.array([599.0, 1415.0, 398.0]), np.array([1, 0, 0])
    weights = np.r_[0.0, np.ones(18)]
    beta = fit_cox(z, time, event, 10.0, weights=weights)
    assert np.isfinite(beta).all()
    loglik = partial_likelihood(z, time, event, beta)[0]
    assert np.isfinite(loglik) and loglik >= partial_likelihood(z, time, event, np.zeros(19))[0]
