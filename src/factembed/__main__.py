"""``python -m factembed``: the command line (same as the ``factembed`` command)."""

import sys

from .cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
