"""Exception types of factembed.

There is one exception type for bad input data: :class:`FEInputError`.  It is a
:class:`ValueError`, so callers that already catch ``ValueError`` keep working.
Its message is a single line that names the file (when there is one), the
row / line / sample / gene concerned and the problem, for example::

    expr.csv: line 7 has 4 fields, expected 5 (ragged row)
"""

from __future__ import annotations

import os

__all__ = ["FEInputError"]


class FEInputError(ValueError):
    """Bad input: a missing, malformed or inconsistent file or array.

    Parameters
    ----------
    message:
        What is wrong (one line; newlines are replaced by spaces).
    path:
        The file concerned, if any.  It is prefixed to the message as
        ``"<path>: <message>"`` and kept in the ``path`` attribute.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        message = " ".join(str(message).split("\n"))
        self.path = None if path is None else os.fspath(path)
        self.problem = message
        if self.path is not None:
            message = f"{self.path}: {message}"
        super().__init__(message)
