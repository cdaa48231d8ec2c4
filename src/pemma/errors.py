"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations


class PemmaError(Exception):
    """An error caused by the user's input (a file, a case, an option), not by a bug in pemma.

    The message must name the file or case and the problem in one line.
    """
