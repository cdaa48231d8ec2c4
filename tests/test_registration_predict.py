"""A registered run's PET-only prediction lands on the CT through the registration, not the header geometry."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from pemma.config import build_config
from pemma.data.layout import discover_cases
from pemma.data.phantom_misalign import misalign_pet, rigid_matrix
from pemma.inference.predict import WindowSettings, predict_case
from pemma.models.loaded import LoadedModel

CASE = "CHUM-000"


class HotSpotNet(nn.Module):
    """A 'segmenter' whose answer follows the PET: GTVp where the scaled PET is above 0.2 (SUV above 4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = 50.0 * (x[:, -1:] - 0.2)  # PET is the last channel ([CT, PET] order)
        return torch.cat([torch.zeros_like(fg), fg, torch.full_like(fg, -50.0)], dim=1)


def _model(register: str) -> LoadedModel:
    cfg = build_config("tiny", overrides={"preprocess": {"register": register, "target_spacing": [3, 3, 3]},
                                          "model": {"roi_size": [32, 32, 32]}})
    return LoadedModel(net=HotSpotNet(), config=cfg, meta={}, input_sets=[["ct", "pet"], ["ct"], ["pet"]])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


@pytest.mark.slow
def test_pet_only_prediction_follows_the_registration(phantom: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEMMA_CACHE_DIR", str(tmp_path / "cache"))
    for name, moved in (("aligned", False), ("moved", True)):
        (tmp_path / name / "imagesTr").mkdir(parents=True)
        for suffix in ("CT", "PT"):
            shutil.copy(phantom / "imagesTr" / f"{CASE}__{suffix}.nii.gz", tmp_path / name / "imagesTr")
        if moved:
            ct = nib.load(tmp_path / name / "imagesTr" / f"{CASE}__CT.nii.gz")
            centre = ct.affine[:3, :3] @ ((np.asarray(ct.shape) - 1) / 2) + ct.affine[:3, 3]
            pet = tmp_path / name / "imagesTr" / f"{CASE}__PT.nii.gz"
            misalign_pet(pet, pet, rigid_matrix([6.0, 0.0, 8.0], [0.0, 0.0, 5.0], centre))
    (aligned,), (moved,) = discover_cases(tmp_path / "aligned"), discover_cases(tmp_path / "moved")

    def predict(case, register: str, modalities: list[str], reference: str = "ct") -> tuple[np.ndarray, np.ndarray]:
        label, ref = predict_case(_model(register), case, modalities, torch.device("cpu"), WindowSettings(),
                                  reference=reference)
        return label > 0, ref.affine

    truth, ct_affine = predict(aligned, "none", ["pet"])  # the hot spots where the CT anatomy is
    assert truth.sum() > 20
    header, _ = predict(moved, "none", ["pet"])
    registered, affine = predict(moved, "rigid", ["pet"])
    np.testing.assert_allclose(affine, ct_affine)  # on the CT grid
    assert _dice(header, truth) < 0.6  # the misalignment moves the answer
    assert _dice(registered, truth) > 0.8 and _dice(registered, truth) > _dice(header, truth) + 0.3
    # CT+PET input registers inside the preprocessing: the same answer as the PET-only one
    both, _ = predict(moved, "rigid", ["ct", "pet"])
    assert _dice(both, registered) > 0.9
    # on the PET grid the prediction stays in the PET's own header world, registered or not
    on_pet_none, pet_affine = predict(moved, "none", ["pet"], reference="pet")
    on_pet_rigid, _ = predict(moved, "rigid", ["pet"], reference="pet")
    np.testing.assert_allclose(pet_affine, nib.load(moved.images["pet"]).affine)
    assert np.array_equal(on_pet_none, on_pet_rigid)


def test_export_records_name_the_registration(tmp_path: Path) -> None:
    from pemma.methods.bundle import metadata
    from pemma.methods.exporting import preprocessing_record

    for register in ("none", "rigid"):
        model = _model(register)
        model.run_dir = tmp_path
        both, pet_only = (preprocessing_record(model, m, "bundle") for m in (["ct", "pet"], ["pet"]))
        assert both["registration"]["mode"] == pet_only["registration"]["mode"] == register
        described = metadata(model, both)["description"]
        if register == "none":
            assert both["registration"]["step"] is None and "registration" not in " ".join(both["steps"])
            assert "PET registration" not in described
        else:
            assert both["registration"]["spacing_mm"] == model.config.preprocess.register_spacing
            assert "register the PET to the CT (rigid" in both["steps"][1] and "PET registration" in described
            assert "not the header geometry" in pet_only["steps"][-1]
    assert preprocessing_record(_model("rigid"), ["ct"], "onnx")["registration"]["step"] is None
