"""``--resume`` continues the interrupted run only: another base run, other adapter settings or another dataset
are refused with one line naming each, old → new; the same flags resume."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FAST

from pemma.cli import main as cli_main
from pemma.config import build_config
from pemma.runs import CONFIG_FILE
from pemma.training.engine import Engine
from pemma.training.segmentation import backbone_task

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # one or two tiny training steps per run

STEPS = ["--max-steps", "2", "--checkpoint-every", "1", "--val-fraction", "0"]


def pemma(*args: str | Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli_main.main([str(a) for a in args])
    return code, err.getvalue()


def stopped_after_step_1(monkeypatch: pytest.MonkeyPatch, *args: str | Path) -> None:
    """Run ``args`` and interrupt it once its step-1 checkpoint is written."""
    save = Engine.save

    def save_then_stop(self: Engine, run_dir: Path, **extra: object) -> None:
        save(self, run_dir, **extra)
        if self.step_count == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Engine, "save", save_then_stop)
        code, err = pemma(*args)
    assert code == 130, err[-2000:]


@pytest.fixture(scope="module")
def bases(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two CT base runs with other (untrained, seeded) weights, written by `pemma train`'s own save function."""
    root = tmp_path_factory.mktemp("resume_bases")
    runs = []
    for seed in (0, 1):
        cfg = build_config("tiny", overrides={"data": {"root": str(phantom), "modalities": ["ct"]},
                                              "preprocess": {"target_spacing": [4.0, 4.0, 4.0]},
                                              "model": {"roi_size": [32, 32, 32]}, "train": {"seed": seed}})
        torch.manual_seed(seed)
        task = backbone_task(cfg)
        run = root / f"ct{seed}"
        run.mkdir()
        cfg.save(run / CONFIG_FILE)
        task.save(task.model, run, {"step": 0})
        runs.append(run)
    return runs[0], runs[1]


def test_adapt_resume_with_another_base_or_alpha_is_refused(bases: tuple[Path, Path], phantom: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ct, other = bases
    out = tmp_path / "ad"
    flags = ["--data", phantom, "--centres", "MDA", "--out", out, *FAST, *STEPS]
    stopped_after_step_1(monkeypatch, "adapt", "--base", ct, *flags)
    code, err = pemma("adapt", "--resume", "--base", other, "--alpha", "32", "--ct-route", "shared", *flags)
    assert code == 2
    assert (f"{out}: --resume with other settings than the interrupted run: base {ct.resolve()} → "
            f"{other.resolve()}, alpha 8 → 32, ct_route exact → shared; rerun with the same flags, or --force to "
            "start over") in err
    code, err = pemma("adapt", "--resume", "--base", ct, "--modality-dropout", "0.5", "0.25", "0.25", *flags)
    assert code == 2 and "modality_dropout [0.6, 0.2, 0.2] → [0.5, 0.25, 0.25]" in err
    code, err = pemma("adapt", "--resume", "--base", ct, "--no-recompute-dora", *flags)  # a memory lever may change
    assert code == 0, err[-2000:]
    assert "resumed at step 1" in (out / "train.log").read_text()


def test_train_resume_on_another_dataset_is_refused(phantom: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Another dataset folder with the same case IDs (a copy here) is not the dataset the first steps trained on."""
    copy = tmp_path / "copy"
    shutil.copytree(phantom, copy)
    out = tmp_path / "ct"
    flags = ["--centres", "CHUM", "--modalities", "ct", "--out", out, *FAST, *STEPS]
    stopped_after_step_1(monkeypatch, "train", "--data", phantom, *flags)
    code, err = pemma("train", "--resume", "--data", copy, *flags)
    assert code == 2 and f"data.root {phantom.resolve()} → {copy.resolve()};" in err
    code, err = pemma("train", "--resume", "--data", phantom, *flags, "--checkpoint-every", "2")
    assert code == 0, err[-2000:]
    assert "resumed at step 1" in (out / "train.log").read_text()


def test_resume_with_another_number_of_processes_is_refused(phantom: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An epoch has ceil(cases / (batch x processes)) steps and each process takes every N-th crop: a run interrupted
    under `torchrun --nproc_per_node 2` and resumed as one process went on silently with another schedule (20 steps
    became 30, the epochs counted again from 3) and other crops. The checkpoint records the number of processes."""
    out = tmp_path / "ct"
    flags = ["--data", phantom, "--centres", "CHUM", "--modalities", "ct", "--out", out, *FAST, *STEPS]
    stopped_after_step_1(monkeypatch, "train", *flags)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["settings"]["torchrun processes"] == 1
    with monkeypatch.context() as patch:  # what torchrun sets; refused before any process group is joined
        patch.setenv("WORLD_SIZE", "2")
        code, err = pemma("train", "--resume", *flags)
    assert code == 2, err[-2000:]
    assert (f"{out}: --resume with other settings than the interrupted run: torchrun processes 1 → 2; rerun with the "
            "same flags, or --force to start over") in err
    code, err = pemma("train", "--resume", *flags)
    assert code == 0, err[-2000:]
    assert json.loads((out / "model.json").read_text())["processes"] == 1


def test_resume_of_a_finished_run_with_another_val_every_keeps_it_loadable(phantom: Path, tmp_path: Path) -> None:
    """A --resume of a finished run (nothing left to train) with a setting free to change on a resume rewrote
    config.yaml and kept model.json's old checksum of it: the command failed at its end and the finished run no
    longer loaded ("config.yaml: changed after the run was written")."""
    from pemma.methods.loading import load_model

    out = tmp_path / "ct"
    flags = ["--data", phantom, "--centres", "CHUM", "--modalities", "ct", "--out", out, *FAST, "--max-steps", "2",
             "--val-fraction", "0.5"]
    code, err = pemma("train", *flags)
    assert code == 0, err[-2000:]
    weights = (out / "model.safetensors").read_bytes()
    code, err = pemma("train", "--resume", *flags, "--val-every", "2")
    assert code == 0, err[-2000:]
    assert "resumed at step 2" in (out / "train.log").read_text()
    assert load_model(out).meta["complete"] is True  # loads: its config checksum is the rewritten file's
    assert (out / "model.safetensors").read_bytes() == weights
