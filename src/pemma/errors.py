"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations


class PemmaError(Exception):
    """An error caused by the user's input (a file, a case, an option), not by a bug in pemma.

    The message must name the file or case and the problem in one line.
    """


def user_error(exc: BaseException | None) -> PemmaError | None:
    """The :class:`PemmaError` that ``exc`` is or wraps (MONAI's transforms re-raise what a transform raised as a
    ``RuntimeError`` whose cause is the original), or None when ``exc`` is not a user error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, PemmaError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
