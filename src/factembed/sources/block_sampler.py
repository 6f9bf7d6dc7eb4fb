"""The block sampler: batches of rows of a file on disk, drawn so that reads stay sequential.

A :class:`BlockSampler` cuts the rows of a :class:`BlockSource` (any object with ``shape``,
``read_block`` and ``stage``: :class:`factembed.sources.BackedSource` is one) into
*blocks* of ``block_rows`` contiguous rows (one sequential read of a few MiB each); each
pass visits the blocks in a random order, ``blocks_per_window`` blocks at a time; the rows
of one such *window* are permuted and cut into batches, while a background thread reads
the next window.  :func:`plan_blocks` sizes blocks and windows from a memory budget.
The sources (``factembed.sources``) own the reading; this module owns the order of the rows and
imports nothing of the package (the sources import it, never the other way).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch

__all__ = ["BlockSampler", "BlockSource", "plan_blocks", "DEFAULT_MEMORY_BUDGET", "MIN_READ_BYTES"]


class BlockSource(Protocol):
    """What a :class:`BlockSampler` needs of the rows it orders."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def read_block(self, a: int, b: int, out: np.ndarray) -> None:
        """Rows ``a:b`` into ``out`` (float32, ``(b - a, n_genes)``), checked and transformed."""

    def stage(self, index: torch.Tensor, rows: torch.Tensor) -> None:
        """Keep ``rows`` (the rows of ``index``, just drawn) for the next ``rows(index)``."""

#: Bytes of row buffers a :class:`BlockSampler` may hold at once (all windows in flight).
DEFAULT_MEMORY_BUDGET = 256 << 20
#: Smallest sequential read worth doing on its own (sets the default block size).
MIN_READ_BYTES = 4 << 20


