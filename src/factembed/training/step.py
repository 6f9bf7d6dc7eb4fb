"""The steps of the training loop, run in chunks: what a step trains on (the feeds), the
step itself (eager, or replayed from a CUDA graph), and the schedule of chunks.

:func:`factembed.training.loop.train` runs its steps in *chunks* of up to ``K`` steps; a chunk
ends wherever the host has to look at the numbers (a validation, a checkpoint, the
last step).  Within a chunk nothing waits for the device:

1. a *feed* draws the chunk's batches (sample indices, the step's genes, the held-out
   entries' mask) on the CPU generators, in the order and with the draws of one step at
   a time, so the batches are those of a CPU run, and hands them to the device once per
   chunk: :class:`LazyFeed` (on the CPU: each step's batch drawn when it runs),
   :class:`ResidentFeed` (the matrix is on the device: the chunk's indices and mask are
   uploaded, each step gathers its tile there), :class:`TileFeed` (the matrix stays in
   host memory: each step's tile, rows x the step's genes only, is gathered on the host
   into pinned memory and the chunk is copied asynchronously);
2. a step (:class:`EagerStep`, or :class:`GraphedStep` on CUDA) writes its loss and the
   sums of the batch Pearson r into a row of a buffer on the device;
3. the buffer is read once per chunk, where :func:`~factembed.training.loop.train` checks for a
   divergence and feeds the history, the callback, the progress bar and the checkpoints.

On the CPU the chunked loop is bitwise the loop of one step at a time
(``tests/training/test_step.py`` checks it against a frozen copy of that loop).
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Iterator, NamedTuple, Sequence

import torch

#: Steps per chunk: the CPU figure keeps the divergence check as often as it always was
CHUNK_STEPS = {"cpu": 16, "cuda": 256}
#: Bytes of host tiles (pinned) one chunk of :class:`TileFeed` may hold
TILE_CHUNK_BYTES = 256 << 20
#: A matrix goes to the device when it takes at most this share of the free device memory
RESIDENT_SHARE = 0.5


def chunk_schedule(start: int, n_steps: int, size: int, boundaries: Sequence[int]) -> Iterator[tuple[int, int]]:
    """``(first, last)`` steps (1-based, inclusive) of the chunks of steps ``start + 1 ..
    n_steps``: at most ``size`` steps each, ending at every multiple of each of
    ``boundaries`` (validation and checkpoint periods) and at ``n_steps``."""
    size = max(1, int(size))
    every = [int(e) for e in boundaries if e and e > 0]
    step = int(start)
    while step < n_steps:
        last = min(n_steps, step + size)
        for e in every:
            last = min(last, (step // e + 1) * e)
        yield step + 1, last
        step = last


class StepBatch(NamedTuple):
    """What one step trains on, on the device: sample indices ``(b,)``, gene indices
    ``(k,)`` (``None``: every gene) and the targets ``(b, k)`` (NaN where held out)."""
    idx: torch.Tensor
    genes: torch.Tensor | None
    xb: torch.Tensor


class _Feed:
    """What every feed holds: the source, the sampler (and its gene walk), the device and
    the validation set whose entries are held out (a NaN target: nothing to the loss nor
    to any gradient)."""

    def __init__(self, source, sampler, device: torch.device, validation=None) -> None:
        self.source, self.sampler, self.device, self.validation = source, sampler, device, validation
        self.walk = getattr(sampler, "genes", None)

    def mask(self, idx: torch.Tensor, genes_cpu: torch.Tensor | None) -> torch.Tensor | None:
        return None if self.validation is None else self.validation.mask(idx, genes_cpu)


class LazyFeed(_Feed):
    """Each step's batch drawn and gathered when the step runs (the CPU path: the rows
    sampler, then the source's rows, then the gene walk, as one step at a time always
    did; a block sampler's staged rows are served in that order)."""

    prefetches = False

    def prepare(self, n: int) -> Callable[[int], StepBatch]:
        def batch(i: int) -> StepBatch:
            idx = self.sampler.next()
            xb = self.source.rows(idx).to(self.device, non_blocking=True)
            genes = None
            if self.walk is not None:
                genes = self.sampler.next_genes().to(self.device)
                xb = xb.index_select(1, genes)
            mask = self.mask(idx, None if genes is None else genes.cpu())
            if mask is not None:
                xb = xb.masked_fill(mask.to(self.device), float("nan"))
            return StepBatch(idx.to(self.device), genes, xb)
        return batch


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``: pinned and copied asynchronously on CUDA."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class _ChunkFeed(_Feed):
    """Draws a whole chunk of batches up front (see the subclasses)."""

    prefetches = True

    def _draw(self, n: int, with_rows: bool):
        """The chunk's sample indices, gene indices (``None`` each without a gene walk),
        held-out masks (``None`` each without validation) and, ``with_rows``, source rows."""
        idx, genes, masks, rows = [], [], [], []
        for _ in range(n):
            i = self.sampler.next()
            if with_rows:
                rows.append(self.source.rows(i))   # right after next(): a block sampler's staged rows
            g = self.sampler.next_genes() if self.walk is not None else None
            idx.append(i)
            genes.append(g)
            masks.append(self.mask(i, g))
        return idx, genes, masks, rows

    def _indices_on_device(self, idx, genes):
        return (_to_device(torch.stack(idx), self.device),
                None if self.walk is None else _to_device(torch.stack(genes), self.device))


