"""Tests of the hard phantom (``pemma synth --difficulty hard``): weaker CT contrast, unlabelled PET hot spots and
physiological uptake on the labels and grids of the default phantom (tiny grids, each test well under 10 s)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from pemma.data.phantom import (
    ENDPOINT_FILE,
    PHANTOM_FILE,
    PhantomConfig,
    read_phantom_config,
    synthesize_case,
    synthesize_phantom,
)
from pemma.data.phantom_anatomy import LESION, TISSUES, RefGrid, paint_anatomy, paint_confounders, paint_lesions
from pemma.data.phantom_hard import HARD, HARD_HU_DELTA, paint_hard_confounders
from pemma.errors import PemmaError

SHAPE = (48, 48, 40)
CASES = [(c, i) for c in ("CHUM", "MDA", "HGJ") for i in range(3)]


def _pair(centre: str, index: int, seed: int = 0):
    return (synthesize_case(centre, index, PhantomConfig(ct_shape=SHAPE, seed=seed)),
            synthesize_case(centre, index, PhantomConfig(ct_shape=SHAPE, seed=seed, difficulty="hard")))


def test_difficulty_is_validated():
    with pytest.raises(ValueError, match="difficulty"):
        PhantomConfig(difficulty="extreme")
    assert PhantomConfig().difficulty == "normal"


@pytest.mark.parametrize("centre,index", CASES[::3])
def test_same_labels_grids_tables_as_the_normal_twin(centre, index):
    normal, hard = _pair(centre, index)
    assert np.array_equal(normal.label, hard.label)
    assert set(np.unique(hard.label).tolist()) <= {0, 1, 2} and (hard.label == 1).any()
    assert np.array_equal(normal.ct_affine, hard.ct_affine) and np.array_equal(normal.pet_affine, hard.pet_affine)
    assert normal.ct.shape == hard.ct.shape and normal.pet.shape == hard.pet.shape
    assert normal.clinical == hard.clinical and (normal.relapse, normal.rfs) == (hard.relapse, hard.rfs)
    assert hard.ct.dtype == np.int16 and hard.pet.dtype == np.float32
    # ... but the images differ: the option is not a no-op.
    assert not np.array_equal(normal.ct, hard.ct) and not np.array_equal(normal.pet, hard.pet)


def test_deterministic_by_seed():
    a = synthesize_case("MDA", 1, PhantomConfig(ct_shape=SHAPE, difficulty="hard"))
    b = synthesize_case("MDA", 1, PhantomConfig(ct_shape=SHAPE, difficulty="hard"))
    c = synthesize_case("MDA", 1, PhantomConfig(ct_shape=SHAPE, difficulty="hard", seed=1))
    assert np.array_equal(a.ct, b.ct) and np.array_equal(a.pet, b.pet) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.pet, c.pet)


def _painted(seed: int, hu_delta=None, hard: bool = False):
    """Noise-free HU / SUV of one reference patient, painted like synthesize_case does."""
    rng = np.random.default_rng(seed)
    g = RefGrid.make(SHAPE, (2.0, 2.0, 2.5), size=1.0, shift=(0.0, 0.0), z_shift=0.0)
    hu, suv, masks = paint_anatomy(g, rng)
    les = paint_lesions(g, rng, hu, suv, masks, hpv=0, hu_delta=hu_delta)
    paint_confounders(g, rng, hu, suv, masks, les.label)
    counts = paint_hard_confounders(g, np.random.default_rng(seed + 1000), hu, suv, masks, les.label) if hard else {}
    return hu, suv, les, counts


@pytest.mark.parametrize("seed", [0, 3, 7])
def test_ct_contrast_known_answer(seed):
    """Same draws, lower range: GTVp loses 25 - 10 u HU (u in [0, 1]), i.e. 15..25 HU, GTVn exactly 15 HU."""
    hu_n, _, les_n, _ = _painted(seed)
    hu_h, _, les_h, _ = _painted(seed, HARD_HU_DELTA)
    assert np.array_equal(les_n.label, les_h.label)
    p = les_n.label == 1
    assert p.any()
    loss = (hu_n - hu_h)[p]
    lo_n, hi_n = LESION["gtvp_hu_delta"]
    lo_h, hi_h = HARD_HU_DELTA["gtvp_hu_delta"]
    assert np.ptp(loss) < 1e-3  # one contrast draw per lesion
    bounds = sorted((lo_n - lo_h, hi_n - hi_h))  # 15 and 25 HU
    assert bounds[0] - 1e-3 <= loss[0] <= bounds[1] + 1e-3
    # The hard GTVp contrast over soft tissue (before noise, necrotic core aside) is within 0-25 HU +- texture.
    soft = TISSUES["soft"][0]
    core_free = p & (hu_h - soft > -10)
    assert -12 <= float(np.median(hu_h[core_free] - soft)) <= 27
    n = les_n.label == 2
    if n.any():
        expected = LESION["gtvn_hu_delta"][0] - HARD_HU_DELTA["gtvn_hu_delta"][0]
        assert np.allclose((hu_n - hu_h)[n], expected, atol=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_hot_spots_and_uptake_are_unlabelled(seed):
    _, suv_n, les, _ = _painted(seed)
    _, suv_h, les_h, counts = _painted(seed, HARD_HU_DELTA, hard=True)
    assert counts["hotspots"] >= HARD["n_hotspots"][0]
    changed = np.abs(suv_h - suv_n) > 1e-4
    assert changed.any()
    assert not (changed & (les.label > 0)).any(), "a lesion voxel was changed by the hard confounders"
    # At least one added spot outside the lesions is as hot as the lower half of the GTVn uptake range.
    assert float((suv_h - suv_n)[les.label == 0].max()) >= 1.0
    gain = ndimage.label((suv_h - suv_n) > 1.0)[1]
    assert gain >= 1


def test_physiological_uptake_is_drawn_over_cases():
    seen = {"brown_fat": 0, "muscle": 0, "reactive_nodes": 0}
    for seed in range(12):
        counts = _painted(seed, HARD_HU_DELTA, hard=True)[3]
        for key in seen:
            seen[key] += counts[key] > 0
    assert all(v >= 1 for v in seen.values()), seen
    assert all(v < 12 for v in (seen["brown_fat"], seen["muscle"])), seen  # drawn, not always present


def test_written_images_have_weaker_contrast_and_more_hot_voxels():
    """On the written CT / PET of 9 cases: GTVp contrast over the surrounding soft tissue drops, PET above 4 SUV
    outside the (dilated) lesions grows."""
    def contrast(case):
        m = case.label == 1
        shell = ndimage.binary_dilation(m, iterations=3) & ~ndimage.binary_dilation(m) & (case.label == 0)
        hu = case.ct.astype(float)
        inner = ndimage.binary_erosion(m)
        return hu[inner if inner.any() else m].mean() - np.median(hu[shell & (hu > -20) & (hu < 120)])

    diffs, normal_c, hard_c = [], [], []
    for centre, index in CASES:
        normal, hard = _pair(centre, index)
        if (normal.label == 1).any():
            normal_c.append(contrast(normal))
            hard_c.append(contrast(hard))
        diffs.append(float((hard.pet > 4).sum() - (normal.pet > 4).sum()))
    assert np.mean(hard_c) < np.mean(normal_c) - 8, (normal_c, hard_c)
    assert np.mean(hard_c) < 25
    assert np.mean(diffs) > 0 and sum(d > 0 for d in diffs) >= len(diffs) // 2


def test_recorded_in_the_dataset_and_demo_refuses_a_mismatch(tmp_path):
    hard = tmp_path / "hard"
    cfg = PhantomConfig(cases_per_centre=1, centres=("MDA",), ct_shape=(32, 32, 24), difficulty="hard")
    ids = synthesize_phantom(hard, cfg, progress=False)
    recorded = json.loads((hard / PHANTOM_FILE).read_text())
    assert recorded["difficulty"] == "hard" and recorded["cases"] == ids
    assert read_phantom_config(hard) == cfg
    normal = tmp_path / "demo" / "phantom"
    synthesize_phantom(normal, PhantomConfig(cases_per_centre=1, centres=("MDA",), ct_shape=(32, 32, 24)),
                       progress=False)
    assert not (normal / PHANTOM_FILE).exists() and (normal / ENDPOINT_FILE).is_file()
    assert read_phantom_config(normal) is None
    from pemma.protocol.demo import run_demo

    with pytest.raises(PemmaError, match="normal phantom, not the hard"):
        run_demo(tmp_path / "demo", phantom=PhantomConfig(difficulty="hard"), progress=False)
    (hard / PHANTOM_FILE).write_text("{not json")
    with pytest.raises(PemmaError, match="phantom.json"):
        read_phantom_config(hard)


def test_cli_synth_difficulty(tmp_path):
    out = tmp_path / "p"
    cmd = [sys.executable, "-m", "pemma.cli.main", "synth", str(out), "--cases-per-centre", "1", "--centres", "CHUV",
           "--shape", "32", "32", "24", "--difficulty", "hard"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "hard phantom" in done.stdout
    assert json.loads((out / PHANTOM_FILE).read_text())["difficulty"] == "hard"
    bad = subprocess.run(cmd[:-1] + ["extreme"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "difficulty" in bad.stderr
