"""Shared helpers of the benchmark scripts: presets of the planted data (TCGA-shaped), timing windows,
machine description and a contention probe.

Every script is plain Python, prints its figures and writes them under
``bench/results/``; none of them is a pass/fail test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))

#: The shape of the reference study's TCGA matrix (protein-coding genes).
TCGA_SAMPLES, TCGA_GENES = 10_344, 19_962
#: Reference GPU speeds quoted in the study (it/s by gene_dim); *not* measured here.
REFERENCE_GPU_IT_S = {2: 97, 10: 95, 25: 92, 50: 83, 75: 76, 100: 71, 1000: 19}


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny shape, few steps (smoke test)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for results")
    return p


def tcga_like(n: int = TCGA_SAMPLES, m: int = TCGA_GENES, *, rank: int = 16, n_types: int = 33,
              noise: float = 0.25, seed: int = 0, return_labels: bool = False, out: np.ndarray | None = None):
    """A synthetic TCGA-shaped log10(TPM + 1)-like float32 matrix (``n x m``): the preset of
    :func:`factembed.planted.make_planted` the speed benchmarks use (documented in
    bench/NOTES.md).  Every gene has a base level ``mu_j ~ Gamma(2, 0.6)`` (mean 1.2,
    skewed), every sample belongs to one of ``n_types`` "cancer types" whose centre is a
    random point of a ``rank``-dim latent space; a sample's latent vector is its type
    centre plus N(0, 0.3^2) scatter, gene loadings are N(0, 0.15^2); ``X = max(0, mu + U V +
    N(0, noise^2))``.  About 12% of the entries are clipped to 0 (unexpressed); values run
    from 0 to ~10, mean ~1.25.  ``out``: a float32 array (e.g. a memory map) to fill."""
    from factembed.planted import make_planted

    P = make_planted(n, m, n_groups=n_types, latent_dim=rank, structure="linear", scatter=0.3,
                     loading_sd=0.15, base="gamma", noise=noise, clip=True, seed=seed, out=out)
    return (P.X, P.labels) if return_labels else P.X


def planted_expression(n: int = 2000, m: int = TCGA_GENES, *, n_groups: int = 33, latent_dim: int = 4,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A planted TCGA-like log10(TPM + 1) matrix with a *non-linear* low-dimensional
    structure and 33 labelled groups: ``(X float32 n x m, group labels "group_k")``, the
    preset of :func:`factembed.planted.make_planted` the quality benchmarks use (documented
    in bench/NOTES.md): group centres N(0, 1) in ``latent_dim`` dimensions, scatter
    N(0, 0.35^2), a random tanh layer of 16 units, base levels ``Gamma(1.5, 0.7)`` capped at
    6, loadings N(0, 0.35^2) x sqrt(base), heteroscedastic noise and dropouts."""
    from factembed.planted import make_planted

    P = make_planted(n, m, n_groups=n_groups, latent_dim=latent_dim, structure="nonlinear", scatter=0.35,
                     loading_sd=0.35, base="gamma", clip=True, seed=seed)
    return P.X, np.array([f"group_{k}" for k in P.labels])


def scaled_batch(n: int, m: int, scale: float) -> dict:
    """The :class:`FEConfig` fields of the default (fast) recipe's batch with ``scale`` times
    its pairs per step for an ``n x m`` matrix: both sides x sqrt(scale), within the matrix."""
    import math

    from factembed import FEConfig
    from factembed.training.recipes import plan_training

    base = plan_training(FEConfig(training="fast"), n, m)
    root = math.sqrt(float(scale))
    return {"batch_samples": max(1, min(n, round(base.batch_samples * root))),
            "batch_genes": max(1, min(m, round((base.batch_genes or m) * root)))}


