"""Running ranks on this machine with torchrun (``torch.distributed.run``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere), so a
    ``kill -9`` of ``factembed fit --distributed N`` leaves no rank training on (orphans
    would write into the same checkpoint directory as the run that resumes it)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getppid()
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:       # the parent died before the request took effect
            os._exit(1)
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        pass


def torchrun_command(nproc: int, module_args: list[str]) -> list[str]:
    """The command that runs ``python <module_args>`` as ``nproc`` local ranks
    (``--standalone``: rendezvous on a free local port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(nproc)}",
            *module_args]


def run_torchrun(nproc: int, module_args: list[str]) -> int:
    """Run ``nproc`` local ranks and wait for them; returns torchrun's exit status.
    Each rank gets ``cpu_count / nproc`` OpenMP threads unless ``OMP_NUM_THREADS`` is set."""
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # share the cores between the processes
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, int(nproc))))
    return subprocess.call(torchrun_command(nproc, module_args), env=env, preexec_fn=die_with_parent)
