"""The phantom's MR-like channel: deterministic, leaves CT / PET / labels as they were, shows the tumour, carries a
smooth bias field, and goes through discovery, check and preprocessing as a third modality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pemma.data.phantom import PhantomConfig, resample_to_grid, synthesize_case, synthesize_phantom
from pemma.data.phantom_mr import paint_mr

SMALL = {"ct_shape": (48, 48, 32), "centres": ("CHUM",), "cases_per_centre": 2}


def test_mr_is_deterministic_and_leaves_ct_pet_and_label_unchanged() -> None:
    plain = synthesize_case("CHUM", 1, PhantomConfig(**SMALL))
    with_mr = synthesize_case("CHUM", 1, PhantomConfig(**SMALL, modalities="ct,pet,mr"))
    again = synthesize_case("CHUM", 1, PhantomConfig(**SMALL, modalities=("mr", "pet", "ct")))
    assert plain.mr is None and with_mr.mr is not None and with_mr.mr.dtype == np.float32
    for name in ("ct", "pet", "label", "ct_affine", "pet_affine"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(with_mr, name))
    np.testing.assert_array_equal(with_mr.mr, again.mr)
    np.testing.assert_array_equal(with_mr.mr_affine, again.mr_affine)
    other = synthesize_case("CHUM", 0, PhantomConfig(**SMALL, modalities="ct,pet,mr"))
    assert not np.array_equal(other.mr[:10, :10, :10], with_mr.mr[:10, :10, :10])
    assert not np.allclose(with_mr.mr_affine, with_mr.ct_affine)  # its own grid, resampled by the pipeline
    with pytest.raises(ValueError, match="modalities must be ct,pet or ct,pet,mr"):
        PhantomConfig(modalities="ct,mr")


def test_mr_shows_the_tumour_against_soft_tissue_on_the_ct_grid() -> None:
    case = synthesize_case("CHUM", 1, PhantomConfig(**SMALL, modalities="ct,pet,mr"))
    mr = resample_to_grid(case.mr, case.mr_affine, case.ct_affine, case.ct.shape, order=1, mode="nearest")
    gtvp = case.label == 1
    assert gtvp.sum() > 20
    ring = ~gtvp & (case.label == 0) & (case.ct > -50) & (case.ct < 120)  # soft tissue and muscle
    assert np.median(mr[gtvp]) > 1.3 * np.median(mr[ring])
    air = case.ct < -900
    assert np.median(mr[air]) < 0.2 * np.median(mr[ring])


def test_the_bias_field_is_smooth_and_multiplicative() -> None:
    tissue = np.full((40, 40, 40), 40.0)  # one soft tissue everywhere: what varies is the bias field (and noise)
    image = paint_mr(tissue, np.zeros(tissue.shape, np.uint8), np.array([2.0, 2.0, 2.0]), np.random.default_rng(3))
    blocks = image.reshape(4, 10, 4, 10, 4, 10).mean(axis=(1, 3, 5))
    assert blocks.max() / blocks.min() > 1.15  # the field varies across the volume ...
    step = np.abs(np.diff(image, axis=0)).mean() / image.mean()
    assert step < 0.1  # ... but smoothly: neighbouring voxels differ by the noise only
    doubled = paint_mr(tissue, np.zeros(tissue.shape, np.uint8), np.array([2.0, 2.0, 2.0]), np.random.default_rng(3))
    np.testing.assert_array_equal(image, doubled)


def test_synth_writes_mr_files_that_discovery_check_and_preprocessing_read(tmp_path: Path) -> None:
    from pemma.config import build_config
    from pemma.data.check import check_cases
    from pemma.data.layout import discover_cases
    from pemma.data.transforms import preprocessing

    ids = synthesize_phantom(tmp_path, PhantomConfig(**SMALL, modalities="ct,pet,mr"), progress=False)
    assert sorted(p.name for p in (tmp_path / "imagesTr").glob("CHUM-000__*")) == [
        "CHUM-000__CT.nii.gz", "CHUM-000__MR.nii.gz", "CHUM-000__PT.nii.gz"]
    assert json.loads((tmp_path / "phantom.json").read_text())["modalities"] == ["ct", "pet", "mr"]
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ids and all(set(c.images) == {"ct", "pet", "mr"} for c in cases)
    assert check_cases(cases, ["ct", "pet", "mr"]).ok
    cfg = build_config("tiny", overrides={"data": {"modalities": "ct,pet,mr"}})
    item = {**cases[0].images, "label": cases[0].label, "case_id": cases[0].case_id}
    out = preprocessing(cfg.data.modalities, cfg.preprocess, cfg.model.roi_size, with_label=True)(item)
    image, label = np.asarray(out["image"]), np.asarray(out["label"][0])
    assert image.shape[0] == 3 and image.shape[1:] == label.shape
    ct, mr = image[0], image[2]
    assert abs(mr[mr != 0].mean()) < 0.2  # z-scored inside the body
    soft = (label == 0) & (mr != 0) & (ct > 0.4) & (ct < 0.74)  # -50..120 HU
    assert mr[label == 1].mean() > mr[soft].mean() + 0.5  # the tumour stands out against soft tissue


def test_a_ct_pet_phantom_writes_no_phantom_json(tmp_path: Path) -> None:
    synthesize_phantom(tmp_path, PhantomConfig(**{**SMALL, "cases_per_centre": 1}), progress=False)
    assert not (tmp_path / "phantom.json").exists()
    assert not list((tmp_path / "imagesTr").glob("*__MR*"))


@pytest.mark.slow
@pytest.mark.long  # CLI start-ups and two training steps
def test_cli_synth_train_evaluate_ct_mr(tmp_path: Path) -> None:
    from conftest import FAST, run_cli

    data, run = tmp_path / "phantom", tmp_path / "ctmr"
    run_cli("synth", str(data), "--cases-per-centre", "2", "--centres", "CHUM,MDA", "--shape", "48", "48", "32",
            "--modalities", "ct,pet,mr")
    run_cli("train", "--data", str(data), "--centres", "CHUM", "--modalities", "mr,ct", *FAST, "--max-steps", "2",
            "--out", str(run))
    assert json.loads((run / "model.json").read_text())["modalities"] == ["ct", "mr"]
    log = (run / "train.log").read_text()
    assert "inputs: CT, MR" in log and "MR: clip to percentiles [0.5, 99.5] inside the body, z-score" in log
    out = run_cli("evaluate", "--model", str(run), "--data", str(data), "--centres", "MDA", "--modalities", "ct,mr")
    assert "inputs ct+mr" in out.stdout and "cases   2" in out.stdout
