"""Shared fixtures: a tiny phantom dataset and the tiny-model training flags used by CLI tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

# Threads per test process, set before torch is imported (CLI subprocesses inherit it): the suite runs in two
# pytest-xdist workers on a 2-core machine, so one thread each; a single process (-p no:xdist) gets two.
os.environ.setdefault("OMP_NUM_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")

import pytest  # noqa: E402

from pemma.data.phantom import PhantomConfig, synthesize_phantom  # noqa: E402

#: flags that make any training verb run a tiny model in seconds
FAST = ["--preset", "tiny", "--spacing", "4", "4", "4", "--roi", "32", "32", "32", "--batch-size", "1",
        "--val-every", "1"]
FAST_SWIN = ["--preset", "tiny", "--spacing", "4", "4", "4", "--roi", "64", "64", "64", "--batch-size", "1",
             "--val-every", "1"]
FLAGS = {"unetr": FAST, "swin_unetr": FAST_SWIN}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions are fastest on one thread; on a loaded machine more threads are 10-40x slower.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 centres x 2 cases, 48 x 48 x 32 CT voxels (about 96 x 96 x 80 mm)."""
    root = tmp_path_factory.mktemp("phantom")
    synthesize_phantom(root, PhantomConfig(cases_per_centre=2, centres=("CHUM", "CHUP", "MDA"),
                                           ct_shape=(48, 48, 32), seed=1), progress=False)
    return root


class TinyBases(Mapping[str, Path]):
    """Tiny CT-only base runs (2 steps, trained on CHUM and CHUP), one per backbone, each trained in this process
    the first time a test asks for it (most sessions need the UNETR one only)."""

    def __init__(self, phantom: Path, root: Path) -> None:
        self.phantom, self.root = phantom, root

    def __getitem__(self, backbone: str) -> Path:
        out = self.root / backbone
        if not (out / "model.json").exists():
            run_main("train", "--data", str(self.phantom), "--centres", "CHUM,CHUP", "--modalities", "ct",
                     "--backbone", backbone, *FLAGS[backbone], "--max-steps", "2", "--out", str(out))
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(FLAGS)

    def __len__(self) -> int:
        return len(FLAGS)


@pytest.fixture(scope="session")
def bases(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyBases:
    """Tiny CT-only base runs of both backbones (:class:`TinyBases`: each trained on first use)."""
    return TinyBases(phantom, tmp_path_factory.mktemp("bases"))


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m pemma.cli.main ARGS`` in a subprocess (as a user would run ``pemma``)."""
    proc = subprocess.run([sys.executable, "-m", "pemma.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"pemma {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def run_main(*args: str) -> str:
    """Run ``pemma ARGS`` in this process (no interpreter start-up); return stdout, fail on a non-zero exit."""
    proc = main_result(*args)
    if proc.returncode != 0:
        raise AssertionError(f"pemma {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stdout


def main_result(*args: str) -> subprocess.CompletedProcess:
    """Run ``pemma ARGS`` in this process and return its exit status, stdout and stderr, as :func:`run_cli` does.

    What the user sees is the same as from a subprocess: ``pemma.cli.main.main`` turns user errors into one line
    and an exit status itself, and an exception it lets through fails the test here. It spares the ~13 s a
    subprocess spends importing torch, MONAI and peft on 2 cores."""
    import contextlib
    import io

    from pemma.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as stop:  # argparse's usage errors
            code = stop.code if isinstance(stop.code, int) else 1
    return subprocess.CompletedProcess(["pemma", *args], code, out.getvalue(), err.getvalue())


#: files whose tests take longest, started first so ``--dist loadfile`` does not leave one worker alone at the end
LONGEST_FIRST = ("test_survival_cli.py", "test_api.py", "test_recipes.py", "test_update_shared.py", "test_demo.py",
                 "test_cli_e2e.py", "test_training.py", "test_reproduce.py")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="also run the long end-to-end tests (@pytest.mark.long: the whole demo, reproduce, DDP, "
                          "resume after a kill, every CLI verb end to end; about 10 min more on 2 CPU cores)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the long tests unless ``--long`` is given (or ``-m`` names them: ``-m long``); move the longest
    test files to the front (a stable sort: the order inside each file is kept)."""
    if not config.getoption("--long") and "long" not in (config.getoption("markexpr") or ""):
        long = [item for item in items if item.get_closest_marker("long")]
        if long:
            config.hook.pytest_deselected(items=long)
            items[:] = [item for item in items if not item.get_closest_marker("long")]
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))
