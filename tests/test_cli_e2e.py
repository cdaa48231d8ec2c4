"""The CLI end to end, as a user runs it: synth -> train a few steps -> predict -> evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import FAST, FAST_SWIN, run_cli


@pytest.fixture(scope="module")
def cli_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "phantom"
    proc = run_cli("synth", str(root), "--cases-per-centre", "2", "--centres", "CHUM,MDA", "--shape", "48", "48", "32")
    assert "wrote 4 cases" in proc.stdout
    return root


@pytest.mark.parametrize(("backbone", "modalities", "fast"), [
    ("unetr", "ct", FAST), ("unetr", "ct,pet", FAST), ("swin_unetr", "ct", FAST_SWIN)])
@pytest.mark.slow
@pytest.mark.long
def test_synth_train_predict_evaluate(cli_phantom: Path, tmp_path: Path, backbone: str, modalities: str,
                                      fast: list[str]) -> None:
    run = tmp_path / "run"
    run_cli("train", "--data", str(cli_phantom), "--centres", "CHUM", "--modalities", modalities, "--backbone",
            backbone, *fast, "--max-steps", "2", "--out", str(run))
    for name in ("config.yaml", "model.safetensors", "model.json", "metrics.csv", "train.log", "checkpoint.pt"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "model.json").read_text())
    assert meta["backbone"] == backbone and meta["modalities"] == modalities.split(",")
    log = (run / "train.log").read_text()
    assert "trainable parameters" in log and "spacing [4.0, 4.0, 4.0]" in log

    preds = tmp_path / "preds"
    run_cli("predict", "--model", str(run), "--input", str(cli_phantom / "imagesTr"), "--centres", "MDA",
            "--out", str(preds))
    for case in ("MDA-000", "MDA-001"):
        ct = nib.load(str(cli_phantom / "imagesTr" / f"{case}__CT.nii.gz"))
        pred = nib.load(str(preds / f"{case}.nii.gz"))
        assert pred.shape == ct.shape
        np.testing.assert_allclose(pred.affine, ct.affine, atol=1e-5)
        assert set(np.unique(np.asanyarray(pred.dataobj))) <= {0, 1, 2}

    proc = run_cli("evaluate", "--model", str(run), "--data", str(cli_phantom), "--centres", "MDA",
                   "--out", str(tmp_path / "eval"))
    tag = modalities.replace(",", "+")
    assert f"inputs {tag}" in proc.stdout and "DSCagg GTVp" in proc.stdout
    report = json.loads((tmp_path / "eval" / f"metrics_{tag}.json").read_text())
    assert report["inputs"] == tag and report["n_cases"] == 2 and report["centres"] == ["MDA"]
    assert report["data"] == str(Path(cli_phantom).resolve())  # what the report scored
    assert set(report["DSCagg"]) == {"GTVp", "GTVn", "mean"}
    header = (tmp_path / "eval" / f"cases_{tag}.csv").read_text().splitlines()[0]
    assert header.startswith("case_id,centre,dice_GTVp,hd95_GTVp,dice_GTVn,hd95_GTVn")


@pytest.mark.slow  # four CLI interpreter start-ups: the slowest test outside the training ones
def test_help_on_every_verb() -> None:
    for verb in ("synth", "train", "predict", "evaluate"):
        assert "usage: pemma " + verb in run_cli(verb, "--help").stdout


def test_python_dash_m_pemma_runs_the_cli() -> None:
    """``python -m pemma`` (and so ``torchrun ... -m pemma``) is the ``pemma`` command."""
    proc = subprocess.run([sys.executable, "-m", "pemma", "train", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: pemma train" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "pemma", "no-such-verb"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "no-such-verb" in bad.stderr