class RecipeTraining:
    """One training recipe run through the library's own pieces (``plan_training``, the
    batch plan, ``make_optimizer``, ``train``), seeded as ``FactorizedEmbeddings.fit``
    seeds them, so that a bench can advance it in timed segments.  ``cfg`` is an
    :class:`factembed.FEConfig`; ``advance(step)`` trains up to ``step`` and returns the
    seconds it took (CUDA synchronised).  The matrix is put on the device here (the
    bench path); ``graphs`` goes to ``train`` (None: its default, CUDA graphs on CUDA)."""

    def __init__(self, X: np.ndarray, cfg, graphs: bool | None = None) -> None:
        import torch

        from factembed.engine.network import FactorizedEmbeddingNet
        from factembed.training.recipes import plan_training
        from factembed.training.runner import batch_plan
        from factembed.training.loop import BatchSampler, make_optimizer, resolve_device, resolve_precision

        n, m = X.shape
        seed = int(cfg.random_state or 0)
        self.cfg, self.plan = cfg, plan_training(cfg, n, m)
        self.gen = torch.Generator().manual_seed(seed * 1_000_003)          # as FactorizedEmbeddings.fit
        torch.manual_seed(seed)
        self.net = FactorizedEmbeddingNet(n, m, cfg.sample_dim, cfg.gene_dim, cfg.hidden, generator=self.gen)
        if self.plan.init == "pca":                                        # as FactorizedEmbeddings.fit
            from factembed.training.loop import TensorRows
            from factembed.training.warm_start import pca_warm_start
            pca_warm_start(self.net, TensorRows(torch.from_numpy(X)),
                           torch.Generator().manual_seed(seed * 1_000_003 + 4))
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_precision(cfg.precision, self.device)
        self.net.to(self.device)
        gene_seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(seed * 1_000_003 + 2)))
        self.sampler = batch_plan(BatchSampler(n, self.plan.batch_samples, self.gen), m, self.plan, gene_seed)
        self.optimizer = make_optimizer(self.net, self.plan.lr, cfg.l2, self.device, sample_lr=self.plan.sample_lr)
        self.X = torch.from_numpy(X).to(self.device)
        self.graphs = graphs
        self.missing = bool(torch.isnan(self.X).any())      # NaN entries left out of the loss
        self.done = 0
        self.pairs_per_step = self.plan.batch_samples * (self.plan.batch_genes or m)

    def advance(self, step: int) -> float:
        import torch

        from factembed.training.loop import train

        t0 = time.perf_counter()
        train(self.net, self.X, n_steps=step, lr=self.plan.lr, l2=self.cfg.l2,
              batch_samples=self.plan.batch_samples, generator=self.gen, device=self.device,
              compute_dtype=self.dtype, progress=False, sampler=self.sampler, optimizer=self.optimizer,
              start_step=self.done, missing=self.missing, graphs=self.graphs)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.done = step
        return time.perf_counter() - t0


