"""The fused, blocked kernel: the MSE of whole profiles and all its gradients.

:class:`FusedProfileLoss` evaluates the MSE of a batch of whole profiles *and* all its
gradients in one pass over blocks of genes, so the (pairs x hidden) activations only
ever exist for one block at a time (they stay in cache on a CPU) and are reused from a
workspace instead of being allocated every step.  In training the gene term
``G = E W1_g^T + b1`` is never formed for all genes at once: each gene block of the
pass computes its own rows (see :class:`GeneLayer`).

On CPU the gene blocks, the gene term and the forward-only decode are shared out to the
worker threads of :mod:`factembed.engine.cpu_pool`, with one intra-op thread each: they
synchronise once per call instead of once per operation (measurements:
``bench/NOTES.md``).  The block pass is compiled by TorchScript, so a worker runs all
its blocks without taking Python's GIL between operations.  Partial sums are added in a
fixed order, so results are reproducible for a fixed configuration.

The network itself (parameters, plain evaluation) is :mod:`factembed.engine.network`; its CPU
fast paths (:meth:`~factembed.engine.network.FactorizedEmbeddingNet.gene_term`,
:meth:`~factembed.engine.network.FactorizedEmbeddingNet.decode`) call :func:`split_linear` and
:func:`blocked_decode` here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Tuple

import torch

from .cpu_pool import cpu_workers, default_gene_chunk, worker_pool


class GeneLayer(NamedTuple):
    """The gene half of the first layer, ``G = embedding @ weight.T + bias``, passed to
    :class:`FusedProfileLoss` instead of a precomputed gene term ``G``: each block of
    genes then computes its rows of ``G`` and, once its gradient is formed, their
    gradients for the embedding rows, the weight and the bias, while the block is still
    in cache, on the worker that owns the block (no separate all-gene products)."""
    embedding: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor


@dataclass
class _Workspace:
    """Activation / gradient buffers reused across steps (allocation of large tensors
    costs page faults on every step otherwise)."""
    acts: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)
    dy: torch.Tensor | None = None
    gene: torch.Tensor | None = None     # a block's gene-term rows (GeneLayer input)
    dgene: torch.Tensor | None = None    # and their gradient
    key: tuple = ()

    def ensure(self, rows: int, genes: int, widths: list[int], dtype: torch.dtype, acc: torch.dtype,
               device: torch.device) -> None:
        key = (rows, genes, tuple(widths), dtype, acc, device)
        if key != self.key:
            self.acts = [torch.empty(rows, w, dtype=dtype, device=device) for w in widths]
            self.grads = [torch.empty(rows, w, dtype=dtype, device=device) for w in widths]
            self.dy = torch.empty(rows, 1, dtype=dtype, device=device)
            self.gene = torch.empty(genes, widths[0], dtype=dtype, device=device)
            self.dgene = torch.empty(genes, widths[0], dtype=acc, device=device)
            self.key = key

    def buffers(self) -> "_PassBuffers":
        return _PassBuffers(self.acts, self.grads, self.dy, self.gene, self.dgene)


class _PassInputs(NamedTuple):
    """What every worker's block pass reads (and the shared output it writes rows of).
    Tensors are in the compute dtype unless marked "acc" (the accumulation dtype)."""
    S: torch.Tensor                           # sample term (B, h0)
    G: Optional[torch.Tensor]                 # precomputed gene term (m, h0), or None
    gene_embedding: Optional[torch.Tensor]    # or the gene layer that makes it, acc (its rows
    gene_weight: Optional[torch.Tensor]       # of G are rounded once to the compute dtype)
    gene_bias: Optional[torch.Tensor]
    X: torch.Tensor                           # targets (B, m), acc
    weights: List[torch.Tensor]               # decoder layers
    biases: List[torch.Tensor]
    scale: torch.Tensor                       # (B, 1) weight of each profile's squared errors, acc
    weight_grads: bool
    dG: Optional[torch.Tensor]                # acc; rows written per block: dL/dG or dL/d(gene embedding)
    nan_targets: bool                         # NaN in X marks a missing value: no error, no gradient


class _PassBuffers(NamedTuple):
    """One worker's workspace (see :class:`_Workspace`)."""
    acts: List[torch.Tensor]
    grads: List[torch.Tensor]
    dy: torch.Tensor
    gene: torch.Tensor
    dgene: torch.Tensor


