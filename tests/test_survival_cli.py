"""``pemma survival`` end to end on a tiny phantom: train (CT) -> adapt +PET -> adapt +EHR -> evaluate -> predict,
and bad input (one-line errors, counted skips)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

import pemma.cli.main as cli_main
from pemma.cli import survival as survival_cli
from pemma.config import build_config
from pemma.data.phantom import PhantomConfig, synthesize_phantom
from pemma.io_utils import sha256_file
from pemma.runs import CONFIG_FILE
from pemma.survival.config import L2_GRID
from pemma.training.segmentation import backbone_task

pytestmark = pytest.mark.slow  # trains segmentation and prognosis models (CLI)

TINY = ["--preset", "tiny", "--spacing", "4", "4", "4", "--roi", "32", "32", "32", "--batch-size", "2",
        "--max-steps", "2"]


@pytest.fixture(autouse=True)
def survival_verb(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register ``survival`` for these tests if the CLI does not (yet) list it."""
    if survival_cli not in cli_main.VERBS:
        monkeypatch.setattr(cli_main, "VERBS", (*cli_main.VERBS, survival_cli))


def pemma(*args: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def ok(*args: str | Path) -> str:
    code, out, err = pemma(*args)
    assert code == 0, f"pemma {' '.join(map(str, args))} exited {code}:\n{err[-3000:]}"
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("survival")
    data = root / "phantom"
    synthesize_phantom(data, PhantomConfig(cases_per_centre=3, centres=("CHUM", "MDA"), ct_shape=(48, 48, 32)),
                       progress=False)
    # the segmentation run, written by `pemma train`'s own save function without training steps (the CLI of
    # `pemma train` has its own end-to-end tests; training it here would only cost time)
    base = root / "ct_unetr"
    cfg = build_config("tiny", overrides={"data": {"root": str(data), "modalities": ["ct"]},
                                          "preprocess": {"target_spacing": [4.0, 4.0, 4.0]},
                                          "model": {"roi_size": [32, 32, 32]}})
    task = backbone_task(cfg)
    base.mkdir()
    cfg.save(base / CONFIG_FILE)
    task.save(task.model, base, {"step": 0})
    return {"root": root, "data": data, "base": base}


def test_survival_end_to_end(setup: dict[str, Path]) -> None:
    data, base, root = setup["data"], setup["base"], setup["root"]
    base_sha = sha256_file(base / "model.safetensors")
    runs = {name: root / name for name in ("surv_ct", "surv_ctpet", "surv_ctpet_ehr")}
    out = ok("survival", "train", "--base", base, "--data", data, "--modalities", "ct", "--head", "mtlr",
             "--out", runs["surv_ct"], *TINY)
    assert "stage ct" in out and "trainable parameters" in out
    assert re.search(r"C-index train (\d\.\d{3}|n/a) \(4 cases, \d relapses?\), validation (\d\.\d{3}|n/a) \(2 cases, "
                     r"\d relapses?\)", out), out  # with what each C-index was computed on
    ok("survival", "adapt", "--model", runs["surv_ct"], "--add-modality", "pet", "--method", "lora",
       "--out", runs["surv_ctpet"], *TINY)
    out = ok("survival", "adapt", "--model", runs["surv_ctpet"], "--add-ehr", "--method", "lora",
             "--out", runs["surv_ctpet_ehr"], *TINY)
    assert "stage ct+pet+ehr" in out
    assert sha256_file(base / "model.safetensors") == base_sha  # the segmentation run is never written

    for run in runs.values():
        for name in ("survival.json", "survival.safetensors", "config.yaml", "train.log"):
            assert (run / name).is_file(), (run, name)
    # the CT stage solves its head on frozen features (no optimiser steps); the others train their adapters
    assert not (runs["surv_ct"] / "metrics.csv").exists() and (runs["surv_ctpet"] / "metrics.csv").is_file()
    log = (runs["surv_ct"] / "train.log").read_text()
    assert "6 cases with images and endpoints; skipped 0 endpoint rows without images, 0 image cases" in log
    assert "label is never read" in log
    meta = json.loads((runs["surv_ctpet_ehr"] / "survival.json").read_text())
    assert meta["stage"] == "ct+pet+ehr" and meta["modalities"] == ["ct", "pet"] and meta["ehr"] is True
    assert meta["base_sha256"] == base_sha and meta["adapter_config"]["method"] == "lora"
    assert [h["stage"] for h in meta["history"]] == ["ct", "ct+pet", "ct+pet+ehr"]
    first = json.loads((runs["surv_ct"] / "survival.json").read_text())
    assert [r["l2"] for r in first["l2_cv"]] == list(L2_GRID) and first["l2"] in L2_GRID  # chosen by inner CV
    assert "-fold inner cross-validation on the 4 training cases" in log
    for side in ("train_cases", "val_cases"):  # every stage keeps the first stage's split
        assert sorted(first[side]) == sorted(meta[side])
    assert meta["val_cases"] and not set(meta["val_cases"]) & set(meta["train_cases"])
    k = len(meta["time_bins"])
    trainable = [h["trainable"] for h in meta["history"]]
    assert trainable[0] == meta["feature_dim"] * k + k  # CT stage: the MTLR head only
    assert trainable[1] > trainable[0] and meta["parameters"]["trainable:clinical"] > 0
    assert "trainable:adapters" in meta["parameters"] and "trainable:pet_embedding" not in meta["parameters"]
    assert meta["clinical_encoder"]["categorical"][4] == "HPV status (0=-, 1=+)"

    eval_dir = root / "eval"
    out = ok("survival", "evaluate", "--model", runs["surv_ctpet_ehr"], "--data", data, "--centres", "MDA",
             "--out", eval_dir, "--bootstrap", "50")
    assert "C-index" in out and "95% CI" in out and "log-rank p" in out
    png = eval_dir / "km_ct+pet+ehr.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    report = json.loads((eval_dir / "survival_ct+pet+ehr.json").read_text())
    assert report["n_cases"] == 3 and report["centres"] == ["MDA"] and 0.0 <= report["c_index"] <= 1.0
    assert report["risk_threshold"] == meta["risk_threshold"]

    out = ok("survival", "evaluate", "--model", runs["surv_ctpet_ehr"], "--data", data, "--split", "train",
             "--out", eval_dir, "--bootstrap", "20")
    assert "(train cases)" in out
    train_report = json.loads((eval_dir / "survival_ct+pet+ehr_train.json").read_text())
    assert sorted(c["PatientID"] for c in train_report["cases"]) == sorted(meta["train_cases"])
    assert train_report["c_index"] == pytest.approx(meta["train_c_index"], abs=1e-9)  # reloaded == trained model
    assert train_report["skipped_endpoints_without_images"] == []  # the val cases have images: not "without"
    underscored = root / "underscored"  # the same data under nnU-Net's spelling of the IDs (CHUM_000)
    shutil.copytree(data, underscored)
    for path in sorted(underscored.rglob("*.nii.gz")):
        path.rename(path.with_name(path.name.replace("-", "_", 1)))
    ok("survival", "evaluate", "--model", runs["surv_ctpet_ehr"], "--data", underscored, "--split", "train",
       "--out", root / "eval_us", "--bootstrap", "20")
    spelled = json.loads((root / "eval_us" / "survival_ct+pet+ehr_train.json").read_text())
    assert sorted(c["PatientID"].replace("_", "-") for c in spelled["cases"]) == sorted(meta["train_cases"])
    csv_path = root / "out" / "risk.csv"
    out = ok("survival", "predict", "--model", runs["surv_ctpet_ehr"], "--data", data, "--out", csv_path)
    assert "wrote 6 risk scores" in out
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["PatientID", "Prediction"] and len(rows) == 7
    assert [r[0] for r in rows[1:]] == [f"{c}-{i:03d}" for c in ("CHUM", "MDA") for i in range(3)]
    assert all(math.isfinite(float(r[1])) for r in rows[1:])
    assert sorted(p.name for p in csv_path.parent.iterdir()) == ["risk.csv"]  # no temporary file left
    code, _, err = pemma("survival", "predict", "--model", runs["surv_ctpet_ehr"], "--data", data, "--out",
                         csv_path.parent)  # a folder: was "....part.tmp: Is a directory"
    assert code == 2 and err.strip().endswith(f"{csv_path.parent}: is a folder; --out names the CSV file to "
                                              f"write (e.g. risk.csv)")
    endpoints = Path(data) / "hecktor2022_endpoint_training.csv"
    before = endpoints.read_bytes()
    code, _, err = pemma("survival", "predict", "--model", runs["surv_ctpet_ehr"], "--data", data, "--out",
                         endpoints)  # the ground truth: was replaced by the risks
    assert code == 2 and "a file this prediction reads" in err and endpoints.read_bytes() == before, err
    clinical = Path(data) / "hecktor2022_clinical_info_training.csv"
    before = clinical.read_bytes()
    code, _, err = pemma("survival", "predict", "--model", runs["surv_ctpet_ehr"], "--data", data, "--out", clinical)
    assert code == 2 and "a file this prediction reads" in err and clinical.read_bytes() == before, err
    predicted = {r[0]: float(r[1]) for r in rows[1:]}
    for case in report["cases"]:  # evaluate and predict agree (reloaded model, same preprocessing)
        assert predicted[case["PatientID"]] == pytest.approx(case["risk"], rel=1e-6, abs=1e-9)


def test_cox_head_and_dora_ehr_on_ct(setup: dict[str, Path]) -> None:
    data, base, root = setup["data"], setup["base"], setup["root"]
    ok("survival", "train", "--base", base, "--data", data, "--head", "cox", "--out", root / "cox_ct", *TINY)
    out = ok("survival", "adapt", "--model", root / "cox_ct", "--add-ehr", "--method", "dora", "--out",
             root / "cox_ct_ehr", "--categorical-column", "HPV status (0=-, 1=+)", "--numeric-column", "Age", *TINY)
    assert "stage ct+ehr" in out
    meta = json.loads((root / "cox_ct_ehr" / "survival.json").read_text())
    assert meta["head"] == "cox" and meta["adapter_config"]["method"] == "dora"
    assert meta["clinical_encoder"]["numeric"] == ["Age"] and meta["time_bins"] is None
    code, _, err = pemma("survival", "adapt", "--model", root / "cox_ct_ehr", "--add-modality", "pet", "--method",
                         "lora", "--out", root / "x", *TINY)
    assert code == 2 and "has dora adapters; adapt it with --method dora" in err


def test_pet_stage_started_from_segmentation_adapters(setup: dict[str, Path]) -> None:
    """``--init-adapters`` loads a PEMMA segmentation run's adapters and PET pathway; ``--freeze-adapters``
    then trains the head only, so the loaded tensors are saved unchanged."""
    from pemma.adapters.artifacts import WEIGHTS_NAME
    from pemma.io_utils import load_tensors

    data, base, root = setup["data"], setup["base"], setup["root"]
    seg = root / "seg_lora"
    ok("adapt", "--base", base, "--data", data, "--centres", "MDA", "--add-modality", "pet", "--method", "lora",
       *TINY[:-2], "--max-steps", "1", "--out", seg)
    ok("survival", "train", "--base", base, "--data", data, "--out", root / "init_ct", *TINY)
    out = ok("survival", "adapt", "--model", root / "init_ct", "--add-modality", "pet", "--init-adapters", seg,
             "--freeze-adapters", "--out", root / "init_ctpet", *TINY)
    assert "initialised from the segmentation run" in (root / "init_ctpet" / "train.log").read_text()
    meta = json.loads((root / "init_ctpet" / "survival.json").read_text())
    assert set(k for k in meta["parameters"] if k.startswith("trainable:")) == {"trainable:head"}
    assert meta["init_adapters"] == str(seg.resolve()) and "stage ct+pet" in out
    saved = load_tensors(root / "init_ctpet" / "survival.safetensors")
    adapter = load_tensors(seg / WEIGHTS_NAME)
    assert adapter and all(torch.equal(saved[f"encoder.{k}"], v) for k, v in adapter.items())
    # adapters of another method, or for a stage that does not add PET, are refused in one line
    code, _, err = pemma("survival", "adapt", "--model", root / "init_ct", "--add-modality", "pet", "--method",
                         "dora", "--init-adapters", seg, "--out", root / "x", *TINY)
    assert code == 2 and "holds lora adapters, not dora" in one_error_line(err)
    code, _, err = pemma("survival", "adapt", "--model", root / "init_ctpet", "--add-ehr", "--init-adapters", seg,
                         "--out", root / "y", *TINY)
    assert code == 2 and "can only start the stage that adds PET" in one_error_line(err)


def copy_data(src: Path, dst: Path) -> Path:
    (dst / "imagesTr").mkdir(parents=True)
    for f in (src / "imagesTr").iterdir():
        (dst / "imagesTr" / f.name).symlink_to(f)
    for f in src.glob("*.csv"):
        shutil.copy(f, dst / f.name)
    return dst


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("pemma survival: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_endpoints_and_skips(setup: dict[str, Path], tmp_path: Path) -> None:
    data, base = setup["data"], setup["base"]
    bad = copy_data(data, tmp_path / "bad")
    endpoint = bad / "hecktor2022_endpoint_training.csv"
    lines = endpoint.read_text().splitlines()
    endpoint.write_text("\n".join(lines[:2] + [lines[2].rsplit(",", 1)[0] + ",abc"] + lines[3:]) + "\n")
    code, _, err = pemma("survival", "train", "--base", base, "--data", bad, "--out", tmp_path / "r1", *TINY)
    assert code == 2
    assert "line 3 (patient CHUM-001): RFS 'abc' is not a number" in one_error_line(err)

    # drop CHUM-002's row, add a patient without images: both skipped and counted
    endpoint.write_text("\n".join([lines[0], *[r for r in lines[1:] if not r.startswith("CHUM-002")],
                                   "CHUM-099,1,120"]) + "\n")
    ok("survival", "train", "--base", base, "--data", bad, "--out", tmp_path / "r2", *TINY[:-1], "1")
    log = (tmp_path / "r2" / "train.log").read_text()
    assert "5 cases with images and endpoints; skipped 1 endpoint rows without images (CHUM-099), " \
           "1 image cases without endpoints (CHUM-002)" in log


def test_bad_options(setup: dict[str, Path], tmp_path: Path) -> None:
    data, base, root = setup["data"], setup["base"], setup["root"]
    code, _, err = pemma("survival", "train", "--base", base, "--data", data, "--out", tmp_path / "r", "--roi",
                         "48", "48", "48")
    assert code == 2 and "--roi 48 48 48 differs from the segmentation run's (32 32 32)" in one_error_line(err)
    code, _, err = pemma("survival", "train", "--base", base, "--data", data, "--modalities", "ct,pet",
                         "--out", tmp_path / "r")
    assert code == 2 and "train on its inputs" in one_error_line(err)
    ok("survival", "train", "--base", base, "--data", data, "--out", tmp_path / "ct", *TINY[:-1], "1")
    code, _, err = pemma("survival", "adapt", "--model", tmp_path / "ct", "--add-ehr", "--categorical-column",
                         "Smoking", "--out", tmp_path / "e", *TINY)
    assert code == 2 and "unknown clinical column(s) ['Smoking']" in one_error_line(err)
    code, _, err = pemma("survival", "adapt", "--model", tmp_path / "ct", "--out", tmp_path / "n", *TINY)
    assert code == 2 and "nothing to add" in one_error_line(err)
    code, _, err = pemma("survival", "evaluate", "--model", root / "does-not-exist", "--data", data)
    assert code == 2 and "prognosis model folder not found" in one_error_line(err)


@pytest.mark.parametrize("stage", ["adapt"])
@pytest.mark.long
def test_stage_stopped_half_way_resumes_to_the_same_weights(setup: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    """A stage interrupted after step 3 of 6 and continued with ``--resume`` ends with the uninterrupted run's
    weights (``adapt`` +PET runs the encoder with LoRA and the PET pathway training; a head-only ``train`` has no
    steps to resume: it solves its head, tests/test_survival_probe.py)."""
    from pemma.io_utils import load_tensors
    from pemma.training.engine import Engine

    data, base = setup["data"], setup["base"]
    flags = [*TINY[:-2], "--max-steps", "6", "--checkpoint-every", "1"]
    if stage == "train":
        cmd: list[str | Path] = ["survival", "train", "--base", base, "--data", data, "--out"]
    else:
        ok("survival", "train", "--base", base, "--data", data, "--out", tmp_path / "parent", *TINY)
        cmd = ["survival", "adapt", "--model", tmp_path / "parent", "--add-modality", "pet", "--out"]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    ok(*cmd, full, *flags)

    save = Engine.save

    def save_then_stop(self: Engine, run_dir: Path, **extra: object) -> None:
        save(self, run_dir, **extra)
        if self.step_count == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "save", save_then_stop)
    code, _, _ = pemma(*cmd, stopped, *flags)
    assert code == 130 and not (stopped / "survival.json").exists()
    monkeypatch.setattr(Engine, "save", save)
    ok(*cmd, stopped, *flags, "--resume")
    assert "resumed at step 3 of 6" in (stopped / "train.log").read_text()
    a, b = load_tensors(full / "survival.safetensors"), load_tensors(stopped / "survival.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[row["loss"] for row in csv.DictReader(open(run / "metrics.csv"))] for run in (full, stopped)]
    assert len(losses[0]) == 6 and losses[0] == losses[1]
    meta = json.loads((stopped / "survival.json").read_text())
    assert meta["settings"]["head"] == "mtlr" and meta["settings"]["add_modality"] == (None if stage == "train"
                                                                                      else "pet")


@pytest.mark.long
def test_adapt_stage_two_process_gloo(setup: dict[str, Path], tmp_path: Path) -> None:
    """Under torchrun the +PET stage trains with DDP: each process its own batch, so an epoch has
    ceil(training cases / (batch size x 2)) steps."""
    import os
    import subprocess
    import sys

    data, base = setup["data"], setup["base"]
    ok("survival", "train", "--base", base, "--data", data, "--out", tmp_path / "ct", *TINY)
    out = tmp_path / "ddp"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(32500 + os.getpid() % 1000), "-m",
           "pemma.cli.main", "survival", "adapt", "--model", str(tmp_path / "ct"), "--add-modality", "pet",
           "--out", str(out), *TINY[:-2], "--epochs", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "survival.json").read_text())
    assert meta["steps"] == math.ceil(len(meta["train_cases"]) / (2 * 2))
    assert "DistributedDataParallel over 2 processes" in (out / "train.log").read_text()


def test_adapt_on_other_data_does_not_inherit_the_models_centres(setup: dict[str, Path], tmp_path: Path) -> None:
    """``survival adapt --data OTHER`` without ``--centres``: all of OTHER's centres, not the model's (which OTHER
    may not have: an error about centres the user never typed); on the model's own data its centres."""
    import shutil

    data, base = setup["data"], setup["base"]
    ok("survival", "train", "--base", base, "--data", data, "--centres", "CHUM,MDA", "--out", tmp_path / "ct",
       *TINY)
    other = tmp_path / "mda_only"
    shutil.copytree(data, other)
    for path in [*other.rglob("CHUM-*")]:
        path.unlink()
    ok("survival", "adapt", "--model", tmp_path / "ct", "--data", other, "--add-ehr", "--out", tmp_path / "ehr",
       *TINY)
    meta = json.loads((tmp_path / "ehr" / "survival.json").read_text())
    assert {c.split("-")[0] for c in meta["train_cases"] + meta["val_cases"]} == {"MDA"}


def _interrupted_pet_stage(setup: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           *flags: str) -> tuple[list, Path]:
    """A CT stage, then a +PET stage (2 steps, ``flags``) stopped by Ctrl-C right after its first checkpoint: the
    +PET command and its run folder, for a ``--resume``."""
    from pemma.training.engine import Engine

    data, base = setup["data"], setup["base"]
    ok("survival", "train", "--base", base, "--data", data, "--out", tmp_path / "ct", *TINY)
    out = tmp_path / "pet"
    cmd = ["survival", "adapt", "--model", tmp_path / "ct", "--add-modality", "pet", "--out", out, *TINY[:-2],
           "--max-steps", "2", "--checkpoint-every", "1", *flags]
    save = Engine.save

    def save_then_stop(self: Engine, run_dir: Path, **extra: object) -> None:
        save(self, run_dir, **extra)
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "save", save_then_stop)
    assert pemma(*cmd)[0] == 130
    monkeypatch.setattr(Engine, "save", save)
    return cmd, out


