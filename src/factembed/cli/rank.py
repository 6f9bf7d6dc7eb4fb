"""Rank entry point of a data-parallel fit launched by ``factembed fit --distributed N``:
``python -m factembed.cli.rank REQUEST.json`` (under torchrun) runs
:func:`factembed.workflow.fit_rank` with the request the launching process prepared.

Like :mod:`factembed.cli`, this is an entry point: it sits above the workflow layer (and
so outside :mod:`factembed.distributed`, which the workflow uses).
To train over several machines, run the command line itself on every node under your
own launcher: ``torchrun ... -m factembed fit DATA -o MODEL --distributed torchrun``.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1 or argv[0] in ("fit", "transform", "-h", "--help"):
        print("usage: torchrun ... -m factembed.cli.rank REQUEST.json (written by 'factembed fit "
              "--distributed N'); to launch ranks yourself use: torchrun ... -m factembed fit DATA -o MODEL "
              "--distributed torchrun  (or: -m factembed transform MODEL DATA -o OUT --distributed torchrun)",
              file=sys.stderr)
        return 2
    from ..distributed.launch import die_with_parent
    from ..workflow import FitRequest, fit_rank

    die_with_parent()      # torchrun's agent is the parent: no orphaned rank after a kill -9

    try:
        with open(argv[0]) as fh:
            request = FitRequest.from_dict(json.load(fh))
        fit_rank(request)
        return 0
    except (ValueError, OSError, FloatingPointError, KeyError, RuntimeError) as exc:
        rank = os.environ.get("RANK", "0")
        print(f"factembed: error (rank {rank}): {' '.join(str(exc).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    code = main()
    # The rank's work is done (rank 0 wrote the model atomically, every checkpoint is
    # atomic): leave without the interpreter's teardown, where gloo's and torch's C++
    # threads have aborted a finished rank now and then ("terminate called without an
    # active exception", exit -6), which torchrun reports as a failed fit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