def plan_blocks(n_rows: int, n_genes: int, batch_samples: int, *, memory_budget: int | None = None,
                block_rows: int | None = None, blocks_per_window: int | None = None,
                prefetch: int = 1) -> tuple[int, int]:
    """``(block_rows, blocks_per_window)`` for a matrix of ``n_rows x n_genes`` float32.

    A window gets ``memory_budget / (2 + prefetch)`` bytes (the current window, the
    previous one while a batch straddles the two, and the ones being prefetched); a
    block is the smallest run of rows worth ``MIN_READ_BYTES`` (>= 1 row)."""
    budget = int(memory_budget or DEFAULT_MEMORY_BUDGET)
    row_bytes = 4 * max(1, n_genes)
    n_buffers = 2 + max(0, int(prefetch))
    window_rows = max(int(batch_samples), budget // (n_buffers * row_bytes), 1)
    window_rows = min(window_rows, n_rows)
    if block_rows is None:
        block_rows = min(window_rows, max(1, -(-MIN_READ_BYTES // row_bytes)))
    block_rows = max(1, min(int(block_rows), n_rows))
    if blocks_per_window is None:
        blocks_per_window = max(1, window_rows // block_rows)
    return block_rows, max(1, int(blocks_per_window))




class _Window:
    __slots__ = ("buf", "gidx")

    def __init__(self, buf: np.ndarray, gidx: np.ndarray) -> None:
        self.buf = buf      # (rows, genes) float32, blocks in increasing row order
        self.gidx = gidx    # (rows,) int64 row number of each buffer row


class BlockSampler:
    """Batches of ``batch_samples`` row indices of a :class:`BlockSource`, drawn so
    that the data are read sequentially.

    Each pass over the rows visits the blocks in a fresh random order.  Consecutive
    groups of ``blocks_per_window`` blocks form a window; a window's rows are read
    (each block one sequential read), permuted and cut into batches.  A batch may
    straddle two windows; the last incomplete batch of a pass is dropped (as with
    :class:`factembed.training.loop.BatchSampler`), so every row is used at most once per
    pass, and exactly once when ``batch_samples`` divides the number of rows.

    All random draws happen in the calling thread, in a fixed order, so the sequence
    of batches depends only on the generator's seed, not on thread timing; the
    prefetch thread only reads.  ``state_dict`` / ``load_state_dict`` (the block
    orders, the current window's permutation, the position and the generator state)
    let a checkpointed run resume with the same batches.
    """

    def __init__(self, source: BlockSource, batch_samples: int, generator: torch.Generator, *,
                 memory_budget: int | None = None, block_rows: int | None = None,
                 blocks_per_window: int | None = None, prefetch: int = 1) -> None:
        self.source = source
        self.n, m = source.shape
        self.b = min(int(batch_samples), self.n)
        self.gen = generator
        self.prefetch = max(0, int(prefetch))
        self.block_rows, self.blocks_per_window = plan_blocks(
            self.n, m, self.b, memory_budget=memory_budget, block_rows=block_rows,
            blocks_per_window=blocks_per_window, prefetch=self.prefetch)
        self.n_blocks = -(-self.n // self.block_rows)
        self.n_windows = -(-self.n_blocks // self.blocks_per_window)
        self.window_rows = self.block_rows * self.blocks_per_window
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="factembed-prefetch") \
            if self.prefetch > 0 else None
        self._futures: dict[tuple[int, ...], Future] = {}
        self.read_seconds_waited = 0.0   # time next() spent waiting for reads (I/O stall)
        self.windows_read = 0
        self.order = torch.randperm(self.n_blocks, generator=self.gen)
        self.next_order = torch.randperm(self.n_blocks, generator=self.gen)
        self.passes = 0
        self.consumed = 0
        self._enter_window(0)

    # -- windows ------------------------------------------------------------------------
    def _blocks(self, order: torch.Tensor, w: int) -> tuple[int, ...]:
        W = self.blocks_per_window
        return tuple(sorted(int(k) for k in order[w * W:(w + 1) * W]))

    def _read_window(self, blocks: tuple[int, ...]) -> _Window:
        R = self.block_rows
        runs: list[list[int]] = []
        for k in blocks:
            a, b = k * R, min(self.n, (k + 1) * R)
            if runs and runs[-1][1] == a:
                runs[-1][1] = b
            else:
                runs.append([a, b])
        total = sum(b - a for a, b in runs)
        buf = np.empty((total, self.source.shape[1]), dtype=np.float32)
        o = 0
        for a, b in runs:
            self.source.read_block(a, b, buf[o:o + b - a])
            o += b - a
        gidx = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in runs])
        return _Window(buf, gidx)

    def _upcoming(self) -> list[tuple[int, ...]]:
        keys = []
        w, order, wrapped = self.win, self.order, False
        for _ in range(self.prefetch):
            w += 1
            if w >= self.n_windows:
                if wrapped:   # the order of the pass after next is not drawn yet
                    break
                w, order, wrapped = 0, self.next_order, True
            keys.append(self._blocks(order, w))
        return keys

    def _schedule(self) -> None:
        if self._executor is None:
            return
        wanted = self._upcoming()
        for key in list(self._futures):
            if key not in wanted:
                self._futures.pop(key).cancel()
        for key in wanted:
            if key not in self._futures:
                self._futures[key] = self._executor.submit(self._read_window, key)

    def _load(self, key: tuple[int, ...]) -> _Window:
        import time
        t0 = time.perf_counter()
        fut = self._futures.pop(key, None)
        window = fut.result() if fut is not None else self._read_window(key)
        self.read_seconds_waited += time.perf_counter() - t0
        self.windows_read += 1
        return window

    def _enter_window(self, w: int, perm: torch.Tensor | None = None) -> None:
        self.win = w
        self.window = self._load(self._blocks(self.order, w))
        self.perm = perm if perm is not None else torch.randperm(len(self.window.gidx), generator=self.gen)
        self.pos = 0
        self._schedule()

    # -- the sampler interface -----------------------------------------------------------
    def next(self) -> torch.Tensor:
        if self.consumed + self.b > self.n:     # not enough rows left in this pass
            self.order, self.next_order = self.next_order, torch.randperm(self.n_blocks, generator=self.gen)
            self.passes += 1
            self.consumed = 0
            self._enter_window(0)
        need = self.b
        idx_parts, row_parts = [], []
        while need:
            if self.pos >= len(self.perm):
                self._enter_window(self.win + 1)
            take = min(need, len(self.perm) - self.pos)
            p = self.perm[self.pos:self.pos + take].numpy()
            idx_parts.append(self.window.gidx[p])
            row_parts.append(self.window.buf[p])
            self.pos += take
            need -= take
        self.consumed += self.b
        idx = torch.from_numpy(np.concatenate(idx_parts) if len(idx_parts) > 1 else idx_parts[0])
        rows = torch.from_numpy(np.concatenate(row_parts) if len(row_parts) > 1 else row_parts[0])
        self.source.stage(idx, rows)
        return idx

    def __iter__(self):
        while True:
            yield self.next()

    def state_dict(self) -> dict:
        return {"order": self.order.clone(), "next_order": self.next_order.clone(),
                "perm": self.perm.clone(), "win": self.win, "pos": self.pos,
                "consumed": self.consumed, "passes": self.passes,
                "block_rows": self.block_rows, "blocks_per_window": self.blocks_per_window,
                "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if (int(state["block_rows"]), int(state["blocks_per_window"])) != (self.block_rows, self.blocks_per_window):
            raise ValueError(f"sampler state is for blocks of {int(state['block_rows'])} rows x "
                             f"{int(state['blocks_per_window'])} per window; this sampler uses "
                             f"{self.block_rows} x {self.blocks_per_window} (pass the same block_rows/"
                             "blocks_per_window/memory_budget)")
        self.order = torch.as_tensor(state["order"]).clone()
        self.next_order = torch.as_tensor(state["next_order"]).clone()
        self.passes = int(state["passes"])
        self.consumed = int(state["consumed"])
        for fut in self._futures.values():
            fut.cancel()
        self._futures.clear()
        self._enter_window(int(state["win"]), perm=torch.as_tensor(state["perm"]).clone())
        self.pos = int(state["pos"])
        self.gen.set_state(state["generator"])

    def close(self) -> None:
        for fut in self._futures.values():
            fut.cancel()
        self._futures.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover
            pass
