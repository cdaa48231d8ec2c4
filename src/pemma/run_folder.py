"""Opening a run folder for a training command (:func:`new_run_folder`): what it refuses (a finished or
interrupted run without ``--force`` / ``--resume``, an ``--out`` over its inputs or inside another run), the lock it
holds (:mod:`pemma.run_guards`), and how ``--force`` replaces a finished run only when the new one succeeds (a hidden
sibling swapped in by two renames; a swap a kill interrupted is finished by the next command)."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from pemma.errors import PemmaError
from pemma.run_guards import check_out_of_reads, hidden_sibling, run_folder_lock
from pemma.runs import (
    CONFIG_FILE,
    NEW_SUFFIX,
    OLD_SUFFIX,
    STATE_FILE,
    finished_meta,
    interrupted_meta,
    remove_stale_parts,
)
from pemma.runtime import is_main_process


def _first_missing(path: Path) -> Path | None:
    """The top-most folder of ``path`` (itself or an ancestor) that does not exist yet, or None."""
    missing = None
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing = folder
    return missing


def _is_run(folder: Path) -> bool:
    """Whether ``folder`` is a pemma run folder: its ``config.yaml`` beside a ``model.json`` / ``survival.json``
    (finished) or a ``checkpoint.pt`` (interrupted); either name alone is too common to tell."""
    return (folder / CONFIG_FILE).is_file() and (finished_meta(folder) is not None or (folder / STATE_FILE).is_file())


@contextlib.contextmanager
def new_run_folder(out: str | os.PathLike, *, force: bool = False, resume: bool = False,
                   reads: Iterable[str | os.PathLike | None] = (),
                   data: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """Open ``out`` for a training command and yield the folder to write the run into.

    * ``out`` equal to, inside or holding a run in ``reads`` (the base / model runs the command reads), equal to
      or holding a dataset in ``data``, or an existing file, is an error
      (:func:`pemma.run_guards.check_out_of_reads`); so is an ``out`` inside any run folder (a ``--force`` of that
      run would delete it with its own files), and a ``force`` that would delete a run inside ``out``.
    * A finished run in ``out`` (``model.json`` / ``survival.json``) is an error unless ``force`` or ``resume``.
      With ``force`` the new run is written into a hidden sibling (``.<out>.pemma-new``) that replaces ``out``
      only when the command succeeds: a failed forced run leaves the old run exactly as it was. With
      ``resume`` the finished run is continued in place, as before.
    * An interrupted run (a checkpoint and no ``model.json``, or a ``model.json`` of best weights so far whose
      training stopped before its end: :func:`interrupted_meta`) is an error unless ``resume`` (continue it) or
      ``force`` (start over): a rerun that forgot ``--resume`` no longer discards it silently.
    * Any other existing folder is written into.
    * When the command fails, the folders it created for ``out`` are removed again unless they hold a
      checkpoint (``--resume`` can continue it); a folder that existed before is never removed.
    * Hidden ``.*.part*`` files a killed process left in ``out`` are deleted first.
    * The whole command holds the lock of ``out`` (:func:`pemma.run_guards.run_folder_lock`): a second command
      writing the same ``out`` meanwhile is refused at once.
    * A run that a ``--force`` killed between its two renames left in ``.<out>.pemma-old`` (``out`` missing) is
      renamed back to ``out`` first, with a warning (:func:`_recover_swap`).

    Under torchrun only rank 0 touches the file system; every rank gets the same path.

    Args:
        out: the run folder the user named.
        force: replace a finished run in ``out``.
        resume: continue the run in ``out``.
        reads: run folders the command reads (``None`` entries are skipped).
        data: other inputs the command reads: dataset folders, datalists, files (``None`` entries are skipped).

    Raises:
        PemmaError: one line naming ``out`` (and the run it clashes with, or the command holding its lock).

    Example:
        >>> with new_run_folder("runs/ad", reads=["runs/ct"]) as folder:
        ...     adapt("runs/ct", cfg, folder)
    """
    target = Path(os.fspath(out))
    check_out_of_reads(target, reads, data)
    if target.exists() and not target.is_dir():
        raise PemmaError(f"{target}: exists and is not a folder; choose another --out")
    container = next((p for p in Path(os.path.abspath(target)).parents if _is_run(p)), None)  # "..": resolved
    if container is not None:
        raise PemmaError(f"{target}: inside the run folder {container}; a --force of that run would delete this one "
                         "with it: choose an --out outside it")
    main = is_main_process()  # only rank 0 of a torchrun job touches the folders
    created = _first_missing(target.absolute())  # before the lock file's folder is made
    with run_folder_lock(target) if main else contextlib.nullcontext():
        if main:
            _recover_swap(target)
        with _open_run_folder(target, main, created, force=force, resume=resume) as folder:
            yield folder


@contextlib.contextmanager
def _open_run_folder(target: Path, main: bool, created: Path | None, *, force: bool,
                     resume: bool) -> Iterator[Path]:
    """The body of :func:`new_run_folder`, run while the lock is held (``created``: the first folder of ``target``
    that did not exist before the command)."""
    if target.is_dir() and main:
        remove_stale_parts(target)
    meta_file = finished_meta(target)
    stopped = interrupted_meta(target)
    if stopped is not None and not resume and not force:
        raise PemmaError(f"{target}: holds an interrupted run (training stopped before its end; {stopped}); pass "
                         "--resume to finish it, or --force to start it over (resume=True / force=True in the API)")
    if meta_file is not None and not resume:
        if not force:
            raise PemmaError(f"{target}: holds a finished run ({meta_file.name}); pass --force to replace it "
                             "(force=True in the API), or choose another --out")
        nested = next((p.parent for p in sorted(target.glob(f"*/**/{CONFIG_FILE}")) if _is_run(p.parent)), None)
        if nested is not None:
            raise PemmaError(f"{target}: --force would delete the run {nested} inside it with the old run; move it "
                             "out first")
        with _replacing(target, main) as fresh:
            yield fresh
        return
    if meta_file is None and not resume and (target / STATE_FILE).is_file():
        if not force:
            raise PemmaError(f"{target}: holds an interrupted run ({STATE_FILE}); pass --resume to continue it, or "
                             "--force to start it over (resume=True / force=True in the API)")
        if main:  # started over: a later --resume must not restore the old weights under the new settings
            (target / STATE_FILE).unlink()
    try:
        yield target
    except Exception:
        if main and created is not None and created.is_dir() and not (target / STATE_FILE).is_file():
            shutil.rmtree(created, ignore_errors=True)
        raise


@contextlib.contextmanager
def _replacing(target: Path, main: bool) -> Iterator[Path]:
    """Yield a hidden sibling of the finished run ``target``; on success swap it in (renames), else remove it.

    An interrupted (Ctrl-C) replacement is discarded like a failed one and says so: the :class:`KeyboardInterrupt`
    re-raised carries ``"<target> is left as it was (the old run); the new run's N steps were discarded"``.
    """
    fresh = hidden_sibling(target, NEW_SUFFIX)
    old = hidden_sibling(target, OLD_SUFFIX)
    if main:
        for stale in (fresh, old):
            if stale.is_dir():
                shutil.rmtree(stale)
        fresh.mkdir()
    try:
        yield fresh
    except BaseException as exc:
        if main:
            steps = _logged_steps(fresh)
            shutil.rmtree(fresh, ignore_errors=True)
            if isinstance(exc, KeyboardInterrupt):
                done = f"the new run's {steps} steps were discarded" if steps else "the new run was discarded"
                raise KeyboardInterrupt(f"{target} is left as it was (the old run); {done}") from None
        raise
    if main:
        os.rename(target, old)
        os.rename(fresh, target)
        shutil.rmtree(old, ignore_errors=True)


def _logged_steps(folder: Path) -> int | None:
    """How many steps the run in ``folder`` got through, as far as its files tell: the later of its checkpoint's
    step and the last step in its ``metrics.csv`` (None with neither)."""
    steps = []
    try:
        with open(folder / "metrics.csv", newline="") as fh:
            steps += [int(row["step"]) for row in csv.DictReader(fh) if row.get("step")]
    except (OSError, ValueError, KeyError):
        pass
    if (folder / STATE_FILE).is_file():
        try:  # mmap: the step only, not the weights and optimizer state
            steps.append(int(torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True, mmap=True)["step"]))
        except Exception:  # a checkpoint being written when the interrupt came: the metrics tell
            pass
    return max(steps) if steps else None


def _recover_swap(target: Path) -> None:
    """Finish what a ``--force`` killed between its renames left: with ``target`` missing, the old run waiting in
    ``.<target>.pemma-old`` is renamed back (with a warning); beside a finished ``target`` (the swap completed
    before the kill) it is deleted. Call with the lock held."""
    old = hidden_sibling(target, OLD_SUFFIX)
    if not old.is_dir():
        return
    if not target.exists():
        os.rename(old, target)
        fresh = hidden_sibling(target, NEW_SUFFIX)
        kept = f"; the new run it was swapping in is left in {fresh}" if fresh.is_dir() else ""
        warnings.warn(f"{target}: restored the old run from {old} (a forced run was killed while swapping in its "
                      f"replacement{kept})", UserWarning, stacklevel=4)
    elif finished_meta(target) is not None:
        shutil.rmtree(old, ignore_errors=True)
