"""The engine: the Factorized Embeddings network (:mod:`.network`), the fused blocked kernel
that evaluates its loss and every gradient (:mod:`.kernel`, with the row-split decode), and the
CPU worker threads both share (:mod:`.cpu_pool`).  No training loop, no data sources."""