def test_stage_resume_with_other_settings_is_refused(setup: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The interrupted stage's checkpoint records its settings (the stage writes no config before it ends): a
    ``--resume`` with another learning rate or L2 penalty is refused naming both; the same flags resume."""
    cmd, out = _interrupted_pet_stage(setup, tmp_path, monkeypatch, "--lr", "0.001", "--l2", "1")
    code, _, err = pemma(*cmd[:-4], "--lr", "0.05", "--l2", "3", "--alpha", "64", "--resume")
    assert code == 2 and (f"{out}: --resume with other settings than the interrupted run: train.lr 0.001 → 0.05, "
                          "l2 1 → 3, alpha 8 → 64; rerun with the same flags, or --force to start over"
                          ) in one_error_line(err)
    ok(*cmd, "--resume")
    assert "resumed at step 1 of 2" in (out / "train.log").read_text()


@pytest.mark.long
def test_stage_resume_on_another_number_of_processes_is_refused(setup: dict[str, Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """When the encoder trains, each DDP process takes its own batch (an epoch has ceil(cases / (batch x
    processes)) steps): a stage interrupted as one process and resumed under `torchrun --nproc_per_node 2` went on
    with other batches and another schedule, silently. The checkpoint records the number of processes."""
    import os
    import subprocess
    import sys

    cmd, out = _interrupted_pet_stage(setup, tmp_path, monkeypatch, "--l2", "1")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(33500 + os.getpid() % 1000), "-m",
                           "pemma.cli.main", *map(str, cmd), "--resume"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    expected = (f"pemma survival: error: {out}: --resume with other settings than the interrupted run: torchrun "
                "processes 1 → 2; rerun with the same flags, or --force to start over")
    assert proc.stderr.count(expected) == 2, proc.stderr[-3000:]  # one line per process
    ok(*cmd, "--resume")
    assert "resumed at step 1 of 2" in (out / "train.log").read_text()

def test_pet_stage_from_the_authors_segmentation_adapters_trains(setup: dict[str, Path]) -> None:
    """The authors' UNETR recipe has no PET embedding of its own (PET through the frozen CT one): a +PET stage
    started from it with its adapters training (hecktor2022's prognosis) failed on the missing module."""
    data, base, root = setup["data"], setup["base"], setup["root"]
    seg = root / "seg_authors"
    ok("adapt", "--base", base, "--data", data, "--centres", "MDA", "--recipe", "authors", *TINY[:-2],
       "--max-steps", "1", "--out", seg)
    ok("survival", "train", "--base", base, "--data", data, "--out", root / "authors_ct", *TINY)
    ok("survival", "adapt", "--model", root / "authors_ct", "--add-modality", "pet", "--init-adapters", seg,
       "--out", root / "authors_ctpet", *TINY)
    meta = json.loads((root / "authors_ctpet" / "survival.json").read_text())
    assert meta["adapter_config"]["pet_patch_embedding"] == "shared" and meta["adapter_config"]["ct_route"] == "shared"
    assert meta["parameters"]["trainable:adapters"] > 0 and meta["parameters"]["trainable:head"] > 0
