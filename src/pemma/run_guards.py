"""Guards around a run folder, which :func:`pemma.run_folder.new_run_folder` applies for every training command: one
command writes a run folder at a time (:func:`run_folder_lock`), the folder does not overlap what the command reads
(:func:`check_out_of_reads`), and the hidden siblings a run folder may have (:func:`hidden_sibling`: a forced run's
new folder, the run it replaces while swapping, the lock file)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pemma.errors import PemmaError

try:
    import fcntl
except ImportError:  # not POSIX: the lock falls back to the holder recorded in the file
    fcntl = None  # type: ignore[assignment]

#: suffix of the lock file beside a run folder (``.<name>.pemma-lock``) while a command writes it
LOCK_SUFFIX = ".pemma-lock"


def hidden_sibling(folder: str | os.PathLike, suffix: str) -> Path:
    """``.<name><suffix>`` beside ``folder``: where a forced run is written (``NEW_SUFFIX``), where the run it
    replaces waits during the swap (``OLD_SUFFIX``), the lock file (``LOCK_SUFFIX``)."""
    folder = Path(os.fspath(folder))
    return folder.parent / f".{folder.name}{suffix}"


@contextlib.contextmanager
def run_folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of the run folder ``folder`` (a second holder, in this or another process, is refused).

    The lock is ``.<name>.pemma-lock`` beside the folder, not inside it: it covers the name, so also a forced run's
    hidden ``.<name>.pemma-new`` and the renames that swap it in. It is an exclusive ``fcntl.flock`` on that file,
    which the kernel releases when the process ends however it ends (even ``kill -9``): a lock is never left held
    by a process that is gone. The file records the holder (pid, host, start time) for the message; a file left by
    a killed holder is taken over with a warning naming it. Released (the file deleted) when the block is left,
    also on errors and ``KeyboardInterrupt``. Where the file system has no ``flock`` (or not on POSIX), the record
    decides: a live pid on this host, or any pid on another host, holds it.

    Raises:
        PemmaError: ``"runs/cc: another pemma command (pid N on host H, since T) is writing this run folder; wait
            for it or remove runs/.cc.pemma-lock if it is gone"``.

    Example:
        >>> with run_folder_lock("runs/cc"):
        ...     write_the_run("runs/cc")
    """
    folder = Path(os.fspath(folder))
    # one lock per folder however the path is spelled (a symlinked parent, "..")
    lock = hidden_sibling(Path(os.path.realpath(folder.parent or ".")) / folder.name, LOCK_SUFFIX)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(folder, lock)
    try:
        yield lock
    finally:
        _release(lock, fd)


def _acquire(folder: Path, lock: Path) -> int:
    """Open and lock ``lock`` for ``folder``, record this process in it; return its descriptor."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            locked = _flock(fd)
        except BaseException:
            os.close(fd)
            raise
        holder = _read_holder(fd)
        if locked is False or (locked is None and holder and _holder_alive(holder)):
            os.close(fd)
            raise PemmaError(f"{folder}: another pemma command ({_describe(holder)}) is writing this run folder; "
                             f"wait for it or remove {lock} if it is gone")
        if not _same_file(fd, lock):  # the holder deleted the file while we waited on it: lock the new one
            os.close(fd)
            continue
        if holder:
            warnings.warn(f"{folder}: took over the stale lock {lock} of a pemma command that is gone "
                          f"({_describe(holder)})", UserWarning, stacklevel=5)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, record.encode() + b"\n")
        return fd


def _flock(fd: int) -> bool | None:
    """Take an exclusive ``flock`` on ``fd`` without waiting: True taken, False held by another, None where the
    file system (or the platform) offers none."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise
    return True


def _release(lock: Path, fd: int) -> None:
    """Delete ``lock`` if it is still the file ``fd`` holds, then close ``fd`` (which drops the ``flock``). Without
    ``flock`` (not POSIX) the file is closed first: an open file cannot be deleted there."""
    same = _same_file(fd, lock)
    try:
        if same and fcntl is not None:
            lock.unlink(missing_ok=True)
    finally:
        os.close(fd)
    if same and fcntl is None:
        lock.unlink(missing_ok=True)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_holder(fd: int) -> dict[str, Any]:
    """The holder recorded in a lock file (empty when none is, or the record is unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)  # not os.pread: POSIX only, and the fallback is for where flock is missing
        text = os.read(fd, 4096).decode(errors="replace").strip()
        holder = json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _holder_alive(holder: dict[str, Any]) -> bool:
    """Whether the recorded holder may still run: its pid is alive on this host, or it runs on another host."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        pid = int(holder.get("pid", 0))
        if pid <= 0 or pid == os.getpid():
            return pid == os.getpid()
        os.kill(pid, 0)
    except (ValueError, TypeError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    """``pid N on host H, since T`` of a lock's record."""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since {holder.get('since', '?')}"


def check_out_of_reads(out: str | Path, reads: Iterable[str | os.PathLike | None],
                       data: Iterable[str | os.PathLike | None] = ()) -> None:
    """``out`` must not overlap what the command reads.

    ``out`` may be neither one of the runs in ``reads``, nor inside one, nor a folder holding one (a forced rerun
    would replace that folder with everything in it); nor an input in ``data`` (dataset folder, datalist, weights
    file) or a folder holding one (the run's files would land among the cases, and ``--force`` would later delete
    them). A run inside a dataset folder is allowed.

    Raises:
        PemmaError: naming ``out`` and the run or input it would overwrite.
    """
    target = _absolute(out)
    inputs = [(path, True) for path in reads] + [(path, False) for path in data]
    for path, is_run in inputs:
        if path is None or not os.fspath(path):
            continue
        source = _absolute(path)
        what = f"the run {os.fspath(path)} that this command reads" if is_run else \
            f"{os.fspath(path)}, an input of this command (dataset or file)"
        if target == source or (is_run and source in target.parents):
            where = "is" if target == source else "is inside"
            raise PemmaError(f"{out}: {where} {what}; write the new run to another --out, not over or inside it")
        if target in source.parents:
            raise PemmaError(f"{out}: holds {what}; write the new run to a folder of its own, beside it")


def _absolute(path: str | os.PathLike) -> Path:
    """``path`` made absolute with its links resolved (also for a path that does not exist yet)."""
    return Path(os.path.abspath(os.fspath(path))).resolve()
