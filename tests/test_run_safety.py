"""A run folder is never overwritten by accident; files follow the umask; data paths are stored absolute."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

import pemma
from pemma.cli.main import main
from pemma.errors import PemmaError
from pemma.io_utils import save_tensors, write_text_atomic
from pemma.run_folder import new_run_folder
from pemma.runs import CONFIG_FILE, MODEL_META, run_family

SMALL = {"spacing": [4, 4, 4], "roi": [32, 32, 32], "batch_size": 1, "val_every": 1, "max_steps": 1}
TINY = {**SMALL, "modalities": "ct"}


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def finished(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-step CT run trained from another folder with a relative data path, under umask 022."""
    root = tmp_path_factory.mktemp("safety")
    cwd = os.getcwd()
    os.chdir(phantom.parent)
    try:
        with umask(0o022):
            pemma.train(phantom.name, root / "ct", centres="CHUM", **TINY)
    finally:
        os.chdir(cwd)
    return root / "ct"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def test_finished_run_is_refused(finished: Path, phantom: Path, tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    with pytest.raises(PemmaError, match=r"finished run.*--force"):
        pemma.train(phantom, run, centres="CHUM", **TINY)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "--data", str(phantom), "--centres", "CHUM", "--out", str(run), "--max-steps", "1"])
    assert code == 2
    assert str(run) in err.getvalue() and "--force" in err.getvalue()
    assert len(err.getvalue().strip().splitlines()) == 1
    assert snapshot(run) == before


def test_failed_forced_run_keeps_old_run_byte_identical(finished: Path, phantom: Path, tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    stale = run / ".model.abc123.part.json"  # what a kill -9 during an atomic write leaves
    stale.write_text("{")
    with pytest.raises(PemmaError):
        pemma.train(phantom, run, centres="NOPE", force=True, **TINY)  # fails after the folder was opened
    assert not stale.exists()
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no hidden sibling left


def test_forced_run_replaces_only_on_success(finished: Path, phantom: Path, tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path)
    old_meta = json.loads((run / MODEL_META).read_text())
    with umask(0o022):
        new = pemma.train(phantom, run, centres="CHUM", force=True, **{**TINY, "seed": 7})
    assert new.config.train.seed == 7
    assert json.loads((run / MODEL_META).read_text())["sha256"] != old_meta["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert stat.S_IMODE(run.stat().st_mode) == 0o755
    curves = next(line for line in (run / "train.log").read_text().splitlines() if "training curves:" in line)
    assert f"training curves: {run}/training_curves.png" in curves and "pemma-new" not in curves, curves


def test_out_inside_a_run_that_is_read_is_refused(finished: Path, phantom: Path, tmp_path: Path) -> None:
    with pytest.raises(PemmaError, match=r"is inside the run"):
        pemma.adapt(finished, phantom, finished / "adapted", centres="MDA", **SMALL)
    assert not (finished / "adapted").exists()
    # update --out <the base of the model>: the base is read from the model's metadata
    model = tmp_path / "model"
    model.mkdir()
    (model / MODEL_META).write_text(json.dumps({"kind": "pemma", "base_run": str(finished)}))
    assert run_family(model) == [model, finished]
    with pytest.raises(PemmaError, match=rf"{finished}.*is the run"):
        pemma.update(model, phantom, "pet", finished, centres="MDA", force=True, **SMALL)


def test_runs_inside_runs_are_refused_and_never_deleted_by_force(finished: Path, tmp_path: Path) -> None:
    """An --out inside another run was accepted, and a later --force of the outer run deleted it with its files."""
    outer = tmp_path / "outer"
    shutil.copytree(finished, outer)
    with pytest.raises(PemmaError, match=rf"outer/sub: inside the run folder {outer}"):
        with new_run_folder(outer / "sub"):
            pass
    assert not (outer / "sub").exists()
    inner = outer / "evaluation" / "sub"  # a run put there by hand (or by an earlier pemma)
    shutil.copytree(finished, inner)
    with pytest.raises(PemmaError, match=rf"outer: --force would delete the run {inner} inside it"):
        with new_run_folder(outer, force=True):
            pass
    assert (inner / MODEL_META).is_file() and (outer / MODEL_META).is_file()
    shutil.rmtree(inner)
    interrupted = outer / "evaluation" / "stopped"  # an interrupted run inside: its checkpoint and config
    interrupted.mkdir(parents=True)
    shutil.copy(outer / CONFIG_FILE, interrupted / CONFIG_FILE)
    (interrupted / "checkpoint.pt").write_bytes(b"state")
    with pytest.raises(PemmaError, match=rf"--force would delete the run {interrupted} inside it"):
        with new_run_folder(outer, force=True):
            pass
    # not a run: a stray checkpoint.pt (a common name) above --out, or a sibling named through ".."
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    with new_run_folder(tmp_path / "runs" / "cc"):
        pass
    with new_run_folder(outer / ".." / "beside"):
        pass


def test_out_over_the_dataset_or_holding_a_read_run_is_refused(finished: Path, phantom: Path,
                                                                tmp_path: Path) -> None:
    """A run written into the dataset folder (or a folder holding a run it reads) would be deleted with its cases
    (or base) by a later ``--force``: refused before anything is written."""
    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    before = snapshot(data)
    with pytest.raises(PemmaError, match=rf"{data}: is {data}, an input"):
        pemma.train(data, data, centres="CHUM", **TINY)
    with pytest.raises(PemmaError, match=rf"{tmp_path}: holds {data}, an input"):
        pemma.train(data, tmp_path, centres="CHUM", **TINY)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "--data", str(data), "--centres", "CHUM", "--out", str(data), "--max-steps", "1",
                     "--force"])
    assert code == 2 and len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
    assert snapshot(data) == before
    # a run written beside its base's folder: --out is the folder holding the base run
    with pytest.raises(PemmaError, match=rf"{finished.parent}: holds the run {finished}"):
        pemma.adapt(finished, phantom, finished.parent, centres="MDA", force=True, **SMALL)
    assert (finished / MODEL_META).is_file()
    # a datalist's images may lie anywhere: the folders it lists are inputs too
    lists = tmp_path / "lists"
    lists.mkdir()
    entries = [{"id": c, "ct": str(data / "imagesTr" / f"{c}__CT.nii.gz"),
                "label": str(data / "labelsTr" / f"{c}.nii.gz")} for c in ("CHUM-000", "CHUM-001")]
    (lists / "d.json").write_text(json.dumps({"training": entries}))
    with pytest.raises(PemmaError, match=rf"{data / 'imagesTr'}: is {data / 'imagesTr'}, an input"):
        pemma.train(lists / "d.json", data / "imagesTr", force=True, **TINY)
    with pytest.raises(PemmaError, match=rf"{lists}: holds {lists / 'd.json'}, an input"):
        pemma.train(lists / "d.json", lists, **TINY)
    assert snapshot(data) == before
    # a run inside the dataset folder is allowed (nothing of the dataset is replaced)
    with new_run_folder(data / "runs" / "ct", data=[data]) as folder:
        assert folder == data / "runs" / "ct"


