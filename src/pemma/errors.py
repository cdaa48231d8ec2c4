"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations


class PemmaError(Exception):
    """An error caused by the user's input (a file, a case, an option), not by a bug in pemma.

    The message must name the file or case and the problem in one line.
    """


class MissingImageError(PemmaError):
    """A selected case has no image of a requested modality (a caller may add what else the model takes)."""


def user_error(exc: BaseException | None) -> PemmaError | None:
    """The :class:`PemmaError` that ``exc`` is or wraps (MONAI's transforms re-raise what a transform raised as a
    ``RuntimeError`` ``from`` the original), or None when ``exc`` is not a user error.

    Only explicit causes are followed: an error raised while a user error was being handled (``__context__``) is a
    bug of its own, not that user error.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, PemmaError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__
    return None


def record_case_failure(failures: dict[str, str] | None, case_id: str, exc: BaseException) -> None:
    """In an ``except`` block of a loop over cases: record the user error ``exc`` is or wraps as ``case_id``'s
    failure (``failures[case_id] = message``), so the other cases go on; re-raise ``exc`` when it is not a user
    error (a bug) or there is nowhere to record it (``failures`` None: the first bad case stops)."""
    problem = user_error(exc)
    if failures is None or problem is None:
        raise exc
    failures[case_id] = str(problem)
