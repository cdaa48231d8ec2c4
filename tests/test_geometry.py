"""Predictions come back in the original CT geometry, aligned voxel for voxel (real CT and oblique grids)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nibabel.arrayproxy import ArrayProxy
from torch import nn

from pemma.config import build_config
from pemma.data.layout import discover_cases
from pemma.data.transforms import preprocessing
from pemma.inference.predict import WindowSettings, predict_cases
from pemma.io_utils import save_nifti
from pemma.models.loaded import LoadedModel

# a crop of a real chest CT (pyradiomics lung1; tests/data/README.md): scanner header, LPS flips, 5 mm slices
REAL_CT = Path(__file__).resolve().parent / "data" / "lung1_ct.nii.gz"


class ThresholdNet(nn.Module):
    """A 'segmenter' whose answer is known: GTVp where the scaled CT is above 0.5 (HU > threshold)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = 20.0 * (x[:, :1] - 0.5)
        return torch.cat([torch.zeros_like(fg), fg, torch.full_like(fg, -50.0)], dim=1)


def _threshold_model(window_hu: tuple[float, float]) -> LoadedModel:
    cfg = build_config("tiny", overrides={"preprocess": {"ct_window": list(window_hu), "target_spacing": [2, 2, 2],
                                                         "crop_mm": [400, 400, 400]},
                                          "model": {"roi_size": [48, 48, 48]}})
    return LoadedModel(net=ThresholdNet(), config=cfg, meta={}, input_sets=[["ct"]])


