"""A run folder has one writer at a time; a forced run interrupted or killed mid-swap leaves the old run usable;
``metrics.csv`` is truncated atomically."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
from pathlib import Path

import pytest

import pemma
from pemma.errors import PemmaError
from pemma.run_folder import new_run_folder
from pemma.run_guards import run_folder_lock
from pemma.runs import MODEL_META, read_meta, save_state
from pemma.runtime import MetricsCSV

TINY = {"spacing": [4, 4, 4], "roi": [32, 32, 32], "batch_size": 1, "val_every": 1, "max_steps": 1,
        "modalities": "ct"}


def fake_run(folder: Path, seed: int = 0) -> Path:
    """A folder that counts as a finished run (its ``model.json``)."""
    folder.mkdir(parents=True)
    (folder / MODEL_META).write_text(json.dumps({"kind": "backbone", "seed": seed}))
    return folder


def hidden(folder: Path, suffix: str) -> Path:
    return folder.parent / f".{folder.name}{suffix}"


def test_second_writer_is_refused_while_the_first_holds_the_lock(phantom: Path, tmp_path: Path) -> None:
    """Two trainings on one --out both succeeded and left a folder mixing the files of both."""
    run = tmp_path / "runs" / "cc"
    with new_run_folder(run) as folder:
        lock = hidden(run, ".pemma-lock")
        assert lock.is_file() and json.loads(lock.read_text())["pid"] == os.getpid()
        pattern = (rf"^{run}: another pemma command \(pid {os.getpid()} on host {socket.gethostname()}, since "
                   rf"[0-9: -]+\) is writing this run folder; wait for it or remove {lock} if it is gone$")
        for flags in ({}, {"force": True}, {"resume": True}):
            with pytest.raises(PemmaError, match=pattern):
                with new_run_folder(run, **flags):
                    pass
        with pytest.raises(PemmaError, match="another pemma command"):
            pemma.train(phantom, run, centres="CHUM", seed=1, **TINY)  # refused before it trains or writes
        assert folder == run and not run.exists()
    assert not lock.exists()
    with new_run_folder(run):  # free again
        pass


def test_forced_run_holds_the_lock_of_the_target_name(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "cc")
    with new_run_folder(run, force=True) as fresh:
        assert fresh == hidden(run, ".pemma-new")
        with pytest.raises(PemmaError, match="another pemma command"):
            with new_run_folder(run, force=True):
                pass
        (fresh / MODEL_META).write_text(json.dumps({"kind": "backbone", "seed": 1}))
    assert json.loads((run / MODEL_META).read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cc"]


def test_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    """flock dies with its process (kill -9 included); the record it left is taken over with a warning."""
    run = tmp_path / "cc"
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: hold the lock until killed
        try:
            with run_folder_lock(run):
                os.write(ready_w, b"x")
                signal.pause()
        finally:
            os._exit(0)
    try:
        os.close(ready_w)
        assert os.read(ready_r, 1) == b"x"
        with pytest.raises(PemmaError, match=rf"another pemma command \(pid {pid} on host"):
            with new_run_folder(run):
                pass
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_r)
    assert hidden(run, ".pemma-lock").is_file()  # left behind by the kill
    with pytest.warns(UserWarning, match=rf"took over the stale lock .*\(pid {pid} on host"):
        with new_run_folder(run):
            pass
    assert not hidden(run, ".pemma-lock").exists()


def test_stale_lock_record_is_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "cc"
    hidden(run, ".pemma-lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(),
                                                      "since": "2026-01-01 00:00:00"}))
    with pytest.warns(UserWarning, match="took over the stale lock"):
        with new_run_folder(run) as folder:
            folder.mkdir()
    assert not hidden(run, ".pemma-lock").exists()


@pytest.mark.parametrize("failure", [PemmaError("CHUM-001: cannot read image"), KeyboardInterrupt()])
def test_lock_is_released_after_an_error(tmp_path: Path, failure: BaseException) -> None:
    for flags, run in (({}, tmp_path / "new" / "cc"), ({"force": True}, fake_run(tmp_path / "old"))):
        with pytest.raises(type(failure)):
            with new_run_folder(run, **flags):
                raise failure
        assert not hidden(run, ".pemma-lock").exists()
        with new_run_folder(run, **flags):
            pass


def test_interrupted_forced_run_says_what_it_kept(tmp_path: Path) -> None:
    """Ctrl-C in a --force run printed only 'pemma: interrupted' after deleting the new run's checkpoints."""
    run = fake_run(tmp_path / "r1")
    with pytest.raises(KeyboardInterrupt, match=rf"^{run} is left as it was \(the old run\); the new run's 6 "
                                                r"steps were discarded$"):
        with new_run_folder(run, force=True) as fresh:
            metrics = MetricsCSV(fresh / "metrics.csv")
            for step in (2, 4, 6):
                metrics.append({"step": step, "loss": 1.0})
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt, match=r"the new run's 8 steps were discarded$"):
        with new_run_folder(run, force=True) as fresh:  # checkpointed after its last validation
            MetricsCSV(fresh / "metrics.csv").append({"step": 5})
            save_state({"step": 8}, fresh)
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt, match=r"the new run was discarded$"):
        with new_run_folder(run, force=True):
            raise KeyboardInterrupt
    assert json.loads((run / MODEL_META).read_text())["seed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1"]


