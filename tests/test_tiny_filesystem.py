"""A real full disk: runs and predictions written to a tiny tmpfs fail with one line and lose nothing.

``test_faults.py`` injects ``ENOSPC`` into the writers; here the kernel runs out of space for real. Mounting needs
root (or CAP_SYS_ADMIN); where the platform does not allow it the tests are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import pemma
from pemma.cli.main import main

TINY = ["--spacing", "4", "4", "4", "--roi", "32", "32", "32", "--batch-size", "1", "--val-every", "1",
        "--max-steps", "1", "--modalities", "ct", "--centres", "CHUM"]


@contextlib.contextmanager
def tiny_fs(where: Path, kib: int) -> Iterator[Path]:
    """A tmpfs of ``kib`` KiB mounted at ``where`` (skips the test where mounting is not allowed)."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not permitted'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue().strip()


def _errors(err: str) -> list[str]:
    """The error lines of a CLI's stderr (its log lines, progress bars and warnings go there too)."""
    return [line for line in err.splitlines() if ": error: " in line or "unexpected error" in line]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def ct_run(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tinyfs") / "ct"
    code, err = _main(["train", "--data", str(phantom), "--out", str(out), *TINY])
    assert code == 0, err
    return out


@pytest.mark.skipif(shutil.which("mount") is None, reason="no mount command")
def test_full_disk_during_train_is_one_line_and_keeps_the_old_run(ct_run: Path, phantom: Path,
                                                                    tmp_path: Path) -> None:
    # room for the finished run and a few KiB more: a forced retrain must fail for lack of space
    with tiny_fs(tmp_path / "fs", _size(ct_run) // 1024 + 48) as fs:
        run = fs / "ct"
        shutil.copytree(ct_run, run)
        before = _files(run)
        code, err = _main(["train", "--data", str(phantom), "--out", str(run), "--force", *TINY])
        assert code == 2, err
        (line,) = _errors(err)
        assert "No space left on device" in line and str(fs) in line and "Traceback" not in err
        assert _files(run) == before  # the finished run is byte-identical
        assert sorted(p.name for p in fs.iterdir()) == ["ct"]  # no half-written sibling, no .part files
        # a new run into the full disk leaves no folder behind either
        code, err = _main(["train", "--data", str(phantom), "--out", str(fs / "new"), *TINY])
        assert code == 2 and len(_errors(err)) == 1 and "No space left on device" in _errors(err)[0]
        assert sorted(p.name for p in fs.iterdir()) == ["ct"]


@pytest.mark.skipif(shutil.which("mount") is None, reason="no mount command")
def test_full_disk_during_predict_is_one_line_and_leaves_no_partial_file(ct_run: Path, phantom: Path,
                                                                         tmp_path: Path) -> None:
    with tiny_fs(tmp_path / "fs", 16) as fs:
        (fs / "keep.txt").write_text("written before")
        code, err = _main(["predict", "--model", str(ct_run), "--input", str(phantom), "--centres", "CHUM",
                           "--out", str(fs / "preds")])
        assert code == 2 and "Traceback" not in err and len(_errors(err)) == 1, err
        assert "No space left on device" in err
        assert (fs / "keep.txt").read_text() == "written before"
        left = [p.name for p in fs.rglob("*") if p.is_file() and p.name != "keep.txt"]
        assert not [n for n in left if ".part" in n or n.startswith(".")], left  # no temporary files left
        # what was written is whole: every label file that exists loads
        for name in left:
            assert pemma.io_utils.load_nifti(fs / "preds" / name, what="label") is not None