# -- machine / contention ---------------------------------------------------------------
def machine() -> dict:
    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = open("/proc/cpuinfo").read()
        info["avx512f"] = " avx512f" in flags
        info["avx512_bf16"] = "avx512_bf16" in flags
        info["amx"] = "amx_bf16" in flags
        info["avx2"] = " avx2" in flags
    except OSError:
        pass
    try:
        info["mkldnn_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        info["mkldnn_bf16"] = False
    try:
        info["mem_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def machine_line() -> str:
    m = machine()
    return (f"machine: {m.get('cpu', '?')}, {m['cpus']} CPUs, {m.get('mem_gib', '?')} GiB, "
            f"AVX2={m.get('avx2')}, AVX-512={m.get('avx512f')}, AVX512-BF16={m.get('avx512_bf16')}, "
            f"AMX={m.get('amx')}, mkldnn bf16={m['mkldnn_bf16']}; torch {m['torch']} "
            f"({m['torch_threads']} intra-op threads), Python {m['python']}")


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return total - idle, total


def _own_jiffies() -> int:
    with open("/proc/self/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12]) + int(parts[13]) + int(parts[14])  # utime stime cutime cstime


class Contention:
    """Share of the machine's CPU time used by *other* processes between ``start()``
    and ``stop()`` (0 = quiet machine, 1 = every core busy with something else)."""

    def start(self) -> None:
        try:
            self.b0, self.t0 = _cpu_jiffies()
            self.o0 = _own_jiffies()
        except OSError:
            self.t0 = None

    def stop(self) -> float:
        if getattr(self, "t0", None) is None:
            return float("nan")
        b1, t1 = _cpu_jiffies()
        o1 = _own_jiffies()
        total = max(1, t1 - self.t0)
        return max(0.0, ((b1 - self.b0) - (o1 - self.o0)) / total)


def wait_for_quiet(max_wait: float = 0.0, threshold: float = 0.15, probe: float = 1.0) -> float:
    """Wait (up to ``max_wait`` seconds) until other processes use < ``threshold`` of the
    CPUs; returns the last measured share."""
    deadline = time.perf_counter() + max_wait
    c = Contention()
    while True:
        c.start()
        time.sleep(probe)
        share = c.stop()
        if share < threshold or time.perf_counter() >= deadline:
            return share


# -- timing -----------------------------------------------------------------------------
class Windows:
    """Throughput of ``step()`` measured as ``n_windows`` timed windows of
    ``steps_per_window`` steps after ``warmup`` untimed steps."""

    def __init__(self, step: Callable[[], None], *, warmup: int, n_windows: int, steps_per_window: int,
                 pairs_per_step: int) -> None:
        self.step, self.warmup, self.n_windows = step, warmup, n_windows
        self.spw, self.pairs = steps_per_window, pairs_per_step
        self.it_s: list[float] = []
        self.others: list[float] = []

    def run(self) -> "Windows":
        for _ in range(self.warmup):
            self.step()
        c = Contention()
        for _ in range(self.n_windows):
            c.start()
            t = time.perf_counter()
            for _ in range(self.spw):
                self.step()
            self.it_s.append(self.spw / (time.perf_counter() - t))
            self.others.append(c.stop())
        return self

    @classmethod
    def from_times(cls, seconds: list[float], *, warmup: int, n_windows: int, steps_per_window: int,
                   pairs_per_step: int) -> "Windows":
        """Windows cut out of per-step timestamps (``seconds[k]`` = end of step k+1)."""
        w = cls(lambda: None, warmup=warmup, n_windows=n_windows, steps_per_window=steps_per_window,
                pairs_per_step=pairs_per_step)
        for k in range(n_windows):
            a = warmup - 1 + k * steps_per_window
            b = a + steps_per_window
            w.it_s.append(steps_per_window / (seconds[b] - seconds[a]))
            w.others.append(float("nan"))
        return w

    @property
    def median(self) -> float:
        return statistics.median(self.it_s)

    @property
    def best(self) -> float:
        return max(self.it_s)

    @property
    def mpairs(self) -> float:
        return self.median * self.pairs / 1e6

    def summary(self) -> str:
        oth = [o for o in self.others if o == o]
        contention = f", others used {100 * max(oth):.0f}% of CPU at most" if oth else ""
        return (f"{self.median:8.3f} it/s (median of {len(self.it_s)} windows x {self.spw} steps; "
                f"best {self.best:.3f}){contention}; {self.mpairs:7.3f} M pairs/s")


def out_path(args: argparse.Namespace, name: str) -> Path:
    """``args.out / name``, with ``_quick`` before the suffix in ``--quick`` mode (so a
    smoke run never overwrites the real figures)."""
    args.out.mkdir(parents=True, exist_ok=True)
    if getattr(args, "quick", False):
        stem, dot, ext = name.partition(".")
        name = f"{stem}_quick{dot}{ext}"
    return args.out / name


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@contextlib.contextmanager
def caller_threads(threads=None):
    """Run a block with the calling thread at ``threads`` torch intra-op threads (None:
    unchanged), restored afterwards.  The kernel and its worker count are not settings
    of the library: pass them to ``train(..., kernel=, workers=)``."""
    import torch

    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


class Tee:
    """Print and remember lines (written to a results .txt at the end)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, *parts) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.lines.append(line)

    def save(self, path: Path) -> None:
        write_text(path, "\n".join(self.lines) + "\n")