def test_cli_prints_what_an_interrupted_forced_run_kept(phantom: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import main_result

    import pemma.training.segmentation as segmentation

    def interrupted(cfg, out, resume=False):
        MetricsCSV(Path(out) / "metrics.csv").append({"step": 4})
        raise KeyboardInterrupt

    monkeypatch.setattr(segmentation, "train", interrupted)
    run = fake_run(tmp_path / "r1")
    result = main_result("train", "--data", str(phantom), "--centres", "CHUM", "--out", str(run), "--max-steps", "8",
                         "--force")
    assert result.returncode == 130
    assert result.stderr.strip() == (f"pemma: interrupted: {run} is left as it was (the old run); the new run's 4 "
                                     "steps were discarded")


def test_run_left_by_a_kill_between_the_renames_is_restored(tmp_path: Path) -> None:
    """A kill between the two renames of a forced run left X missing and the old run in .X.pemma-old."""
    run = tmp_path / "r1"
    fake_run(hidden(run, ".pemma-old"))
    fake_run(hidden(run, ".pemma-new"), seed=1)  # the replacement, complete, about to be renamed in
    with pytest.raises(PemmaError, match=rf"{run}: model folder not found, but .*\.r1\.pemma-old holds the run"):
        read_meta(run)
    with pytest.warns(UserWarning, match=r"restored the old run from .*\.r1\.pemma-old.*left in .*\.r1\.pemma-new"):
        with pytest.raises(PemmaError, match="holds a finished run"):  # X is no longer treated as absent
            with new_run_folder(run):
                pass
    assert read_meta(run)["seed"] == 0 and not hidden(run, ".pemma-old").exists()
    # killed after the second rename: the swap finished, the old run is only left over
    fake_run(hidden(run, ".pemma-old"), seed=2)
    with new_run_folder(run, resume=True):
        pass
    assert read_meta(run)["seed"] == 0 and not hidden(run, ".pemma-old").exists()


def test_metrics_truncate_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = MetricsCSV(tmp_path / "metrics.csv")
    for step in (1, 2, 3):
        metrics.append({"step": step, "loss": step / 10})
    before = metrics.path.read_bytes()

    def fail_midway(self: csv.DictWriter, rows: object) -> None:
        self.writerow({"step": 1})
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(csv.DictWriter, "writerows", fail_midway)
        with pytest.raises(OSError):
            metrics.truncate(2)
    assert metrics.path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]
    metrics.truncate(2)
    with open(metrics.path, newline="") as fh:
        assert [row["step"] for row in csv.DictReader(fh)] == ["1", "2"]


def test_the_lock_holds_however_the_path_is_spelled(tmp_path: Path) -> None:
    """A symlinked parent (or "..") named the same folder by another path, and both commands took "its" lock."""
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with run_folder_lock(tmp_path / "real" / "cc"):
        for spelling in (tmp_path / "alias" / "cc", tmp_path / "alias" / ".." / "real" / "cc"):
            with pytest.raises(PemmaError, match="another pemma command"):
                with run_folder_lock(spelling):
                    pass
