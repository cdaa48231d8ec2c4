"""``pemma`` command line: one verb per stage, a thin layer over the Python API of the same names."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pemma import __version__
from pemma.cli import adaptation, check, demo, importing, protocol, segmentation, survival
from pemma.errors import user_error

VERBS = (check, segmentation, importing, adaptation, survival, protocol, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pemma", description=(
        "Parameter-efficient multi-modal adaptation (CT -> CT+PET) for HECKTOR-style segmentation."))
    parser.add_argument("--version", action="version", version=f"pemma {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in VERBS:
        module.register(sub)
    return parser


@contextlib.contextmanager
def _stdout_of_main_process() -> Iterator[None]:
    """Under torchrun only rank 0 prints a verb's summary (the other ranks' stdout is dropped; their errors still
    reach stderr): the others never validate, so theirs said "n/a (no validation score)" beside rank 0's score."""
    from pemma.runtime import is_main_process

    if is_main_process():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def _not_under_torchrun(args: argparse.Namespace) -> str | None:
    """The error of a verb launched by torchrun that does not train with DDP (predict, evaluate, reproduce...): every
    process did all of its work and wrote the same files (None: one process, or a training verb)."""
    from pemma.runtime import launched_processes

    processes = launched_processes()
    if processes <= 1 or getattr(args, "distributed", False):
        return None
    return (f"runs as one process: under torchrun ({processes} processes) each would do all of its work and write "
            "the same files; torchrun is for the training verbs (train, adapt, update, survival train / adapt): run "
            "this one without it")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    refused = _not_under_torchrun(args)
    if refused is not None:
        print(f"pemma {args.verb}: error: {refused}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("pemma.dicom").setLevel(logging.INFO)  # DICOM decisions: series used, SUV factor, ROIs
    logging.getLogger("pemma.evaluate").setLevel(logging.INFO)  # which cases --split unseen left out, and why
    logging.getLogger("pemma.predict").setLevel(logging.INFO)  # the input set, and a single case's files
    try:
        with warnings.catch_warnings(), _stdout_of_main_process():
            warnings.simplefilter("always", UserWarning)
            warnings.showwarning = _one_line_warning(args.verb)
            result = args.func(args)
    except KeyboardInterrupt as exc:  # a forced run says what it kept: "runs/r1 is left as it was (the old run)..."
        print(f"pemma: interrupted: {exc}" if str(exc) else "pemma: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user errors become one line; a bug becomes one line and a log file
        user = user_error(exc)
        if user is None:
            user = _environment_error(exc)
        if user is not None:
            print(f"pemma {args.verb}: error: {user}", file=sys.stderr)
            return 2
        if os.environ.get("PEMMA_DEBUG"):
            raise
        print(f"pemma {args.verb}: unexpected error: {_first_line(exc)} (traceback in {_write_traceback(args.verb)}; "
              f"please report it, or set PEMMA_DEBUG=1 to see it here)", file=sys.stderr)
        return 1
    return int(result or 0)


#: file-system failures that are the environment's, not pemma's: reported as one line naming the file
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENOTDIR,
                       errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG}


def _environment_error(exc: BaseException) -> str | None:
    """``cannot write /out/x: No space left on device`` for a full, read-only or unwritable output."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
            target = exc.filename or "a file"
            return f"{target}: {exc.strerror or type(exc).__name__} (check the path, its permissions and free space)"
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _one_line_warning(verb: str) -> Callable[..., None]:
    """``warnings.showwarning`` replacement: a user warning is one line ``pemma VERB: warning: ...`` on stderr, on a
    line of its own while a progress bar is drawn (it was appended to the bar's line, easy to miss)."""
    from tqdm import tqdm

    def show(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
        with tqdm.external_write_mode(file=sys.stderr):
            print(f"pemma {verb}: warning: {str(message).splitlines()[0]}", file=sys.stderr)

    return show


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _write_traceback(verb: str) -> str:
    """Write the current exception's traceback to a log file; return its path (or where it could not go)."""
    folder = Path(tempfile.gettempdir()) / "pemma-errors"
    path = folder / f"{verb}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(f"pemma {verb} ({' '.join(sys.argv)})\n{traceback.format_exc()}")
    except OSError:
        return f"{path} (could not be written)"
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
