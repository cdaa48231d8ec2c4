"""``pemma`` command line: one verb per stage, a thin layer over the Python API of the same names."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pemma import __version__
from pemma.cli import adaptation, demo, protocol, segmentation, survival
from pemma.errors import PemmaError

VERBS = (segmentation, adaptation, survival, protocol, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pemma", description=(
        "Parameter-efficient multi-modal adaptation (CT -> CT+PET) for HECKTOR-style segmentation."))
    parser.add_argument("--version", action="version", version=f"pemma {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in VERBS:
        module.register(sub)
    return parser


def _user_error(exc: BaseException) -> PemmaError | None:
    """A :class:`PemmaError` raised directly or wrapped by MONAI's transform machinery."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, PemmaError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("pemma: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user errors become one line; bugs keep their traceback
        user = _user_error(exc)
        if user is None:
            raise
        print(f"pemma {args.verb}: error: {user}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