class ResidentFeed(_ChunkFeed):
    """The matrix is on the device (``X``, ``source``'s matrix there): per chunk one
    upload of the sample indices, the gene indices and the held-out mask; each step
    gathers its tile on the device."""

    def __init__(self, source, sampler, device: torch.device, validation=None, *, X: torch.Tensor) -> None:
        super().__init__(source, sampler, device, validation)
        self.X = X

    def prepare(self, n: int) -> Callable[[int], StepBatch]:
        idx, genes, masks, _ = self._draw(n, with_rows=False)
        d_idx, d_genes = self._indices_on_device(idx, genes)
        d_mask = None if masks[0] is None else _to_device(torch.stack(masks), self.device)

        def batch(i: int) -> StepBatch:
            xb = self.X.index_select(0, d_idx[i])
            g = None
            if d_genes is not None:
                g = d_genes[i]
                xb = xb.index_select(1, g)
            if d_mask is not None:
                xb = xb.masked_fill(d_mask[i], float("nan"))
            return StepBatch(d_idx[i], g, xb)
        return batch


class TileFeed(_ChunkFeed):
    """The matrix stays in host memory (a tensor, a memory map, a backed or sparse
    source): each step's tile, its rows x its genes, is gathered on the host into one
    pinned buffer per chunk, copied to the device asynchronously with the indices."""

    def _genes_per_step(self) -> int:
        return self.source.shape[1] if self.walk is None else self.walk.k

    def chunk_limit(self, b: int) -> int:
        return max(1, TILE_CHUNK_BYTES // max(1, 4 * b * self._genes_per_step()))

    def prepare(self, n: int) -> Callable[[int], StepBatch]:
        idx, genes, masks, rows = self._draw(n, with_rows=True)
        host = torch.empty((n, len(idx[0]), self._genes_per_step()), dtype=torch.float32,
                           pin_memory=self.device.type == "cuda")
        for t, (r, g, m) in enumerate(zip(rows, genes, masks)):   # gathered straight into the buffer
            r = r.to(torch.float32)
            if g is None:
                host[t].copy_(r)
            else:
                torch.index_select(r, 1, g, out=host[t])
            if m is not None:
                host[t].masked_fill_(m, float("nan"))
        d_tiles = host.to(self.device, non_blocking=True)
        d_idx, d_genes = self._indices_on_device(idx, genes)
        return lambda i: StepBatch(d_idx[i], None if d_genes is None else d_genes[i], d_tiles[i])


def resident_on(device: torch.device, X: torch.Tensor) -> bool:
    """Whether the float32 matrix ``X`` (host memory) should be copied to ``device`` for
    the run: CUDA with at most :data:`RESIDENT_SHARE` of its free memory taken
    (``FACTEMBED_RESIDENT=0`` keeps it on the host, ``=1`` forces the copy)."""
    if device.type != "cuda":
        return False
    forced = os.environ.get("FACTEMBED_RESIDENT")
    if forced in ("0", "1"):
        return forced == "1"
    free, _ = torch.cuda.mem_get_info(device)
    return X.numel() * 4 <= RESIDENT_SHARE * free


# -- the step ---------------------------------------------------------------------------------

class EagerStep:
    """One optimisation step, run op by op: the loss of the batch and its gradients
    (the fused kernel), ``before_step()`` (e.g. a data-parallel all-reduce), Adam; returns
    the step's record ``[loss, sum x, sum x^2, sum y, sum y^2, sum xy, count]`` (a device tensor:
    no host synchronisation)."""

    def __init__(self, net, fused, optimizer, masked: bool, before_step: Callable[[], None] | None = None) -> None:
        self.net, self.fused, self.optimizer = net, fused, optimizer
        self.masked, self.before_step = masked, before_step

    def forward_backward(self, batch: StepBatch) -> torch.Tensor:
        net, xb = self.net, batch.xb
        # index_select (not advanced indexing): its backward is an index_add_, which a
        # CUDA graph can capture; with distinct indices the gradients are bitwise the same
        S = net.sample_term(net.sample_embedding.index_select(0, batch.idx), rows=batch.idx)
        layer = net.gene_layer() if batch.genes is None else net.gene_layer(batch.genes)
        if self.masked:     # NaN targets add nothing; each row's error averaged over its observed entries
            observed = (~torch.isnan(xb)).sum().clamp_min(1)
            weights = torch.full((xb.shape[0],), 1.0, device=xb.device) * (xb.shape[1] / observed)
            loss = self.fused(S, layer, xb, net.decoder_weights(), row_weights=weights)
        else:
            loss = self.fused(S, layer, xb, net.decoder_weights())
        loss.backward()
        return loss

    def record(self, loss: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """``[loss, sum x, sum x^2, sum y, sum y^2, sum xy, count]`` over exactly the entries
        the step trained on (held-out and missing targets left out of every sum and of the
        count; the kernel's sums of the predictions ``y`` leave them out too)."""
        if self.masked:
            seen = ~torch.isnan(xb)
            xs = xb.nan_to_num(0.0)
            count = seen.sum().to(xb.dtype).reshape(1)
        else:
            xs = xb
            count = torch.full((1,), float(xb.numel()), dtype=xb.dtype, device=xb.device)
        return torch.cat([loss.detach().reshape(1), xs.sum().reshape(1), (xs * xs).sum().reshape(1),
                          self.fused.last_stats.to(xb.dtype), count])

    def __call__(self, batch: StepBatch) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.forward_backward(batch)
        if self.before_step is not None:
            self.before_step()
        self.optimizer.step()
        return self.record(loss, batch.xb)


def graphs_wanted(device: torch.device, before_step, graphs: bool | None) -> bool:
    """CUDA graphs by default on CUDA (``FACTEMBED_CUDA_GRAPHS=0`` turns them off), never
    with a ``before_step`` hook (a data-parallel all-reduce runs eagerly) nor off CUDA."""
    if device.type != "cuda" or before_step is not None:
        if graphs and before_step is not None:
            warnings.warn("factembed: CUDA graphs are not used with a before_step hook "
                          "(data-parallel training runs its steps eagerly)", RuntimeWarning, stacklevel=3)
        return False
    if graphs is None:
        return os.environ.get("FACTEMBED_CUDA_GRAPHS", "1") != "0"
    return bool(graphs)


class GraphedStep:
    """The whole step (forward, backward, capturable Adam, the record) captured once as a
    CUDA graph and replayed: per step, three copies into the graph's input buffers, one
    replay and one copy of its record, with no host synchronisation.

    The first ``warmup`` steps run eagerly on a side stream (lazy initialisation: cuBLAS,
    Adam's state, the kernel's workspaces); the next step is captured and *checked*: its
    replay is compared with the same step run eagerly from the same state (parameters
    and Adam's state within ``CHECK_TOL``), and a mismatch or a failed capture falls back
    to eager steps with one warning.  The graph is captured again when a learning rate or
    a shape changes (the learning-rate decay of ``n_steps="auto"``)."""

    CHECK_TOL = 1e-5

    def __init__(self, eager: EagerStep, warmup: int = 3) -> None:
        self.eager = eager
        self.warmup = int(warmup)
        self.warm = 0
        self.graph = None
        self.key = None
        self.failed: str | None = None
        self.captures = 0
        self.side = None
        self.device = next(iter(eager.net.parameters())).device
        if hasattr(eager.fused, "compiled"):
            eager.fused.compiled = False   # TorchScript under capture is a known pitfall; replay has no Python cost

    # -- state of the parameters and Adam (for the capture check) ---------------------------
    def _tensors(self) -> list[torch.Tensor]:
        opt = self.eager.optimizer
        out = [p for g in opt.param_groups for p in g["params"]]
        for p in list(out):
            out.extend(v for v in opt.state.get(p, {}).values() if torch.is_tensor(v))
        return out

    def _key(self, batch: StepBatch) -> tuple:
        # every hyper-parameter of Adam is a constant of the captured step (fused Adam takes
        # them as scalars): any change, the learning-rate decay above all, captures again
        groups = tuple(tuple(sorted((k, v) for k, v in g.items() if k not in ("params", "capturable")
                                    and not torch.is_tensor(v)))
                       for g in self.eager.optimizer.param_groups)
        return groups, tuple(batch.idx.shape), None if batch.genes is None else tuple(batch.genes.shape), \
            tuple(batch.xb.shape)

    def _capture(self, batch: StepBatch) -> None:
        e = self.eager
        self.s_idx = batch.idx.clone()
        self.s_genes = None if batch.genes is None else batch.genes.clone()
        self.s_xb = batch.xb.clone()
        static = StepBatch(self.s_idx, self.s_genes, self.s_xb)
        e.optimizer.zero_grad(set_to_none=True)    # gradients made inside the graph, at fixed addresses

        def body():
            loss = e.forward_backward(static)
            e.optimizer.step()
            self.s_record = e.record(loss, static.xb)
        # Adam is captured only here (replays never call it from Python): the flag says so for
        # the capture and is cleared after it, so eager steps and checkpoints never carry it.
        # Fused Adam keeps its step count on the device already; the flag changes nothing else.
        groups = e.optimizer.param_groups
        for group in groups:
            group["capturable"] = True
        try:
            self.graph = self._record(body)
        finally:
            for group in groups:
                group["capturable"] = False
        self.captures += 1

    # -- the CUDA calls, apart (tests/training/test_step.py replaces them to run this class's logic on
    # the CPU, with a "graph" that replays by running the body again) --------------------------
    def _record(self, body: Callable[[], None]):
        """A CUDA graph of ``body()`` (recorded, not run)."""
        graph = torch.cuda.CUDAGraph()
        cap = torch.cuda.Stream(device=self.device)
        cap.wait_stream(torch.cuda.current_stream(self.device))
        # the outer stream context is left even when the capture's own exit raises (it ends the
        # capture before it restores the stream), so a failed capture cannot leave the rest of
        # the run on the capture stream
        with torch.cuda.stream(cap):
            with torch.cuda.graph(graph, stream=cap):
                body()
        return graph

    def _warmup_step(self, batch: StepBatch) -> torch.Tensor:
        """An eager step on a side stream (the warm-up before a capture)."""
        side = self.side = self.side or torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self.eager(batch)
        torch.cuda.current_stream().wait_stream(side)
        return out

    def _device_scope(self):
        return torch.cuda.device(self.device)

    def _synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def _replay(self, batch: StepBatch) -> torch.Tensor:
        self.s_idx.copy_(batch.idx, non_blocking=True)
        if self.s_genes is not None:
            self.s_genes.copy_(batch.genes, non_blocking=True)
        self.s_xb.copy_(batch.xb, non_blocking=True)
        self.graph.replay()
        return self.s_record

    def _fall_back(self, why: str) -> None:
        self.failed, self.graph = why, None
        warnings.warn(f"factembed: CUDA graph not used ({why}); training continues with eager steps",
                      RuntimeWarning, stacklevel=4)

    def _close(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        return torch.allclose(a.float(), b.float(), rtol=self.CHECK_TOL, atol=self.CHECK_TOL, equal_nan=True)

    def __call__(self, batch: StepBatch) -> torch.Tensor:
        with self._device_scope():     # streams and capture on the parameters' device
            return self._step(batch)

    def _step(self, batch: StepBatch) -> torch.Tensor:
        if self.failed is not None:
            return self.eager(batch)
        if self.warm < self.warmup:          # eager warm-up steps on a side stream
            self.warm += 1
            return self._warmup_step(batch)
        key = self._key(batch)
        if self.graph is not None and key == self.key:
            return self._replay(batch)
        # (re)capture, then check the replay against the eager step from the same state
        self.graph = None
        state = self._tensors()
        before = [t.detach().clone() for t in state]

        def restore():
            for t, v in zip(state, before):
                t.detach().copy_(v)
        try:
            self._capture(batch)
            if not all(self._close(t.detach(), v) for t, v in zip(state, before)):
                raise RuntimeError("the capture ran the step instead of recording it "
                                   "(are the tensors on another device?)")
            got_record = self._replay(batch).clone()
        except Exception as exc:  # noqa: BLE001 - any capture failure: eager from here on
            self._synchronize()
            restore()
            self._fall_back(f"capture failed: {type(exc).__name__}: {exc}")
            return self.eager(batch)
        got = [t.detach().clone() for t in state]
        restore()
        record = self.eager(batch)          # the step of record: eager, from the same state
        self.eager.optimizer.zero_grad(set_to_none=True)   # the graph has its own gradients
        moved = any(not torch.equal(g, v) for g, v in zip(got, before))
        ok = moved and self._close(got_record, record) and all(
            self._close(g, t.detach()) for g, t in zip(got, state))
        if not ok:
            worst = max([float((g.float() - t.detach().float()).abs().max()) for g, t in zip(got, state)]
                        + [float((got_record - record).abs().max())])
            self._fall_back(f"the replayed step differs from the eager one by {worst:.3g}" if moved
                            else "the replayed step changed nothing")
        else:
            self.key = key
        return record


def make_step(net, fused, optimizer, *, device: torch.device, masked: bool,
              before_step: Callable[[], None] | None = None, graphs: bool | None = None):
    """The step of :func:`~factembed.training.loop.train`: a :class:`GraphedStep` where
    :func:`graphs_wanted` says so, else an :class:`EagerStep`."""
    eager = EagerStep(net, fused, optimizer, masked, before_step)
    return GraphedStep(eager) if graphs_wanted(device, before_step, graphs) else eager


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda:0`` and ``cuda`` (the current device) are the same device when 0 is current."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def make_feed(source, sampler, device: torch.device, validation=None, feed: str | None = None):
    """The feed of a run: ``"lazy"`` on the CPU, ``"resident"`` when the source is an
    in-memory tensor already on the device or worth copying there (:func:`resident_on`),
    else ``"tiles"``; ``feed`` forces one (the tests run all three on the CPU)."""
    X = getattr(source, "X", None)
    X = X if isinstance(X, torch.Tensor) else None      # e.g. a sparse matrix's rows: tiles
    if feed is None:
        if device.type == "cpu":
            feed = "lazy"
        elif X is not None and (_same_device(X.device, device)
                                or (X.device.type == "cpu" and resident_on(device, X))):
            feed = "resident"
        else:
            feed = "tiles"
    if feed == "lazy":
        return LazyFeed(source, sampler, device, validation)
    if feed == "resident":
        if X is None:
            raise ValueError("feed='resident' needs an in-memory dense tensor source")
        return ResidentFeed(source, sampler, device, validation, X=X.to(device))
    if feed == "tiles":
        return TileFeed(source, sampler, device, validation)
    raise ValueError(f"feed must be 'lazy', 'resident' or 'tiles', got {feed!r}")