class FusedProfileLoss:
    """Mean squared error of whole profiles with hand-written, blocked gradients.

    Call it with the sample term ``S`` (``B x h0``), the gene term ``G`` (``m x h0``)
    or the :class:`GeneLayer` that makes it, the targets ``X`` (``B x m``) and the
    decoder layers; it returns the scalar MSE as an autograd node whose backward yields
    exact gradients for ``S``, ``G`` (or the gene layer's three tensors) and every
    decoder weight.  Pass ``weight_grads=False`` for inference (the decoder weights'
    gradients are skipped; those of ``S`` and of ``G`` or the gene layer are computed).

    Each block of genes is run forward, the loss and its gradient are formed, and the
    block is run backward at once, so activations never exist for all pairs.  On CPU
    the blocks are shared out (statically: block ``k`` to worker ``k mod workers``) to
    ``workers`` threads with one intra-op thread each, every worker accumulating its
    own partial sums, which are then added in worker order: for a fixed ``gene_chunk``
    and ``workers`` the result is bit-for-bit reproducible.  ``workers=None``: the
    default of :func:`~factembed.engine.cpu_pool.cpu_workers` (the environment variable
    ``FACTEMBED_CPU_WORKERS``, else the calling thread's torch threads up to
    :data:`~factembed.engine.cpu_pool.MAX_AUTO_WORKERS`);
    ``gene_chunk=None``: :func:`~factembed.engine.cpu_pool.default_gene_chunk`.  ``compiled``
    runs the block pass TorchScript-compiled (the same function as plain Python with
    ``compiled=False``; the results are identical).

    ``nan_targets=True`` (inference from observed values only): a NaN in ``X`` marks a
    missing value, whose squared error is taken as zero (the target is replaced by the
    prediction, block by block), so it adds nothing to the loss nor to any gradient;
    ``row_weights`` then say over how many entries each profile's error is averaged.
    Without it NaN targets make the loss NaN, as they always did.
    """

    def __init__(self, gene_chunk: int | None = None, compute_dtype: torch.dtype = torch.float32,
                 workers: int | None = None, compiled: bool = True, nan_targets: bool = False) -> None:
        self.gene_chunk = gene_chunk
        self.compute_dtype = compute_dtype
        self.workers = workers
        self.compiled = compiled   # run the block pass TorchScript-compiled (no GIL) where available
        self.nan_targets = nan_targets
        self.workspaces: list[_Workspace] = []
        self.last_stats: torch.Tensor | None = None  # [sum y, sum y^2, sum x*y] over the observed targets

    def __call__(self, S: torch.Tensor, G: "torch.Tensor | GeneLayer", X: torch.Tensor,
                 layers: list[tuple[torch.Tensor, torch.Tensor]], weight_grads: bool = True,
                 row_weights: torch.Tensor | None = None) -> torch.Tensor:
        flat = [t for wb in layers for t in wb]
        gene = tuple(G) if isinstance(G, GeneLayer) else (G,)
        return _FusedFn.apply(self, weight_grads, row_weights, len(gene), S, X, *gene, *flat)

    def plan(self, B: int, h0: int, m: int, device: torch.device) -> tuple[int, int]:
        """(genes per block, worker threads) for a batch of ``B`` profiles of ``m`` genes."""
        on_cpu = device.type == "cpu"
        want = (self.workers if self.workers is not None else cpu_workers(m)) if on_cpu else 1
        chunk = self.gene_chunk or default_gene_chunk(B, h0, m, device, workers=want)
        chunk = min(chunk, m)
        workers = min(max(1, want), -(-m // chunk)) if on_cpu else 1
        return chunk, workers

    def evaluate(self, S, G, X, layers, weight_grads, row_weights, gene_grad=True):
        """Loss, stats and gradients (no autograd).  ``G`` is the gene term or a
        :class:`GeneLayer`; the gene gradients come back as ``(dG,)`` or as
        ``(d embedding, d weight, d bias)`` (``None`` when ``gene_grad`` is False).
        ``row_weights`` (B,) scales the squared error of each profile (default: the
        plain mean over all pairs)."""
        B, h0 = S.shape
        as_layer = isinstance(G, GeneLayer)
        m = (G.embedding if as_layer else G).shape[0]
        dev = S.device
        widths = [h0] + [w.shape[0] for w, _ in layers[:-1]]
        chunk, workers = self.plan(B, h0, m, dev)
        cdt = self.compute_dtype
        acc = torch.promote_types(cdt, torch.float32)  # accumulation dtype
        while len(self.workspaces) < workers:
            self.workspaces.append(_Workspace())
        for ws in self.workspaces[:workers]:
            ws.ensure(B * chunk, chunk if as_layer else 0, widths, cdt, acc, dev)
        if row_weights is None:
            scale = torch.full((B, 1), 1.0 / (B * m), dtype=acc, device=dev)
        else:
            scale = (row_weights.to(acc) / m).reshape(B, 1)
        if as_layer:
            gene = tuple(t.detach().to(acc) for t in G)
            dG = torch.empty(m, G.embedding.shape[1], dtype=acc, device=dev) if gene_grad else None
        else:
            gene = (None,) * 3
            dG = torch.empty(m, h0, dtype=acc, device=dev) if gene_grad else None
        inputs = _PassInputs(S.detach().to(cdt), None if as_layer else G.detach().to(cdt), *gene,
                             X.to(acc), [w.detach().to(cdt) for w, _ in layers],
                             [b.detach().to(cdt) for _, b in layers], scale, bool(weight_grads), dG,
                             bool(self.nan_targets))
        starts = list(range(0, m, chunk))
        sizes = [min(chunk, m - j0) for j0 in starts]
        block_pass = _compiled_block_pass() if self.compiled else _gene_block_pass
        if workers == 1:
            parts = [block_pass(inputs, starts, sizes, self.workspaces[0].buffers())]
        else:
            pool = worker_pool(workers, max(1, torch.get_num_threads() // workers))
            futures = [pool.submit(block_pass, inputs, starts[w::workers], sizes[w::workers],
                                   self.workspaces[w].buffers()) for w in range(workers)]
            parts = [f.result() for f in futures]
        dS, dWs, dbs, dWg, stats = parts[0]
        for dS_w, dWs_w, dbs_w, dWg_w, stats_w in parts[1:]:   # fixed order: reproducible sums
            dS.add_(dS_w)
            stats.add_(stats_w)
            if dWg is not None:
                dWg.add_(dWg_w)
            for t, t_w in zip(dWs + dbs, dWs_w + dbs_w):
                t.add_(t_w)
        dW = list(zip(dWs, dbs)) if weight_grads else None
        self.last_stats = stats[1:].clone()
        if dG is None:
            dgene = None
        elif as_layer:   # d bias = the sum of dL/dG over genes = the sum of dL/dS over samples
            dgene = (dG, dWg, dS.sum(0))
        else:
            dgene = (dG,)
        return stats[0], dS, dgene, dW


# ---------------------------------------------------------------------------------------
# The block pass itself.  Written in the subset of Python that TorchScript compiles:
# scripted (see _compiled_block_pass), a worker runs all its blocks without Python's GIL,
# so the workers do not queue for it between operations (bench/archive/bench_ab_gene_term.py
# measures the difference; figures in bench/NOTES.md); where scripting is unavailable
# the same function runs as plain Python, with identical results.
# ---------------------------------------------------------------------------------------

def _hidden_forward(S3: torch.Tensor, Gb: torch.Tensor, weights: List[torch.Tensor],
                    biases: List[torch.Tensor], acts: List[torch.Tensor]) -> torch.Tensor:
    """Hidden activations of a block of genes for every sample: ``relu(S + G)`` then each
    hidden layer (all but the last of ``weights``), written into the workspaces ``acts``
    (rows ``B * genes``); returns the last hidden activation.  ``S3`` is ``S[:, None, :]``."""
    B, h0 = S3.shape[0], S3.shape[2]
    c = Gb.shape[0]
    a = acts[0][:B * c]
    if S3.device.type == "cpu" and (S3.dtype == torch.float32 or S3.dtype == torch.float64):
        # aten::_add_relu (CPU kernel only, these dtypes): add and ReLU in one pass
        torch.ops.aten._add_relu(Gb.unsqueeze(0), S3, out=a.view(B, c, h0))
    else:
        torch.add(Gb.unsqueeze(0), S3, out=a.view(B, c, h0))
        a.clamp_min_(0)
    for k in range(len(weights) - 1):
        nxt = acts[k + 1][:B * c]
        torch.addmm(biases[k], a, weights[k].t(), out=nxt)
        nxt.clamp_min_(0)
        a = nxt
    return a


def _acc_mm(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out += a @ b`` (in place when the dtypes agree)."""
    if a.dtype == out.dtype:
        out.addmm_(a, b)
    else:
        out.add_(torch.mm(a, b).to(out.dtype))


def _gene_block_pass(inp: _PassInputs, starts: List[int], sizes: List[int], buf: _PassBuffers
                     ) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor], Optional[torch.Tensor],
                                torch.Tensor]:
    """Forward, loss and backward of the gene blocks ``starts[k] : starts[k] + sizes[k]``;
    returns this worker's partial sums (dS, d weights, d biases, d gene-layer weight,
    stats = [loss, sum y, sum y^2, sum xy]) and writes the blocks' rows of ``inp.dG``."""
    S_c, X, Wc, bc = inp.S, inp.X, inp.weights, inp.biases
    acc = inp.scale.dtype
    B, h0 = S_c.shape[0], S_c.shape[1]
    dev = S_c.device
    same = S_c.dtype == acc
    n_layers = len(Wc)
    acts, grads = buf.acts, buf.grads
    dS = torch.zeros(B, h0, dtype=acc, device=dev)
    dWs: List[torch.Tensor] = []
    dbs: List[torch.Tensor] = []
    if inp.weight_grads:
        dWs = [torch.zeros(w.shape, dtype=acc, device=dev) for w in Wc]
        dbs = [torch.zeros(b.shape, dtype=acc, device=dev) for b in bc]
    G, dG = inp.G, inp.dG
    E, Wg, bg = inp.gene_embedding, inp.gene_weight, inp.gene_bias
    dWg: Optional[torch.Tensor] = None
    if Wg is not None and dG is not None:
        dWg = torch.zeros(Wg.shape, dtype=acc, device=dev)
    stats = torch.zeros(4, dtype=acc, device=dev)
    scale = inp.scale
    scale2 = 2.0 * scale
    w_out, b_out = Wc[n_layers - 1], bc[n_layers - 1]
    w_out_vec = w_out.reshape(-1)
    S3 = S_c.unsqueeze(1)
    for i in range(len(starts)):
        j0, c = starts[i], sizes[i]
        P = B * c
        # ---- forward ----------------------------------------------------------------
        if G is not None:
            Gb = G[j0:j0 + c]
        else:                                   # this block's rows of the gene term
            assert E is not None and Wg is not None and bg is not None
            Gb = buf.gene[:c]
            if same:
                torch.addmm(bg, E[j0:j0 + c], Wg.t(), out=Gb)
            else:   # in the accumulation dtype, rounded once (as a precomputed G would be)
                Gb.copy_(torch.addmm(bg, E[j0:j0 + c], Wg.t()))
        a = _hidden_forward(S3, Gb, Wc, bc, acts)
        a0 = acts[0][:P]
        y = torch.addmv(b_out, a, w_out_vec).view(B, c)
        if not same:
            y = y.to(acc)
        x = X[:, j0:j0 + c]
        y_seen = y                              # the predictions of observed targets (for the stats)
        if inp.nan_targets:                     # a missing target: the prediction itself (zero error),
            missing = torch.isnan(x)            # and nothing to the sums of the batch Pearson r
            x = torch.where(missing, y, x)
            y_seen = y.masked_fill(missing, 0.0)
        diff = y - x
        stats[0] += (diff * diff * scale).sum()
        stats[1] += y_seen.sum()
        stats[2] += (y_seen * y_seen).sum()
        stats[3] += (x * y_seen).sum()
        # ---- backward ---------------------------------------------------------------
        dy = buf.dy[:P]
        torch.mul(diff, scale2, out=dy.view(B, c))
        if inp.weight_grads:
            _acc_mm(dWs[n_layers - 1], dy.t(), a)
            dbs[n_layers - 1].add_(dy.sum(0))
        g = grads[n_layers - 1][:P]
        torch.mul(dy, w_out, out=g)             # outer product dy * w_out
        for k in range(n_layers - 2, -1, -1):
            torch.ops.aten.threshold_backward(g, acts[k + 1][:P], 0, grad_input=g)
            a_k = acts[k][:P]
            if inp.weight_grads:
                _acc_mm(dWs[k], g.t(), a_k)
                dbs[k].add_(g.sum(0))
            g_prev = grads[k][:P]
            torch.mm(g, Wc[k], out=g_prev)
            g = g_prev
        torch.ops.aten.threshold_backward(g, a0, 0, grad_input=g)
        g3 = g.view(B, c, h0)
        dS.add_(g3.sum(1))
        if dG is not None:
            # dL/dG of the block: the output itself, or, for a gene layer, a buffer that
            # its gradients are then formed from
            dGb = dG[j0:j0 + c] if G is not None else buf.dgene[:c]
            if same:
                torch.sum(g3, 0, out=dGb)
            else:
                dGb.copy_(g3.sum(0))
            if G is None:
                assert E is not None and Wg is not None and dWg is not None
                torch.mm(dGb, Wg, out=dG[j0:j0 + c])
                dWg.addmm_(dGb.t(), E[j0:j0 + c])
    return dS, dWs, dbs, dWg, stats


_SCRIPTED: dict = {}


def _compiled_block_pass():
    """:func:`_gene_block_pass` compiled by TorchScript (once per process), or the plain
    function where TorchScript is unavailable (no sources, a torch without it...)."""
    if "fn" not in _SCRIPTED:
        fn = _gene_block_pass
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # torch.jit.script is deprecated in torch >= 2.9, still supported
                fn = torch.jit.script(_gene_block_pass)
            if fn.name != _gene_block_pass.__name__:   # the source file changed since import and
                # the lines now hold another function (an edit in place is not detected)
                raise RuntimeError(f"compiled {fn.name!r} from the source on disk")
        except Exception as exc:  # pragma: no cover - depends on the installation
            warnings.warn(f"factembed: TorchScript unavailable ({type(exc).__name__}: {exc}); "
                          "the fused kernel runs as plain Python (slower on several threads)",
                          RuntimeWarning, stacklevel=2)
        _SCRIPTED["fn"] = fn
    return _SCRIPTED["fn"]


# ---------------------------------------------------------------------------------------
# The network's CPU fast paths (FactorizedEmbeddingNet.gene_term and .decode): the gene
# term split by rows over the workers, and the forward-only decode in gene blocks.
# ---------------------------------------------------------------------------------------

#: (sample, gene) pairs per block of the forward-only decode on CPU.
_DECODE_ROWS = 8192
#: Smallest gene term (genes x gene_dim x hidden[0] multiply-adds) split over the workers.
_SPLIT_MIN_MACS = 1 << 22


def _row_ranges(n: int, parts: int) -> list[slice]:
    step = -(-n // parts)
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


class _RowSplitLinear(torch.autograd.Function):
    """``x W^T + b`` with the rows of ``x`` shared out to the kernel's CPU workers (the
    same threads as :class:`FusedProfileLoss`, so no OpenMP team has to be gathered for
    the step's largest products).  Partial weight gradients are added in worker order:
    reproducible for a fixed worker count."""

    @staticmethod
    def forward(ctx, x, w, b, workers):
        ctx.save_for_backward(x, w)
        ctx.workers = workers
        out = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype)
        xd, wt, bd = x.detach(), w.detach().t(), b.detach()
        pool = worker_pool(workers, max(1, torch.get_num_threads() // workers))
        futures = [pool.submit(torch.addmm, bd, xd[r], wt, out=out[r])
                   for r in _row_ranges(x.shape[0], workers)]
        for f in futures:
            f.result()
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad = grad.contiguous()
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx = torch.empty_like(x) if need_x else None
        wd, xd = w.detach(), x.detach()

        def part(r):
            if need_x:
                torch.mm(grad[r], wd, out=dx[r])
            dw = grad[r].t() @ xd[r] if need_w else None
            db = grad[r].sum(0) if need_b else None
            return dw, db

        pool = worker_pool(ctx.workers, max(1, torch.get_num_threads() // ctx.workers))
        parts = [f.result() for f in [pool.submit(part, r) for r in _row_ranges(x.shape[0], ctx.workers)]]
        dw = db = None
        if need_w:
            dw = parts[0][0]
            for p in parts[1:]:
                dw.add_(p[0])
        if need_b:
            db = parts[0][1]
            for p in parts[1:]:
                db.add_(p[1])
        return dx, dw, db, None


def split_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 workers: int | None = None) -> torch.Tensor:
    """``x W^T + b`` (differentiable).  On CPU a large product is split by rows over the
    kernel's worker threads: ``workers`` of them (default: :func:`cpu_workers`, which
    follows the calling thread's torch thread count, so a caller that drops to one
    intra-op thread must pass the count it wants)."""
    if x.device.type == "cpu" and x.shape[0] * weight.numel() >= _SPLIT_MIN_MACS:
        workers = cpu_workers(x.shape[0] // 256, workers)
        if workers > 1:
            return _RowSplitLinear.apply(x, weight, bias, workers)
    return torch.nn.functional.linear(x, weight, bias)


@torch.no_grad()
def blocked_decode(S: torch.Tensor, G: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]],
                   workers: int | None = None) -> torch.Tensor:
    """Forward-only decode on CPU (no autograd): the decoder ``layers`` applied to
    ``relu(S_i + G_j)`` for every sample term row ``i`` and gene term row ``j``, in blocks
    of genes (~``_DECODE_ROWS`` pairs each, so the activations stay in cache) shared out
    to ``workers`` worker threads (default: :func:`cpu_workers`).  Returns
    ``(samples, genes)``."""
    B, h0 = S.shape
    m = G.shape[0]
    out = torch.empty(B, m, dtype=S.dtype)
    if B == 0 or m == 0:
        return out
    c = int(max(1, min(m, _DECODE_ROWS // B)))
    blocks = [(j0, min(c, m - j0)) for j0 in range(0, m, c)]
    weights = [w.detach() for w, _ in layers]
    biases = [b.detach() for _, b in layers]
    widths = [h0] + [w.shape[0] for w in weights[:-1]]
    S3 = S[:, None, :]

    def run(part):
        acts = [torch.empty(B * c, w, dtype=S.dtype) for w in widths]
        for j0, cc in part:
            a = _hidden_forward(S3, G[j0:j0 + cc], weights, biases, acts)
            out[:, j0:j0 + cc] = torch.addmm(biases[-1], a, weights[-1].t()).view(B, cc)

    workers = cpu_workers(len(blocks), workers)
    if workers == 1:
        run(blocks)
    else:
        pool = worker_pool(workers, max(1, torch.get_num_threads() // workers))
        for f in [pool.submit(run, blocks[w::workers]) for w in range(workers)]:
            f.result()
    return out


class _FusedFn(torch.autograd.Function):
    """The autograd node of :class:`FusedProfileLoss`: the forward computes the loss and
    every gradient at once (:meth:`FusedProfileLoss.evaluate`); the backward hands them out."""

    @staticmethod
    def forward(ctx, fused: FusedProfileLoss, weight_grads: bool, row_weights, n_gene: int, S, X, *rest):
        gene, flat = rest[:n_gene], rest[n_gene:]
        layers = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        G = GeneLayer(*gene) if n_gene == 3 else gene[0]
        loss, dS, dgene, dW = fused.evaluate(S, G, X, layers, weight_grads, row_weights,
                                             gene_grad=any(t.requires_grad for t in gene))
        ctx.dgene = dgene
        ctx.save_for_backward(dS)
        ctx.dW = dW
        ctx.n_gene = n_gene
        ctx.n_flat = len(flat)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (dS,) = ctx.saved_tensors
        # The gradients were made for this call only: scaled in place, and not at all for
        # the usual loss.backward() (a pass over the gene-embedding gradient saved per step).
        unit = grad_loss.device.type == "cpu" and grad_loss.numel() == 1 and float(grad_loss) == 1.0
        scaled = (lambda t: t) if unit else (lambda t: t.mul_(grad_loss))
        gene_grads: list = [None] * ctx.n_gene
        if ctx.dgene is not None:
            gene_grads = [scaled(t) for t in ctx.dgene]
        flat_grads: list = [None] * ctx.n_flat
        if ctx.dW is not None:
            flat_grads = [scaled(t) for wb in ctx.dW for t in wb]
        ctx.dW = ctx.dgene = None
        return (None, None, None, None, dS * grad_loss, None, *gene_grads, *flat_grads)
