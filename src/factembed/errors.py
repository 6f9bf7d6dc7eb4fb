"""Exception and warning types of factembed.

There is one exception type for bad input data: :class:`FEInputError`.  It is a
:class:`ValueError`, so callers that already catch ``ValueError`` keep working.
Its message is a single line that names the file (when there is one), the
row / line / sample / gene concerned and the problem, for example::

    expr.csv: line 7 has 4 fields, expected 5 (ragged row)

A message that tells the user what to change carries the remedy in two spellings:
``hint`` for Python (``Preprocessing(log10p1=False)``) and ``cli_hint`` for the
command line (``--no-log``).  ``str(exc)`` uses the Python one; the ``factembed``
command prints :meth:`FEInputError.cli_message`.  The library cannot know who called
it, and a table in the CLI that rewrote messages after the fact would break silently
whenever a message changed; an error that carries both spellings cannot drift.
:class:`FEWarning` does the same for warnings.
"""

from __future__ import annotations

import os

__all__ = ["FEInputError", "MissingColumnError", "FEWarning"]


def one_line(text: object) -> str:
    """A message (or an exception's) on one line, runs of white space as one space; an
    exception without a message gives its type name."""
    line = " ".join(str(text).split())
    return line or (type(text).__name__ if isinstance(text, BaseException) else "")


def _with_hint(message: str, hint: str | None) -> str:
    return message if not hint else f"{message} ({hint})"


class FEInputError(ValueError):
    """Bad input: a missing, malformed or inconsistent file or array.

    Parameters
    ----------
    message:
        What is wrong (one line; newlines are replaced by spaces).
    path:
        The file concerned, if any.  It is prefixed to the message as
        ``"<path>: <message>"`` and kept in the ``path`` attribute.
    hint, cli_hint:
        What to change, spelled for Python callers and for the command line
        (``cli_hint`` defaults to ``hint``); appended in parentheses.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, *,
                 hint: str | None = None, cli_hint: str | None = None):
        message = one_line(message)
        self.path = None if path is None else os.fspath(path)
        self.problem = message
        self.hint = hint
        self.cli_hint = cli_hint if cli_hint is not None else hint
        super().__init__(self._render(hint))

    def _render(self, hint: str | None) -> str:
        text = _with_hint(self.problem, hint)
        return text if self.path is None else f"{self.path}: {text}"

    def cli_message(self) -> str:
        """The message with the command-line spelling of the remedy."""
        return self._render(self.cli_hint)


class MissingColumnError(FEInputError):
    """A label column that the file does not have; ``column`` is the one asked for
    and ``available`` the columns that the file does have (when known)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, *, column: str | None = None,
                 available=None, **kw):
        self.column = column
        self.available = None if available is None else [str(c) for c in available]
        super().__init__(message, path, **kw)


class FEWarning(UserWarning):
    """A warning whose advice has a Python and a command-line spelling (see
    :class:`FEInputError`); ``str(w)`` is the Python one."""

    def __init__(self, message: str, *, hint: str | None = None, cli_hint: str | None = None):
        self.problem = one_line(message)
        self.hint = hint
        self.cli_hint = cli_hint if cli_hint is not None else hint
        super().__init__(_with_hint(self.problem, hint))

    def cli_message(self) -> str:
        return _with_hint(self.problem, self.cli_hint)