def test_failed_new_run_leaves_nothing(phantom: Path, tmp_path: Path) -> None:
    with pytest.raises(PemmaError):
        pemma.train(phantom, tmp_path / "a" / "b", centres="NOPE", **TINY)
    assert not (tmp_path / "a").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(PemmaError):
        pemma.train(phantom, kept, centres="NOPE", **TINY)
    assert kept.is_dir()  # a folder it did not create is never removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(PemmaError, match="not a folder"):
        with new_run_folder(tmp_path / "file"):
            pass


def test_files_follow_the_umask(finished: Path, tmp_path: Path) -> None:
    import torch

    for name in (MODEL_META, CONFIG_FILE, "model.safetensors"):
        assert stat.S_IMODE((finished / name).stat().st_mode) == 0o644, name
    with umask(0o022):
        write_text_atomic(tmp_path / "a.txt", "x")
        save_tensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    with umask(0o077):
        write_text_atomic(tmp_path / "private.txt", "x")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600


def test_relative_data_path_is_stored_absolute(finished: Path, phantom: Path) -> None:
    root = pemma.Run.open(finished).config.data.root
    assert Path(root).is_absolute() and Path(root).resolve() == phantom.resolve()


def test_edited_config_is_detected(finished: Path, tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path)
    meta = json.loads((run / MODEL_META).read_text())
    assert len(meta["config_sha256"]) == 64
    config = run / CONFIG_FILE
    config.write_text(config.read_text().replace("seed: 0", "seed: 1"))
    with pytest.raises(PemmaError, match=r"config.yaml: changed after the run was written"):
        pemma.Run.open(run)
    with pytest.raises(PemmaError, match=r"changed after"):
        pemma.predict(run, tmp_path, tmp_path / "pred")
    # runs written before the record existed still load
    del meta["config_sha256"]
    (run / MODEL_META).write_text(json.dumps(meta))
    assert pemma.Run.open(run).config.train.seed == 1


def test_final_path_of_a_forced_run() -> None:
    from pemma.runs import final_path

    assert final_path(Path("/r/.surv.pemma-new")) == Path("/r/surv")
    assert final_path(Path("/r/surv")) == Path("/r/surv")


def test_forced_run_failing_mid_training_keeps_old_run(finished: Path, phantom: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import pemma.training.segmentation as segmentation

    def half_written(cfg, out, resume=False):  # writes part of a run, then fails like a bad case would
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / CONFIG_FILE).write_text("preset: tiny\n")
        (Path(out) / "model.safetensors").write_bytes(b"partial")
        raise PemmaError("CHUM-001: cannot read image")

    monkeypatch.setattr(segmentation, "train", half_written)
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    with pytest.raises(PemmaError, match="CHUM-001"):
        pemma.train(phantom, run, centres="CHUM", force=True, **TINY)
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    new = tmp_path / "new"
    with pytest.raises(PemmaError, match="CHUM-001"):
        pemma.train(phantom, new, centres="CHUM", **TINY)
    assert not new.exists()