def _same_geometry(a: Path, b: Path) -> None:
    ia, ib = sitk.ReadImage(str(a)), sitk.ReadImage(str(b))
    assert ia.GetSize() == ib.GetSize()
    np.testing.assert_allclose(ia.GetSpacing(), ib.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(ia.GetOrigin(), ib.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ia.GetDirection(), ib.GetDirection(), atol=1e-6)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_real_ct_round_trip(tmp_path: Path) -> None:
    # soft tissue / bone above 100 HU, window centred there, so the known answer is CT > 100 HU
    real = nib.load(str(REAL_CT))  # what makes it a real-geometry case: flipped axes, anisotropic, offset
    assert np.sign(np.diag(real.affine)[:3]).tolist() == [-1.0, -1.0, 1.0]  # scanner LPS: x, y flipped in RAS
    assert real.header.get_zooms() == (0.5703125, 0.5703125, 5.0) and real.get_data_dtype() == np.int16
    assert np.abs(real.affine[:3, 3]).min() > 50
    model = _threshold_model((-300.0, 500.0))
    (out,) = predict_cases(model, discover_cases(REAL_CT), ["ct"], tmp_path, torch.device("cpu"),
                           WindowSettings(), progress=False)
    _same_geometry(REAL_CT, out)
    pred = np.asanyarray(nib.load(str(out)).dataobj)
    expected = np.asanyarray(nib.load(str(REAL_CT)).dataobj) > 100
    assert pred.dtype == np.uint8 and set(np.unique(pred)) <= {0, 1}
    assert _dice(pred == 1, expected) > 0.85


def test_predict_reads_the_ct_voxels_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``predict`` decompresses the CT once (in preprocessing); the output geometry comes from its header."""
    reads: list[str] = []
    plain = ArrayProxy._get_scaled

    def counting(self, *args, **kwargs):
        reads.append(Path(self.file_like).name)
        return plain(self, *args, **kwargs)

    monkeypatch.setattr(ArrayProxy, "_get_scaled", counting)
    (out,) = predict_cases(_threshold_model((-300.0, 500.0)), discover_cases(REAL_CT), ["ct"], tmp_path,
                           torch.device("cpu"), WindowSettings(), progress=False)
    assert reads == [REAL_CT.name]
    _same_geometry(REAL_CT, out)


def _oblique_affine(spacing, degrees: float, origin) -> np.ndarray:
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    tilt = np.deg2rad(degrees / 3)
    rot = rot @ np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def test_oblique_anisotropic_round_trip(tmp_path: Path) -> None:
    shape, spacing = (60, 50, 30), (1.3, 0.9, 3.5)
    ijk = np.indices(shape).astype(float)
    centre = np.array([30, 22, 16])[:, None, None, None]
    radius_mm = np.sqrt((((ijk - centre) * np.array(spacing)[:, None, None, None]) ** 2).sum(0))
    ct = np.where(radius_mm < 25, 300, -1000).astype(np.int16)  # a 25 mm ball of 'tissue'
    affine = _oblique_affine(spacing, 25.0, (-40.0, 13.0, 200.0))
    path = tmp_path / "imagesTr" / "CHUV-001__CT.nii.gz"
    save_nifti(ct, affine, path)
    model = _threshold_model((-1000.0, 1000.0))
    (out,) = predict_cases(model, discover_cases(tmp_path), ["ct"], tmp_path / "pred", torch.device("cpu"),
                           progress=False)
    _same_geometry(path, out)
    pred = np.asanyarray(nib.load(str(out)).dataobj)
    assert _dice(pred == 1, ct > 0) > 0.9


def test_label_one_voxel_off_the_ct_grid(tmp_path: Path) -> None:
    """HECKTOR quirk: a label with one extra slice (same spacing) is resampled onto the CT grid by nearest
    neighbour, in evaluation and in the training pipeline."""
    from pemma.data.layout import CaseRecord
    from pemma.data.transforms import preprocessing
    from pemma.evaluation.evaluate import label_on_grid

    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    ct = np.full((20, 20, 12), -1000, np.int16)
    ct[4:16, 4:16, :] = 40
    label = np.zeros((20, 20, 13), np.uint8)  # one slice more than the CT
    label[8:12, 8:12, 5:8] = 1
    label[2:4, 2:4, 12] = 2  # lies on the extra slice, outside the CT grid
    save_nifti(ct, affine, tmp_path / "CHUS-001__CT.nii.gz")
    save_nifti(label, affine, tmp_path / "CHUS-001.nii.gz", dtype=np.uint8)
    case = CaseRecord("CHUS-001", "CHUS", {"ct": str(tmp_path / "CHUS-001__CT.nii.gz")},
                      str(tmp_path / "CHUS-001.nii.gz"))
    on_grid = label_on_grid(case, nib.load(str(tmp_path / "CHUS-001__CT.nii.gz")))
    assert on_grid.shape == ct.shape
    np.testing.assert_array_equal(on_grid, label[:, :, :12])

    cfg = build_config("tiny", overrides={"preprocess": {"target_spacing": [2, 2, 3]}}).preprocess
    item = preprocessing(["ct"], cfg, [16, 16, 16], with_label=True)(
        {"case_id": "CHUS-001", "ct": case.images["ct"], "label": case.label})
    assert item["image"].shape[1:] == item["label"].shape[1:]
    assert int((item["label"] == 1).sum()) == int((label == 1).sum())
    assert int((item["label"] == 2).sum()) == 0


def test_pet_is_interpolated_once_onto_the_crop(tmp_path: Path) -> None:
    """The PET is resampled once, straight onto the CT's target-spacing crop: where a target voxel centre is a PET
    voxel centre it gets that voxel's value exactly (a narrow hot spot keeps its SUVmax). Through the native CT grid
    first (0.7 mm, not a divisor of the PET's 4 mm), the spot was interpolated twice and its SUVmax lost."""
    ct_affine = np.diag([0.7, 0.7, 0.7, 1.0])
    save_nifti(np.zeros((100, 100, 60), np.int16), ct_affine, tmp_path / "c__CT.nii.gz", dtype=np.int16)
    pet = np.ones((18, 18, 11), np.float32)
    pet[5, 6, 4] = 10.0  # world (20, 24, 16) mm: a target voxel centre of the 2 mm grid from the CT origin
    save_nifti(pet, np.diag([4.0, 4.0, 4.0, 1.0]), tmp_path / "c__PT.nii.gz", dtype=np.float32)
    cfg = build_config("tiny", overrides={"preprocess": {"target_spacing": [2, 2, 2], "crop_mm": [400, 400, 400],
                                                         "body_threshold_hu": -500.0, "pet_suv_range": [0, 20]}})
    item = {"case_id": "c", "ct": str(tmp_path / "c__CT.nii.gz"), "pet": str(tmp_path / "c__PT.nii.gz")}
    image = preprocessing(["ct", "pet"], cfg.preprocess, [8, 8, 8], with_label=False)(item)["image"]
    affine = np.asarray(image.affine)
    np.testing.assert_allclose(np.diag(affine)[:3], [2, 2, 2])
    spot = np.round(np.linalg.solve(affine, [20.0, 24.0, 16.0, 1.0])[:3]).astype(int)
    suv = 20.0 * image[1].numpy()
    assert suv[tuple(spot)] == pytest.approx(10.0, abs=1e-4)
    assert suv.max() == pytest.approx(10.0, abs=1e-4)
    assert suv[tuple(spot + [2, 0, 0])] == pytest.approx(1.0, abs=1e-4)  # the next PET voxel centre, 4 mm on
