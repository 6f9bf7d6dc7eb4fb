"""The ``factembed`` command: the commands and their parser (:mod:`.commands`), the options
shared with :class:`~factembed.FEConfig` (:mod:`.options`) and the rank entry point of a
data-parallel fit (:mod:`.rank`, run as ``python -m factembed.cli.rank``).  Nothing imports it."""

from .commands import main

__all__ = ["main"]
