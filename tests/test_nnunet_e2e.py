"""Train, predict and evaluate on an nnU-Net raw copy of the phantom (``.mha`` files, GTVp / GTVn numbered the other
way round in ``dataset.json``, ``imagesTs`` with and without ``labelsTs``), through every ``--input`` form; PET-only
predictions on the CT grid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import FAST, main_result, run_main

from pemma.io_utils import save_nifti

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
TRAIN = ("CHUM-000", "CHUM-001", "CHUP-000", "CHUP-001")
TEST = ("MDA-000", "MDA-001")


def _to_mha(src: Path, dst: Path, swap_labels: bool = False) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.ReadImage(str(src))
    if swap_labels:  # the file numbers GTVn 1 and GTVp 2
        array = sitk.GetArrayFromImage(image)
        swapped = sitk.GetImageFromArray(np.where(array == 1, 2, np.where(array == 2, 1, 0)).astype(np.uint8))
        swapped.CopyInformation(image)
        image = swapped
    sitk.WriteImage(image, str(dst))


@pytest.fixture(scope="module")
def nnunet(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nnunet") / "Dataset501_HN"
    for folder, cases in (("Tr", TRAIN), ("Ts", TEST)):
        for cid in cases:
            _to_mha(phantom / "imagesTr" / f"{cid}__CT.nii.gz", root / f"images{folder}" / f"{cid}_0000.mha")
            _to_mha(phantom / "imagesTr" / f"{cid}__PT.nii.gz", root / f"images{folder}" / f"{cid}_0001.mha")
            if cid != "MDA-001":  # one test case without a label
                _to_mha(phantom / "labelsTr" / f"{cid}.nii.gz", root / f"labels{folder}" / f"{cid}.mha", True)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT", "1": "FDG PET"}, "labels": {"background": 0, "GTVn": 1, "GTVp": 2},
        "numTraining": len(TRAIN), "file_ending": ".mha"}))
    return root


def test_train_predict_evaluate_on_nnunet_raw(nnunet: Path, phantom: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_main("train", "--data", str(nnunet), "--modalities", "ct", *FAST, "--val-fraction", "0.5", "--max-steps", "2",
             "--out", str(run))
    meta = json.loads((run / "model.json").read_text())
    assert sorted(meta["train_cases"] + meta["val_cases"]) == list(TRAIN)  # imagesTs is never trained on
    assert (run / "training_curves.png").is_file() and list(run.glob("events.out.tfevents.*"))

    preds = tmp_path / "preds"  # the nnU-Net -i folder
    run_main("predict", "--model", str(run), "--input", str(nnunet / "imagesTs"), "--out", str(preds))
    assert sorted(p.name for p in preds.iterdir()) == [f"{c}.nii.gz" for c in TEST]
    for cid in TEST:  # written in the original CT geometry
        ct, pred = nib.load(phantom / "imagesTr" / f"{cid}__CT.nii.gz"), nib.load(preds / f"{cid}.nii.gz")
        assert pred.shape == ct.shape and np.allclose(pred.affine, ct.affine, atol=1e-4)

    single = tmp_path / "single"  # one channel file
    run_main("predict", "--model", str(run), "--input", str(nnunet / "imagesTs" / "MDA-001_0000.mha"), "--out",
             str(single))
    plain = tmp_path / "plain"  # CT files of any names (NIfTI here): the same CT gives the same prediction
    plain.mkdir()
    shutil.copy(phantom / "imagesTr" / "MDA-000__CT.nii.gz", plain / "patient x.nii.gz")
    plain_out = tmp_path / "plain_out"
    run_main("predict", "--model", str(run), "--input", str(plain), "--out", str(plain_out))
    np.testing.assert_array_equal(nib.load(single / "MDA-001.nii.gz").get_fdata(),
                                  nib.load(preds / "MDA-001.nii.gz").get_fdata())
    np.testing.assert_array_equal(nib.load(plain_out / "patient x.nii.gz").get_fdata(),
                                  nib.load(preds / "MDA-000.nii.gz").get_fdata())

    # the phantom's ground truth (GTVp 1, GTVn 2) scored against the dataset whose files number them the other way:
    # a perfect score only if dataset.json's label names are honoured
    truth = tmp_path / "truth"
    truth.mkdir()
    for cid in TRAIN:
        shutil.copy(phantom / "labelsTr" / f"{cid}.nii.gz", truth / f"{cid}.nii.gz")
    _to_mha(phantom / "labelsTr" / "MDA-000.nii.gz", truth / "MDA-000.mha")  # as nnU-Net writes its file_ending
    # the numbering of the predictions is ambiguous on such a dataset: the user says which, or gets one line
    refused = main_result("evaluate", "--pred", str(truth), "--data", str(nnunet), "--out", str(tmp_path / "x"))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr and not (tmp_path / "x").exists()
    assert "numbers its labels otherwise than pemma (GTVn 1, GTVp 2" in refused.stderr
    assert "--pred-labels dataset" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    run_main("evaluate", "--pred", str(truth), "--data", str(nnunet), "--pred-labels", "pemma", "--out",
             str(tmp_path / "eval_truth"))
    scores = json.loads((tmp_path / "eval_truth" / "metrics_predictions.json").read_text())
    assert scores["n_cases"] == 5 and scores["DSCagg"]["GTVp"] == 1.0 and scores["DSCagg"]["GTVn"] == 1.0
    # nnU-Net's own predictions carry the dataset's numbering (here its label files, copied): --pred-labels dataset
    nnunet_preds = tmp_path / "nnunet_preds"
    nnunet_preds.mkdir()
    for cid in (*TRAIN, "MDA-000"):
        folder = "Tr" if cid in TRAIN else "Ts"
        shutil.copy(nnunet / f"labels{folder}" / f"{cid}.mha", nnunet_preds / f"{cid}.mha")
    for numbering, perfect in (("dataset", True), ("pemma", False)):
        out = tmp_path / f"eval_{numbering}"
        run_main("evaluate", "--pred", str(nnunet_preds), "--data", str(nnunet), "--pred-labels", numbering,
                 "--out", str(out))
        dsc = json.loads((out / "metrics_predictions.json").read_text())["DSCagg"]
        assert (dsc["GTVp"] == 1.0 and dsc["GTVn"] == 1.0) is perfect, (numbering, dsc)

    run_main("evaluate", "--model", str(run), "--data", str(nnunet), "--out", str(tmp_path / "eval_model"))
    scores = json.loads((tmp_path / "eval_model" / "metrics_ct.json").read_text())
    assert sorted(c["case_id"] for c in scores["cases"]) == sorted((*TRAIN, "MDA-000"))  # MDA-001 has no label


def test_pet_only_predictions_on_the_ct_grid(phantom: Path, tmp_path: Path) -> None:
    run = tmp_path / "pet"
    run_main("train", "--data", str(phantom), "--centres", "CHUM", "--modalities", "pet", *FAST, "--max-steps", "1",
             "--out", str(run))
    ct = nib.load(phantom / "imagesTr" / "MDA-000__CT.nii.gz")
    pet = nib.load(phantom / "imagesTr" / "MDA-000__PT.nii.gz")
    for reference, grid in (("ct", ct), ("pet", pet)):
        out = tmp_path / reference
        run_main("predict", "--model", str(run), "--input", str(phantom / "imagesTr"), "--centres", "MDA",
                 "--modalities", "pet", "--reference", reference, "--out", str(out))
        pred = nib.load(out / "MDA-000.nii.gz")
        assert pred.shape == grid.shape and np.allclose(pred.affine, grid.affine, atol=1e-4), reference
    assert ct.shape != pet.shape
    lone = tmp_path / "lone"  # no CT beside the PET: the PET grid
    save_nifti(np.asanyarray(pet.dataobj), pet.affine, lone / "imagesTr" / "MDA-000__PT.nii.gz")
    run_main("predict", "--model", str(run), "--input", str(lone), "--modalities", "pet", "--out", str(lone / "out"))
    pred = nib.load(lone / "out" / "MDA-000.nii.gz")
    assert pred.shape == pet.shape and np.allclose(pred.affine, pet.affine, atol=1e-4)
