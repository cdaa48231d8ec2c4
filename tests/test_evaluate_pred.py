"""Model-free evaluation: score an existing folder of predictions (another tool's) against the labels, equal to
model-based evaluation of the same predictions; JSON has null for undefined values; training cases are flagged."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import FAST

from pemma.cli.main import main
from pemma.io_utils import save_nifti


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_labels_as_predictions_score_one(phantom: Path, tmp_path: Path) -> None:
    preds = tmp_path / "preds"
    preds.mkdir()
    for label in sorted((phantom / "labelsTr").glob("MDA-*.nii.gz")):
        shutil.copy(label, preds / label.name)
    code, out, err = _run(["evaluate", "--pred", str(preds), "--data", str(phantom), "--centres", "MDA"])
    assert code == 0, err
    report = json.loads((preds / "evaluation" / "metrics_predictions.json").read_text())
    assert report["n_cases"] == 2 and report["DSCagg"]["GTVp"] == 1.0
    assert all(c["hd95_GTVp"] == 0.0 for c in report["cases"]) and "undefined (null)" in report["hd95_policy"]
    assert "NaN" not in (preds / "evaluation" / "metrics_predictions.json").read_text()


def test_a_missing_or_off_grid_prediction_is_one_line(phantom: Path, tmp_path: Path) -> None:
    preds = tmp_path / "preds"
    preds.mkdir()
    code, _, err = _run(["evaluate", "--pred", str(preds), "--data", str(phantom), "--centres", "MDA"])
    assert code == 2 and "no prediction for case MDA-000 (expected MDA-000.nii.gz)" in err
    label = nib.load(str(phantom / "labelsTr" / "MDA-000.nii.gz"))
    save_nifti(np.asanyarray(label.dataobj)[::2], label.affine, preds / "MDA-000.nii.gz", dtype=np.uint8)
    code, _, err = _run(["evaluate", "--pred", str(preds), "--data", str(phantom), "--centres", "MDA"])
    assert code == 2 and "prediction of case MDA-000 is not on its CT grid (shape (24, 48, 32) vs (48, 48, 32)" in err
    # the same shape elsewhere: the message says what differs (it printed two equal shapes)
    moved = label.affine.copy()
    moved[:3, 3] += [6.0, 8.0, 0.0]
    save_nifti(np.asanyarray(label.dataobj), moved, preds / "MDA-000.nii.gz", dtype=np.uint8)
    code, _, err = _run(["evaluate", "--pred", str(preds), "--data", str(phantom), "--centres", "MDA"])
    assert code == 2 and "not on its CT grid (origin 10.0 mm apart, prediction vs CT)" in err
    flipped = label.affine @ np.diag([-1.0, 1.0, 1.0, 1.0])
    save_nifti(np.asanyarray(label.dataobj), flipped, preds / "MDA-000.nii.gz", dtype=np.uint8)
    code, _, err = _run(["evaluate", "--pred", str(preds), "--data", str(phantom), "--centres", "MDA"])
    assert code == 2 and "orientation" in err and "origin" not in err
    # the CT's own grid stored in another orientation (x reversed, the affine adjusted): the same voxels, scored
    nib.save(label.as_reoriented([[0, -1], [1, 1], [2, 1]]), preds / "MDA-000.nii.gz")
    shutil.copy(phantom / "labelsTr" / "MDA-001.nii.gz", preds / "MDA-001.nii.gz")
    code, _, err = _run(["evaluate", "--pred", str(preds), "--data", str(phantom), "--centres", "MDA"])
    report = json.loads((preds / "evaluation" / "metrics_predictions.json").read_text())
    assert code == 0 and report["DSCagg"]["GTVp"] == 1.0, err
    turned = label.as_reoriented([[0, -1], [1, 1], [2, 1]])  # the same, 4D with a singleton channel
    nib.save(nib.Nifti1Image(np.asanyarray(turned.dataobj)[..., None], turned.affine), preds / "MDA-000.nii.gz")
    code, _, err = _run(["evaluate", "--pred", str(preds), "--data", str(phantom), "--centres", "MDA"])
    assert code == 0 and json.loads((preds / "evaluation" / "metrics_predictions.json").read_text())["DSCagg"][
        "GTVp"] == 1.0, err
    with pytest.raises(SystemExit):  # argparse: --model or --pred is required
        _run(["evaluate", "--data", str(phantom)])


@pytest.mark.slow
def test_model_free_equals_model_based(phantom: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, _, err = _run(["train", "--data", str(phantom), "--centres", "CHUM", "--modalities", "ct", *FAST,
                         "--max-steps", "1", "--out", str(run)])
    assert code == 0, err
    code, _, err = _run(["evaluate", "--model", str(run), "--data", str(phantom), "--centres", "CHUM,MDA",
                         "--save-predictions", "--out", str(tmp_path / "eval")])
    assert code == 0 and "pemma evaluate: warning: 2 of 4 evaluated cases were training cases of" in err
    model_based = json.loads((tmp_path / "eval" / "metrics_ct.json").read_text())
    code, _, err = _run(["evaluate", "--pred", str(tmp_path / "eval" / "predictions_ct"), "--data", str(phantom),
                         "--centres", "CHUM,MDA", "--out", str(tmp_path / "free")])
    assert code == 0, err
    model_free = json.loads((tmp_path / "free" / "metrics_predictions.json").read_text())
    assert model_free["DSCagg"] == model_based["DSCagg"] and model_free["counts"] == model_based["counts"]
    assert [c["dice_GTVp"] for c in model_free["cases"]] == [c["dice_GTVp"] for c in model_based["cases"]]
    code, _, err = _run(["evaluate", "--model", str(run), "--data", str(phantom), "--centres", "CHUM,MDA",
                         "--split", "unseen", "--out", str(tmp_path / "eval")])
    unseen = json.loads((tmp_path / "eval" / "metrics_ct_unseen.json").read_text())  # beside, not over, all cases'
    assert code == 0 and "training cases" not in err and unseen["centres"] == ["MDA"]
    assert json.loads((tmp_path / "eval" / "metrics_ct.json").read_text()) == model_based
    code, _, err = _run(["evaluate", "--model", str(run), "--data", str(phantom), "--centres", "CHUM",
                         "--split", "train", "--out", str(tmp_path / "eval")])
    assert code == 0 and "training cases" not in err  # asked for: no warning
    trained = json.loads((run / "model.json").read_text())["train_cases"]
    scored = json.loads((tmp_path / "eval" / "metrics_ct_train.json").read_text())["cases"]
    assert sorted(c["case_id"] for c in scored) == sorted(trained)


def test_a_models_training_cases_are_known_under_either_id_spelling() -> None:
    """An nnU-Net copy of a HECKTOR folder spells MDA-000 as MDA_000: --split unseen scored the model's own training
    cases there (and the training-case warning stayed silent)."""
    from pemma.api.inference import _split_cases
    from pemma.data.case import CaseRecord, patient_key

    assert patient_key("MDA_000") == patient_key("mda-000") == patient_key(" MDA-000") == "MDA-000"
    cases = [CaseRecord(cid, "MDA", {"ct": "x"}) for cid in ("MDA_000", "MDA_001", "MDA_002")]
    meta = {"train_cases": ["MDA-000"], "val_cases": ["MDA-001"]}
    assert [c.case_id for c in _split_cases(cases, meta, "unseen", "nnraw")] == ["MDA_002"]
    assert [c.case_id for c in _split_cases(cases, meta, "train", "nnraw")] == ["MDA_000"]
    assert [c.case_id for c in _split_cases(cases, meta, "val", "nnraw")] == ["MDA_001"]


def _lineage_run(folder: Path, train: list[str], val: list[str] | None = None, **links: str) -> Path:
    """A run folder holding only the ``model.json`` fields a lineage reads."""
    folder.mkdir(parents=True)
    meta = {"kind": "pemma", "train_cases": train, "val_cases": val or [], **links}
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def _unseen(run: Path, cases: list, base: str | None = None) -> list[str]:
    from pemma.api.inference import _lineage_cases, _split_cases

    meta = json.loads((run / "model.json").read_text())
    lineage = _lineage_cases(str(run), meta, base)
    return [c.case_id for c in _split_cases(cases, meta, "unseen", str(run), lineage)]


def test_unseen_leaves_out_the_cases_of_every_run_in_the_lineage(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """--split unseen knew only the evaluated run's own cases: an adapted run scored its CT base's training cases,
    an update the cases the run it continued was adapted on (each run records only its own)."""
    import logging

    from pemma.data.case import CaseRecord

    base = _lineage_run(tmp_path / "base", ["CHUM-000"], ["CHUM-001"])
    adapted = _lineage_run(tmp_path / "ad", ["MDA-000"], base_run=str(base))
    first = _lineage_run(tmp_path / "up1", ["CHUP-000"], base_run=str(base), updated_from=str(adapted))
    second = _lineage_run(tmp_path / "up2", ["HGJ-000"], base_run=str(base), updated_from=str(first))
    stacked = _lineage_run(tmp_path / "stacked", ["HGJ-001"], base_run=str(second))  # a level records its parent
    ids = ("CHUM-000", "CHUM-001", "MDA-000", "MDA-001", "CHUP-000", "HGJ-000", "HGJ-001")
    cases = [CaseRecord(i.replace("-", "_"), i[:-4], {"ct": "x"}) for i in ids]  # either ID spelling
    assert _unseen(adapted, cases) == ["MDA_001", "CHUP_000", "HGJ_000", "HGJ_001"]
    with caplog.at_level(logging.INFO, logger="pemma.evaluate"):
        caplog.clear()
        assert _unseen(stacked, cases) == ["MDA_001"]
    logged = [r.getMessage() for r in caplog.records if r.name == "pemma.evaluate"]
    assert logged == [f"--split unseen: left out 6 of 7 cases trained or validated on: 1 by {stacked} (this model); "
                      f"1 by {second} (base_run of {stacked}); 1 by {first} (updated_from of {second}); "
                      f"1 by {adapted} (updated_from of {first}); 2 by {base} (base_run of {adapted})"]
    # the CT base moved (evaluate --base): the runs recording its old path find it at the new one
    moved = base.rename(tmp_path / "moved_base")
    assert _unseen(second, cases, base=str(moved)) == ["MDA_001", "HGJ_001"]


def test_a_missing_lineage_run_is_one_warning_naming_it(tmp_path: Path) -> None:
    from pemma.data.case import CaseRecord

    base = _lineage_run(tmp_path / "base", ["CHUM-000"])
    update = _lineage_run(tmp_path / "up", ["CHUP-000"], base_run=str(base), updated_from=str(tmp_path / "gone"))
    cases = [CaseRecord(i, i[:-4], {"ct": "x"}) for i in ("CHUM-000", "CHUP-000", "MDA-000")]
    with pytest.warns(UserWarning, match=rf"^{tmp_path / 'gone'}: not found \(updated_from of {update}\); the cases "
                                         "it trained or validated on cannot be left out of --split unseen$"):
        assert _unseen(update, cases) == ["MDA-000"]


@pytest.mark.slow
def test_unseen_split_of_adapted_and_updated_runs(bases: dict[str, Path], phantom: Path, tmp_path: Path) -> None:
    """End to end: the base trained on CHUM and CHUP, the adaptation on MDA, the update on CHUP."""
    from conftest import main_result, run_main

    adapted, update = tmp_path / "ad", tmp_path / "up"
    run_main("adapt", "--base", str(bases["unetr"]), "--data", str(phantom), "--centres", "MDA", *FAST,
             "--max-steps", "2", "--out", str(adapted))
    done = main_result("evaluate", "--model", str(adapted), "--data", str(phantom), "--centres", "CHUM,CHUP",
                       "--modalities", "ct", "--split", "unseen", "--out", str(tmp_path / "eval"))
    assert done.returncode == 2 and "no unseen cases of this model among the 4 selected cases" in done.stderr
    assert f"4 by {bases['unetr'].resolve()} (base_run of {adapted})" in done.stderr
    run_main("update", "--model", str(adapted), "--data", str(phantom), "--centres", "CHUP", "--modalities",
             "ct,pet", *FAST, "--max-steps", "2", "--out", str(update))
    done = main_result("evaluate", "--model", str(update), "--data", str(phantom), "--centres", "MDA", "--split",
                       "unseen", "--out", str(tmp_path / "eval"))
    assert done.returncode == 2 and f"2 by {adapted.resolve()} (updated_from of {update})" in done.stderr
    adapted.rename(tmp_path / "elsewhere")  # the update loads without it: its MDA cases are unknown, said once
    done = main_result("evaluate", "--model", str(update), "--data", str(phantom), "--centres", "MDA", "--split",
                       "unseen", "--out", str(tmp_path / "eval"))
    assert done.returncode == 0 and f"warning: {adapted.resolve()}: not found (updated_from of" in done.stderr
    assert json.loads((tmp_path / "eval" / "metrics_ct+pet_unseen.json").read_text())["n_cases"] == 2
