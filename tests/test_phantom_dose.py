"""The phantom's planned RT dose: Gy on the CT grid (about 70 Gy over the tumours, 54 Gy around them, a smooth
fall-off, 0 outside the body), CT / PET / MR / labels byte-identical with and without it, read as the ``dose``
modality (never registered), and stacked on a CT+PET run by ``pemma adapt --add-modality dose``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from pemma.data.phantom import DOSE_SUFFIX, PhantomConfig, synthesize_case, synthesize_phantom
from pemma.data.phantom_dose import ELECTIVE_GY, HIGH_GY, paint_dose

SMALL = {"ct_shape": (48, 48, 32), "centres": ("CHUM",), "cases_per_centre": 2, "seed": 1}


def test_dose_leaves_ct_pet_mr_and_labels_byte_identical(tmp_path: Path) -> None:
    with_mr = synthesize_case("CHUM", 1, PhantomConfig(**SMALL, modalities="ct,pet,mr"))
    with_dose = synthesize_case("CHUM", 1, PhantomConfig(**SMALL, modalities="ct,pet,mr,dose"))
    assert with_mr.dose is None and with_dose.dose is not None and with_dose.dose.dtype == np.float32
    for name in ("ct", "pet", "label", "ct_affine", "pet_affine", "mr", "mr_affine"):
        np.testing.assert_array_equal(getattr(with_mr, name), getattr(with_dose, name))
    synthesize_phantom(tmp_path / "a", PhantomConfig(**SMALL), progress=False)
    synthesize_phantom(tmp_path / "b", PhantomConfig(**SMALL, modalities="dose,ct,pet"), progress=False)
    for case in ("CHUM-000", "CHUM-001"):  # the files too, byte for byte
        for name in (f"imagesTr/{case}__CT.nii.gz", f"imagesTr/{case}__PT.nii.gz", f"labelsTr/{case}.nii.gz"):
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert json.loads((tmp_path / "b" / "phantom.json").read_text())["modalities"] == ["ct", "pet", "dose"]


def test_dose_covers_the_tumours_falls_off_smoothly_and_is_zero_outside_the_body() -> None:
    case = synthesize_case("CHUM", 0, PhantomConfig(**SMALL, modalities="ct,pet,dose"))
    dose, label, spacing = case.dose, case.label, np.asarray(PhantomConfig().ct_spacing)
    assert dose.shape == case.ct.shape and dose.min() >= 0.0
    assert HIGH_GY - 2.0 < dose.max() <= HIGH_GY + 1e-3
    tumour = label > 0
    assert dose[tumour].min() > 0.9 * HIGH_GY and dose[tumour].mean() > 0.95 * HIGH_GY  # ~70 Gy covers GTVp / GTVn
    distance = ndimage.distance_transform_edt(~tumour, sampling=spacing)
    elective = (distance > 10.0) & (distance < 14.0)
    assert abs(float(np.median(dose[elective])) - ELECTIVE_GY) < 4.0  # the elective region
    far = distance > 45.0
    assert float(dose[far].max()) < 0.5 * ELECTIVE_GY  # falls off away from the targets
    inside = ndimage.binary_erosion(case.ct > -300, iterations=2)  # the dose drops to 0 at the skin only
    steps = np.abs(np.diff(dose, axis=0))[inside[1:] & inside[:-1]]
    assert float(steps.max()) < 0.4 * HIGH_GY  # smoothly inside the body: no jump of a whole level
    body = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(case.ct > -500, 2, 0)], axis=2)
    outside = ~ndimage.binary_dilation(body, iterations=2)  # (the CT's skin is blurred, the painted one is not)
    assert np.all(dose[outside] == 0.0) and outside.sum() > 1000  # air outside the body (the airway gets dose)
    assert np.array_equal(paint_dose(label, np.zeros(label.shape, bool), spacing), np.zeros(label.shape))
    assert not paint_dose(np.zeros_like(label), np.ones(label.shape, bool), spacing).any()


def test_synth_writes_the_dose_under_the_spec_suffix_and_preprocessing_reads_it(tmp_path: Path) -> None:
    import nibabel as nib

    from pemma.config import PreprocessConfig, build_config
    from pemma.data.layout import discover_cases
    from pemma.data.transforms import describe, preprocessing
    from pemma.modalities import CATALOGUE

    synthesize_phantom(tmp_path, PhantomConfig(**SMALL, modalities="ct,pet,dose"), progress=False)
    assert DOSE_SUFFIX == CATALOGUE["dose"].suffixes[0] == "__RTDOSE"
    dose_file = tmp_path / "imagesTr" / "CHUM-000__RTDOSE.nii.gz"
    ct_file = tmp_path / "imagesTr" / "CHUM-000__CT.nii.gz"
    np.testing.assert_array_equal(nib.load(dose_file).affine, nib.load(ct_file).affine)  # on the CT grid
    cases = discover_cases(tmp_path)
    assert all(set(c.images) == {"ct", "pet", "dose"} for c in cases)
    cfg = build_config("tiny", overrides={"data": {"modalities": "ct,pet,dose"}, "preprocess": {"register": "rigid"}})
    assert not any("DOSE" in line for line in describe(cfg.data.modalities, cfg.preprocess)
                   if line.startswith("registration"))
    cfg = build_config("tiny", overrides={"data": {"modalities": "ct,pet,dose"}})
    item = {**cases[0].images, "label": cases[0].label, "case_id": cases[0].case_id}
    out = preprocessing(cfg.data.modalities, cfg.preprocess, cfg.model.roi_size, with_label=True)(item)
    image, label = np.asarray(out["image"]), np.asarray(out["label"][0])
    assert image.shape[0] == 3
    dose = image[2]  # scaled by the spec's range [0, 80] Gy
    assert 0.0 <= dose.min() and dose.max() <= HIGH_GY / 80.0 + 1e-3
    assert dose[label > 0].mean() > 0.8 * HIGH_GY / 80.0
    assert PreprocessConfig().modality_registry()["dose"].register is False


@pytest.mark.slow
@pytest.mark.long  # CLI: synth with dose, a CT base, CT+PET, then dose stacked; predict on the result
def test_cli_stack_dose_on_a_ct_pet_run(tmp_path: Path) -> None:
    from conftest import FAST, run_cli

    data = tmp_path / "phantom"
    run_cli("synth", str(data), "--cases-per-centre", "2", "--centres", "CHUM,MDA", "--shape", "48", "48", "32",
            "--modalities", "ct,pet,dose")
    run_cli("train", "--data", str(data), "--centres", "CHUM", "--modalities", "ct", *FAST, "--max-steps", "1",
            "--out", str(tmp_path / "ct"))
    run_cli("adapt", "--base", str(tmp_path / "ct"), "--data", str(data), "--centres", "MDA", *FAST,
            "--max-steps", "1", "--out", str(tmp_path / "ctpet"))
    proc = run_cli("adapt", "--base", str(tmp_path / "ctpet"), "--data", str(data), "--centres", "MDA",
                   "--add-modality", "dose", *FAST, "--max-steps", "1", "--out", str(tmp_path / "ctpetdose"))
    assert "DSCagg (CT+PET+DOSE)" in proc.stdout
    log = (tmp_path / "ctpetdose" / "train.log").read_text()
    assert "DOSE: clip Gy to [0.0, 80.0], scale to [0, 1]" in log
    out = tmp_path / "pred"
    run_cli("predict", "--model", str(tmp_path / "ctpetdose"), "--input", str(data), "--centres", "MDA",
            "--modalities", "ct,pet,dose", "--out", str(out))
    assert len(list(out.glob("*.nii.gz"))) == 2
