"""Training: exact resume after a kill mid-epoch, and a 2-process DistributedDataParallel run (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, run_cli
from safetensors.torch import load_file

pytestmark = [pytest.mark.slow, pytest.mark.long]  # CLI training runs (resume, DDP)

STEPS = "8"


def _train_args(phantom: Path, out: Path) -> list[str]:
    return ["train", "--data", str(phantom), "--centres", "CHUM,CHUP", "--modalities", "ct", *FAST,
            "--max-steps", STEPS, "--checkpoint-every", "1", "--out", str(out)]


def _state_step(run: Path) -> int:
    try:
        return int(torch.load(run / "checkpoint.pt", weights_only=True)["step"])
    except Exception:
        return -1


def test_resume_after_kill_matches_uninterrupted(phantom: Path, tmp_path: Path) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_cli(*_train_args(phantom, full))

    proc = subprocess.Popen([sys.executable, "-m", "pemma.cli.main", *_train_args(phantom, killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _state_step(killed) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = _state_step(killed)
    assert 3 <= interrupted_at < int(STEPS), "the run must be killed mid-training"

    resumed = run_cli(*_train_args(phantom, killed), "--resume")
    assert f"resumed at step {interrupted_at}" in resumed.stderr
    a = torch.load(full / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(killed / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    fa, fb = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    rows = (killed / "metrics.csv").read_text().splitlines()
    assert len(rows) == len((full / "metrics.csv").read_text().splitlines())


def test_resume_without_checkpoint_starts_fresh_and_truncated_checkpoint_fails(phantom: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_cli(*_train_args(phantom, run)[:-4], "--max-steps", "2", "--out", str(run))
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    proc = run_cli(*_train_args(phantom, run), "--resume", check=False)
    assert proc.returncode != 0
    assert "checkpoint.pt: truncated or corrupt checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_two_process_ddp_gloo(phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000), "-m",
           "pemma.cli.main", *_train_args(phantom, out)[:-2], "--max-steps", "3", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "processes 2" in (out / "train.log").read_text()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert int(state["step"]) == 3
    # recorded, so that a --resume as one process is refused (its epochs and crops would differ)
    assert state["settings"]["torchrun processes"] == 2
    assert json.loads((out / "model.json").read_text())["processes"] == 2
    assert (out / "model.safetensors").is_file()
