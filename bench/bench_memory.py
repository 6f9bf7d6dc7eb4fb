"""Peak memory of a full fit at the TCGA shape vs the size of the float32 matrix.

The parent writes a synthetic 10,344 x 19,962 float32 matrix to a temporary .npy file;
a fresh child process imports torch + factembed (its resident size then is the
"interpreter + torch baseline"), loads the matrix, and runs
``FactorizedEmbeddings(n_steps=...).fit(X)``.  The child reports its peak resident set
(VmHWM from /proc/self/status and ru_maxrss) at each stage.  Net = peak - baseline.

The baseline is taken twice: after ``import torch, factembed``, and after creating a
``torch.optim.Adam`` (whose first construction imports ``torch._dynamo``, ~70 MiB of code,
a fixed cost of the library that every fit pays and that does not grow with the data).

A second child fits the same file *backed* (``factembed.sources.open_source``: rows are
read from disk per block, the matrix is never resident), the path for matrices that do not
fit in memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from _common import ROOT, TCGA_GENES, TCGA_SAMPLES, Tee, machine_line, out_path, parser, tcga_like

CHILD = r"""
import json, resource, sys, time
def hwm():
    with open('/proc/self/status') as f:
        d = {l.split(':')[0]: int(l.split()[1]) * 1024 for l in f if l.startswith(('VmHWM', 'VmRSS'))}
    d['ru_maxrss'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return d
import numpy as np, torch
from factembed import FactorizedEmbeddings
torch.zeros(1) @ torch.zeros(1, 1)                # initialise the BLAS / thread pools
rep = {'baseline_import': hwm()}
torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])   # one-off import of torch._dynamo
rep['baseline'] = hwm()
if sys.argv[3] == 'backed':
    from factembed.sources import open_source
    X = open_source(sys.argv[1])
    rep['matrix_bytes'] = 4 * X.shape[0] * X.shape[1]
else:
    X = np.load(sys.argv[1])
    rep['matrix_bytes'] = X.nbytes
rep['loaded'] = hwm()
t = time.perf_counter()
fe = FactorizedEmbeddings(n_steps=int(sys.argv[2]), random_state=0, verbose=False, device='cpu')
fe.fit(X)
rep['fit_seconds'] = time.perf_counter() - t
rep['fitted'] = hwm()
rep['model_bytes'] = sum(p.numel() * p.element_size() for p in fe.net_.parameters())
print('REPORT ' + json.dumps(rep))
"""


def gib(b: float) -> str:
    return f"{b / 2**30:6.3f} GiB"


def run_child(path: str, steps: int, mode: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", CHILD, path, str(steps), mode], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n" + proc.stderr[-3000:])
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("REPORT "))[7:])


def report(out: Tee, mode: str, steps: int, rep: dict) -> dict:
    X = rep["matrix_bytes"]
    imp = rep["baseline_import"]["VmHWM"]
    base = rep["baseline"]["VmHWM"]
    fit = rep["fitted"]["VmHWM"]
    out(f"-- {mode} fit --")
    out(f"float32 matrix:                          {gib(X)}")
    out(f"model parameters (float32):              {gib(rep['model_bytes'])}  "
        f"(Adam keeps 2 more copies, the gradients 1)")
    out(f"after import torch, factembed:           {gib(imp)} peak RSS ({imp / X:.2f}x the matrix)")
    out(f"baseline (+ torch.optim's dynamo import):{gib(base)} peak RSS ({base / X:.2f}x the matrix)")
    out(f"after {'opening' if mode == 'backed' else 'loading'} the matrix:{' ' * 16}"
        f"{gib(rep['loaded']['VmHWM'])} peak RSS (net {gib(rep['loaded']['VmHWM'] - base)})")
    out(f"{'after fit (%d steps, %.0f s):' % (steps, rep['fit_seconds']):41s}{gib(fit)} peak RSS raw "
        f"= {fit / X:.2f}x the matrix")
    out(f"net of the baseline:                     {gib(fit - base)} = {(fit - base) / X:.2f}x the matrix "
        f"(target <= 1.5x)")
    if mode == "in-memory":
        out(f"net of the baseline and the matrix:      {gib(fit - base - X)} = {(fit - base - X) / X:.2f}x "
            f"the matrix (everything the fit adds)")
    return {"mode": mode, "matrix_bytes": X, "import_hwm": imp, "baseline_hwm": base,
            "loaded_hwm": rep["loaded"]["VmHWM"], "fit_hwm": fit, "fit_ru_maxrss": rep["fitted"]["ru_maxrss"],
            "raw_ratio": round(fit / X, 3), "net_ratio": round((fit - base) / X, 3)}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=300, help="training steps of the fit (default 300)")
    args = p.parse_args()
    out = Tee()
    out(machine_line())
    n, m = (64, 256) if args.quick else (TCGA_SAMPLES, TCGA_GENES)
    steps = 5 if args.quick else args.steps
    rows = []
    with tempfile.TemporaryDirectory(prefix="factembed-bench-") as tmp:
        path = os.path.join(tmp, "X.npy")
        t = time.perf_counter()
        np.save(path, tcga_like(n, m))
        out(f"data: synthetic {n} x {m} float32 written in {time.perf_counter() - t:.1f} s")
        for mode in ("in-memory", "backed"):
            rows.append(report(out, mode, steps, run_child(path, steps, mode)))
    out("The reference's (i, j) pair-index arrays alone were ~4x the matrix (2 x int64 per entry).")
    with open(out_path(args, "memory.csv"), "w") as f:
        f.write("n,m,steps," + ",".join(rows[0]) + "\n")
        for r in rows:
            f.write(f"{n},{m},{steps}," + ",".join(str(v) for v in r.values()) + "\n")
    out.save(out_path(args, "memory.txt"))


if __name__ == "__main__":
    main()
