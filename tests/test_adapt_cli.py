"""``pemma adapt`` / ``params`` / ``export`` end to end on a tiny phantom, for both backbones and methods."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import FAST, FAST_SWIN, FLAGS, run_cli, run_main

pytestmark = [pytest.mark.slow, pytest.mark.long]  # trains tiny base and adapted models (CLI train / adapt)


def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asanyarray(nib.load(str(p)).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


@pytest.mark.parametrize(("backbone", "method"), [("unetr", "lora"), ("unetr", "dora"), ("swin_unetr", "dora")])
def test_adapt_predict_params_export(bases: dict[str, Path], phantom: Path, tmp_path: Path, backbone: str,
                                     method: str) -> None:
    run = tmp_path / "pemma"
    stdout = run_main("adapt", "--base", str(bases[backbone]), "--data", str(phantom), "--centres", "MDA",
                   "--add-modality", "pet", "--method", method, *FLAGS[backbone][:2], "--spacing", "4", "4", "4",
                   "--batch-size", "1", "--max-steps", "3", "--out", str(run))
    assert "best validation mean DSCagg (CT+PET)" in stdout
    names = sorted(p.name for p in run.iterdir())
    assert "adapter_model.safetensors" in names and "adapter_config.json" in names
    assert "model.safetensors" not in names, "an adapted run stores only what adaptation trained"
    log = (run / "train.log").read_text()
    assert "loaded" in log and "trainable parameters" in log and "modality dropout" in log

    # CT alone through the adapted run gives exactly the base model's prediction
    inputs = str(phantom / "imagesTr")
    run_main("predict", "--model", str(bases[backbone]), "--input", inputs, "--centres", "MDA", "--out",
            str(tmp_path / "base_ct"))
    for modalities in ("ct", "pet", "ct,pet"):
        run_main("predict", "--model", str(run), "--modalities", modalities, "--input", inputs, "--centres", "MDA",
                "--out", str(tmp_path / modalities))
    base_ct, pemma_ct = _labels(tmp_path / "base_ct"), _labels(tmp_path / "ct")
    assert base_ct.keys() == pemma_ct.keys() and len(base_ct) == 2
    assert all(np.array_equal(base_ct[k], pemma_ct[k]) for k in base_ct)
    assert len(_labels(tmp_path / "pet")) == len(_labels(tmp_path / "ct,pet")) == 2

    stdout = run_main("evaluate", "--model", str(run), "--data", str(phantom), "--centres", "MDA", "--modalities",
                   "ct,pet", "--out", str(tmp_path / "eval"))
    assert "inputs ct+pet" in stdout

    summary = json.loads(run_main("params", str(run), "--json"))
    assert summary["kind"] == "pemma" and summary["method"] == method
    assert 0 < summary["trainable"] < summary["early_fusion"] < summary["total"] + summary["early_fusion"]
    assert summary["adapter_bytes"] == (run / "adapter_model.safetensors").stat().st_size
    # percentages are numbers, as without a run (they were "3.791%" strings here)
    assert summary["percent_of_early_fusion"] == pytest.approx(100.0 * summary["trainable"] / summary["early_fusion"])
    assert isinstance(summary["authors_percent"], float) and 0 < summary["authors_percent"] < 100

    if backbone == "unetr":
        merged = tmp_path / "merged.pt"
        assert "max |merged - unmerged|" in run_main("export", "--model", str(run), "--merge", "--out", str(merged))
        scripted = torch.jit.load(str(merged))
        x = torch.rand(1, 2, 32, 32, 32)
        assert scripted(x).shape == (1, 3, 32, 32, 32)


def test_foreign_base_is_refused(bases: dict[str, Path], phantom: Path, tmp_path: Path) -> None:
    run = tmp_path / "pemma"
    before = {p.name: p.read_bytes() for p in bases["unetr"].iterdir()}
    run_cli("adapt", "--base", str(bases["unetr"]), "--data", str(phantom), "--centres", "MDA", *FAST[:2],
            "--spacing", "4", "4", "4", "--batch-size", "1", "--max-steps", "1", "--out", str(run))
    other = tmp_path / "other_base"
    run_cli("train", "--data", str(phantom), "--centres", "CHUM", "--modalities", "ct", *FAST, "--seed", "7",
            "--max-steps", "1", "--out", str(other))
    proc = run_cli("predict", "--model", str(run), "--base", str(other), "--input", str(phantom / "imagesTr"),
                   "--out", str(tmp_path / "p"), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    # named with both paths (the adapter's own check said "this base is ...", naming neither)
    assert f"{run}: was trained on base" in proc.stderr and f"but {other} holds" in proc.stderr
    # the base run itself is never modified by adaptation
    assert before == {p.name: p.read_bytes() for p in bases["unetr"].iterdir()}


def test_adapt_two_process_gloo_with_modality_dropout(bases: dict[str, Path], phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(31500 + os.getpid() % 1000), "-m",
           "pemma.cli.main", "adapt", "--base", str(bases["swin_unetr"]), "--data", str(phantom), "--centres",
           "MDA,CHUM", "--method", "lora", *FAST_SWIN[:2], "--spacing", "4", "4", "4", "--batch-size", "1",
           "--modality-dropout", "0.4", "0.2", "0.4", "--max-steps", "4", "--val-fraction", "0.5", "--val-every", "1",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert "processes 2" in log and "ct+pet 0.50, pet 0.50" in log
    assert (out / "adapter_model.safetensors").is_file()
    # validation partway through (rank 0 alone): it hung in an all-gather the other rank never joined
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert len(rows) >= 2 and all(row.split(",")[6] for row in rows)  # val_mean of every validation
    assert proc.stdout.count("best validation mean DSCagg") == 1  # rank 0's summary only


@pytest.mark.parametrize("method", ["early-fusion", "full", "late-fusion"])
def test_baselines_train_and_evaluate(bases: dict[str, Path], phantom: Path, tmp_path: Path, method: str) -> None:
    run = tmp_path / method
    stdout = run_main("adapt", "--base", str(bases["unetr"]), "--data", str(phantom), "--centres", "MDA", "--method",
                      method, *FAST[:2], "--spacing", "4", "4", "4", "--batch-size", "1", "--max-steps", "2",
                      "--out", str(run))
    meta = json.loads((run / "model.json").read_text())
    summary = json.loads(run_main("params", str(run), "--json"))
    if method == "early-fusion":
        assert meta["kind"] == "backbone" and meta["modalities"] == ["ct", "pet"]
        assert summary["trainable"] == summary["early_fusion"]
        input_sets = ["ct,pet"]
    elif method == "full":
        assert meta["kind"] == "pemma_full"
        assert summary["trainable"] == summary["total"] > summary["early_fusion"]
        input_sets = ["ct", "pet", "ct,pet"]
    else:
        assert meta["kind"] == "late_fusion" and 0.0 <= meta["weight"] <= 1.0 and "CT logit weight" in stdout
        assert len(meta["weight_search"]) == 11
        input_sets = ["ct", "ct,pet"]
        # the CT member is the base itself: CT-only predictions are the base's
        run_main("predict", "--model", str(run), "--modalities", "ct", "--input", str(phantom / "imagesTr"),
                 "--centres", "MDA", "--out", str(tmp_path / "lf_ct"))
        run_main("predict", "--model", str(bases["unetr"]), "--input", str(phantom / "imagesTr"),
                 "--centres", "MDA", "--out", str(tmp_path / "base_ct"))
        a, b = _labels(tmp_path / "lf_ct"), _labels(tmp_path / "base_ct")
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    for modalities in input_sets:
        out = run_main("evaluate", "--model", str(run), "--data", str(phantom), "--centres", "MDA",
                       "--modalities", modalities, "--out", str(tmp_path / "eval"))
        assert f"inputs {modalities.replace(',', '+')}" in out


def test_full_finetune_starts_from_the_run_seed_whatever_ran_before(bases: dict[str, Path], phantom: Path,
                                                                    tmp_path: Path) -> None:
    """In a ``reproduce`` worker another run has drawn from torch's RNG before: the result must not depend on it."""
    from safetensors.torch import load_file

    def adapt(out: Path) -> dict[str, torch.Tensor]:
        run_main("adapt", "--base", str(bases["unetr"]), "--data", str(phantom), "--centres", "MDA",
                 "--add-modality", "pet", "--method", "full_finetune", *FLAGS["unetr"][:2], "--spacing", "4", "4", "4",
                 "--batch-size", "1", "--max-steps", "1", "--out", str(out))
        return load_file(str(out / "model.safetensors"))

    first = adapt(tmp_path / "first")
    torch.rand(12345)  # another run's draws
    second = adapt(tmp_path / "second")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
