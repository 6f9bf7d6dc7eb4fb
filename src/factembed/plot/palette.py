"""Label colours shared by the static figures (:mod:`factembed.plot`) and the interactive
page (:mod:`factembed.plot.page`): the order of a set of labels and their palette.  It
imports nothing of the package, so both may use it."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np


def label_colors(n: int) -> list:
    """``n`` distinguishable colours: tab10/tab20 for few labels, then tab20 + tab20b +
    tab20c (60 colours) so that the study's 33 cancer types stay distinct."""
    import matplotlib
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    pool = []
    for name in ("tab20", "tab20b", "tab20c"):
        cmap = matplotlib.colormaps[name]
        pool.extend(cmap(i) for i in range(20))
    if n <= len(pool):
        return pool[:n]
    hsv = matplotlib.colormaps["hsv"]
    return pool + [hsv(i / (n - len(pool))) for i in range(n - len(pool))]


#: a number with an optional unit (``0h``, ``24 h``, ``3d``, ``10min``, ``day 3`` is not one)
_QUANTITY = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*([A-Za-z]{0,5})\s*$")


def _quantity(label: str) -> tuple[float, str] | None:
    m = _QUANTITY.match(label)
    return None if m is None else (float(m.group(1)), m.group(2).lower())


def ordered_labels(labels: Sequence) -> bool:
    """True when the labels are quantities of one unit (time points ``0h, 24h, 48h``,
    doses ``1, 10, 100``): their order means something, so they get an ordered palette."""
    uniq = list(dict.fromkeys(str(x) for x in labels))
    parsed = [_quantity(u) for u in uniq]
    return len(uniq) >= 2 and all(p is not None for p in parsed) and len({p[1] for p in parsed}) == 1


def order_labels(labels: Sequence) -> list:
    """The distinct labels (as text) in their display order: by value for quantities of one
    unit (:func:`ordered_labels`), alphabetical otherwise."""
    uniq = list(dict.fromkeys(str(x) for x in labels))
    if ordered_labels(uniq):
        return sorted(uniq, key=lambda s: _quantity(s)[0])
    return sorted(uniq)


def label_palette(order: Sequence[str]) -> dict:
    """Label -> colour: an ordered palette (viridis, dark to light) for ordered labels
    (:func:`ordered_labels`), distinct categorical colours (:func:`label_colors`) otherwise."""
    order = list(order)
    if ordered_labels(order):
        import matplotlib
        cmap = matplotlib.colormaps["viridis"]
        steps = np.linspace(0.0, 0.85, len(order)) if len(order) > 1 else [0.0]
        return {lab: cmap(float(t)) for lab, t in zip(order, steps)}
    return dict(zip(order, label_colors(len(order))))