def test_predict_never_writes_over_the_dataset(bases: dict[str, Path], phantom: Path, tmp_path: Path) -> None:
    from conftest import main_result

    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    before = {p.name: p.read_bytes() for p in (data / "labelsTr").iterdir()}
    for inputs in ([str(data), "--centres", "MDA"], [str(data / "imagesTr"), "--centres", "MDA"]):
        # the dataset (labels known) and its images folder alone (labels not read): the labels folder is refused
        result = main_result("predict", "--model", str(bases["unetr"]), "--input", *inputs, "--out",
                             str(data / "labelsTr"))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "would overwrite" in result.stderr and "MDA-00" in result.stderr
    assert {p.name: p.read_bytes() for p in (data / "labelsTr").iterdir()} == before
    results = tmp_path / "results" / "labels"  # a predictions folder that happens to be named labels*: reused
    for _ in range(2):
        main_result("predict", "--model", str(bases["unetr"]), "--input", str(data), "--centres", "MDA", "--out",
                    str(results)).check_returncode()
    plain = tmp_path / "plain"  # a folder of CT files of any names: case "patient" is read from patient.nii.gz
    plain.mkdir()
    shutil.copy(phantom / "imagesTr" / "MDA-000__CT.nii.gz", plain / "patient.nii.gz")
    result = main_result("predict", "--model", str(bases["unetr"]), "--input", str(plain), "--out", str(plain))
    assert result.returncode == 2 and "would overwrite" in result.stderr and "patient.nii.gz" in result.stderr
    assert (plain / "patient.nii.gz").read_bytes() == (phantom / "imagesTr" / "MDA-000__CT.nii.gz").read_bytes()


def test_interrupted_run_needs_resume_or_force(finished: Path, phantom: Path, tmp_path: Path) -> None:
    """A rerun that forgot --resume restarted from step 0 and wrote over the interrupted run's checkpoint."""
    run = copy_run(finished, tmp_path)
    (run / MODEL_META).unlink()  # interrupted before it finished: a checkpoint and no model.json
    checkpoint = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(PemmaError, match=r"holds an interrupted run \(checkpoint.pt\); pass --resume"):
        pemma.train(phantom, run, centres="CHUM", **TINY)
    assert (run / "checkpoint.pt").read_bytes() == checkpoint
    for flags in ({"resume": True}, {"force": True}):  # either choice opens it
        with new_run_folder(run, **flags) as folder:
            assert folder == run
    assert not (run / "checkpoint.pt").exists()  # --force started it over: no old checkpoint to resume later


def test_a_run_stopped_after_its_first_best_weights_is_interrupted_not_finished(
        phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """model.json is written with each best validation; a run killed after that looked finished: a rerun said
    "holds a finished run" instead of offering --resume, and predict used the partial weights without a word."""
    import warnings

    import pemma.training.loop as loop
    from pemma.methods import load_model

    def killed(self):
        raise KeyboardInterrupt  # what Ctrl-C does after the last step's validation

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(loop.SegmentationTraining, "_finish", killed)
        with pytest.raises(KeyboardInterrupt):
            pemma.train(phantom, run, centres="CHUM,CHUP", val_fraction=0.5, **TINY)
    meta = json.loads((run / MODEL_META).read_text())
    assert meta["complete"] is False and meta["step"] == 1 and meta["total_steps"] == 1
    with pytest.raises(PemmaError, match=r"holds an interrupted run \(training stopped before its end; best weights "
                                         r"of step 1 of 1\); pass --resume"):
        pemma.train(phantom, run, centres="CHUM,CHUP", val_fraction=0.5, **TINY)
    with pytest.warns(UserWarning, match="its training stopped before its end"):
        load_model(run)
    pemma.train(phantom, run, centres="CHUM,CHUP", resume=True, val_fraction=0.5, **TINY)  # finishes it
    assert json.loads((run / MODEL_META).read_text())["complete"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(run)
    with pytest.raises(PemmaError, match="holds a finished run"):
        pemma.train(phantom, run, centres="CHUM,CHUP", val_fraction=0.5, **TINY)


def test_the_same_tensors_give_the_same_file(tmp_path: Path) -> None:
    # safetensors writes its metadata in a hash map's order, which changes from call to call: identical weights
    # (a resumed run and an uninterrupted one) got different files and checksums
    import torch
    from safetensors import safe_open

    from pemma.io_utils import load_tensors

    state = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(2, dtype=torch.float64)}
    metadata = {"format": "pt", "pemma": "pemma-adapter", "note": "x"}
    digests = {save_tensors(state, tmp_path / f"w{i}.safetensors", metadata) for i in range(20)}
    assert len(digests) == 1
    loaded = load_tensors(tmp_path / "w0.safetensors", sha256=digests.pop())
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], v) for k, v in state.items())
    with safe_open(str(tmp_path / "w0.safetensors"), "pt") as fh:
        assert fh.metadata() == metadata
