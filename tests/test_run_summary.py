"""The line a training verb ends with: a run without validation cases says so instead of printing -1."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FAST, main_result, run_main

from pemma.training.loop import best_dsc_text


def test_best_dsc_text() -> None:
    assert best_dsc_text(0.51234) == "0.5123" and best_dsc_text(0.0) == "0.0000"
    assert best_dsc_text(-1.0) == "n/a (no validation score)"


def test_train_without_validation_cases_prints_n_a(phantom: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    stdout = run_main("train", "--data", str(phantom), "--centres", "CHUM", "--modalities", "ct", *FAST,
                      "--val-fraction", "0", "--max-steps", "1", "--out", str(tmp_path / "run"))
    last = stdout.strip().splitlines()[-1]
    assert last == f"{tmp_path / 'run'}: 1 step, best validation mean DSCagg n/a (no validation score)", last
    one = tmp_path / "one"  # predict / synth / convert-dicom summaries count the same way ("1 label maps")
    ct = phantom / "imagesTr" / "CHUM-000__CT.nii.gz"
    with caplog.at_level("INFO", logger="pemma.predict"):
        proc = main_result("predict", "--model", str(tmp_path / "run"), "--input", str(ct), "--out", str(one))
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == f"wrote 1 label map to {one}"
    # what it read is said (a CT+PET model given this file alone reads the PET beside it: the line names it)
    assert f"predicting 1 case with CT input (the model's; --modalities to choose); CHUM-000: CT {ct}" in caplog.text
    # and the region it predicts (outside the run's crop box the label map is background, said once)
    assert caplog.text.count("region: the run's box of [") == 1 and "outside it the label map is background" \
        in caplog.text
