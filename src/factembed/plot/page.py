"""The interactive embedding page: one self-contained HTML file (bokeh, its JavaScript
inlined, so it opens offline).

* the sample embedding (two chosen dimensions), pan / wheel zoom / box select, WebGL; hover
  shows the sample name and every annotation column;
* a selector colours the points by any annotation column: categorical columns get the
  PNGs' palettes (:func:`factembed.plot.palette.label_palette`, time courses ordered), numeric
  columns with many values a continuous palette; a click on a legend entry hides or shows
  that class;
* newly embedded samples (``transform``) drawn over the training samples as triangles,
  their nearest training samples (in the embedding) listed on hover;
* the gene embedding's 2-D PCA with a search box: a gene name highlights the gene and its
  ``k`` nearest genes by cosine similarity (what ``similar_genes`` returns), precomputed here.

Size: coordinates and class codes travel as binary arrays; the text per sample is its name
and the class of each categorical column (names of classes, not repeated strings, are in the
page once). bench/NOTES.md states the size and load time at 10,000 and 100,000 samples.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..estimator.genes import nearest_genes

INSTALL_HINT = "pip install 'factembed[interactive]'"
#: at most this many classes get their own colour and legend entry; the rest are "other"
MAX_CLASSES = 60
#: numeric columns with more distinct values than this get a continuous palette
CONTINUOUS_MIN_VALUES = 12
TRAIN_SOURCE, NEW_SOURCE, GENE_SOURCE = "fe_samples", "fe_new_samples", "fe_genes"


class MissingBokeh(RuntimeError):
    """bokeh, the optional ``interactive`` extra, is not installed."""


def require_bokeh():
    try:
        import bokeh  # noqa: F401
    except ImportError:
        raise MissingBokeh(f"the interactive page needs bokeh: {INSTALL_HINT}") from None
    return bokeh


def _hex(color) -> str:
    from matplotlib.colors import to_hex
    return to_hex(color)


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------

def _annotation_frame(annotations: Any, n: int, what: str):
    """``annotations`` (a DataFrame, a mapping of column -> values, or None) as a DataFrame of ``n`` rows."""
    import pandas as pd

    if annotations is None:
        return pd.DataFrame(index=range(n))
    frame = annotations.copy() if isinstance(annotations, pd.DataFrame) else pd.DataFrame(dict(annotations))
    if len(frame) != n:
        raise ValueError(f"{what}: {len(frame)} rows of annotations for {n} samples")
    return frame.reset_index(drop=True)


def _column_kind(values) -> str:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) \
            and values.nunique(dropna=True) > CONTINUOUS_MIN_VALUES:
        return "continuous"
    return "categorical"


def _categorical(values) -> tuple[np.ndarray, list[str]]:
    """(int32 codes, class names in display order): the PNGs' order (quantities sorted by
    value, else alphabetical); beyond :data:`MAX_CLASSES` the rarest classes are "other"."""
    from .palette import order_labels

    text = np.asarray(["NA" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                       for v in values], dtype=object)
    order = order_labels(text) if len(text) else []
    if len(order) > MAX_CLASSES:
        uniq, counts = np.unique(text, return_counts=True)
        keep = set(uniq[np.argsort(-counts, kind="stable")][:MAX_CLASSES - 1])
        text = np.where(np.isin(text, list(keep)), text, "other")
        order = [c for c in order if c in keep] + ["other"]
    index = {c: i for i, c in enumerate(order)}
    return np.fromiter((index[t] for t in text), dtype=np.int32, count=len(text)), order


def nearest_training(Z_train: np.ndarray, Z_new: np.ndarray, names: Sequence[str], k: int = 5) -> list[str]:
    """For each new sample, its ``k`` nearest training samples in the embedding, as "a, b, c"."""
    from sklearn.neighbors import NearestNeighbors

    k = max(1, min(int(k), len(Z_train)))
    idx = NearestNeighbors(n_neighbors=k).fit(Z_train).kneighbors(Z_new, return_distance=False)
    names = np.asarray([str(s) for s in names], dtype=object)
    return [", ".join(names[row]) for row in idx]


def gene_pca(G: np.ndarray) -> np.ndarray:
    """The gene embedding projected on its first two principal components (``m x 2``)."""
    G = np.asarray(G, dtype=np.float64)
    if G.shape[1] == 1:
        return np.column_stack([G[:, 0] - G[:, 0].mean(), np.zeros(len(G))])
    from sklearn.decomposition import PCA
    P = PCA(n_components=2, svd_solver="full", random_state=0).fit_transform(G)
    # a deterministic sign: the largest |loading| of each component positive
    return P * np.where(np.abs(P).max(axis=0) == P.max(axis=0), 1.0, -1.0)


# --------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------

def embedding_page(Z: np.ndarray, samples: Sequence | None = None, annotations: Any = None, *,
                   gene_embedding: np.ndarray | None = None, genes: Sequence | None = None,
                   new: Mapping | None = None, dims: tuple[int, int] = (0, 1), k_genes: int = 10,
                   k_nearest: int = 5, color_by: str | None = None,
                   title: str = "Factorized Embeddings", path: str | os.PathLike | None = None):
    """The bokeh layout of the page (saved as one self-contained HTML file when ``path`` is given).

    ``Z``: the training samples' embedding (``n x sample_dim``); ``samples``: their names;
    ``annotations``: a DataFrame (or column -> values mapping) of ``n`` rows, one colour
    choice per column; ``gene_embedding`` / ``genes``: the gene table and names for the gene
    view (left out when ``None``); ``new``: ``{"Z": ..., "samples": ..., "annotations": ...}``
    of newly embedded samples; ``dims``: the two embedding dimensions shown; ``k_genes``: the
    neighbours highlighted by the gene search; ``color_by``: the column coloured first."""
    require_bokeh()
    from bokeh.layouts import column, row
    from bokeh.models import (AutocompleteInput, ColumnDataSource, CustomJS, CustomJSHover, Div, HoverTool,
                              Legend, LegendItem, Select)
    from bokeh.plotting import figure

    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or len(Z) == 0:
        raise ValueError(f"the embedding must be a non-empty 2-D array, got shape {Z.shape}")
    n = len(Z)
    dx, dy = _check_dims(dims, Z.shape[1])
    names = [str(s) for s in (samples if samples is not None else range(n))]
    if len(names) != n:
        raise ValueError(f"{len(names)} sample names for {n} samples")
    ann = _annotation_frame(annotations, n, "annotations")
    if color_by is not None and color_by not in ann.columns:
        raise ValueError(f"color_by={color_by!r}: no such annotation column (columns: {', '.join(map(str, ann.columns)) or 'none'})")

    xy = _coords(Z, dx, dy)
    data: dict[str, Any] = {"x": xy[0], "y": xy[1], "sample": names, "color": np.full(n, "#4d4d4d", dtype=object)}
    tooltips = [("sample", "@sample")]
    formatters: dict[str, Any] = {}
    columns: dict[str, dict] = {}
    for i, col in enumerate(ann.columns):
        key = f"a{i}"
        values = ann[col]
        if _column_kind(values) == "continuous":
            v = values.to_numpy(dtype=np.float64)
            data[key] = v.astype(np.float32)
            columns[str(col)] = {"key": key, "kind": "continuous"}
            tooltips.append((str(col), f"@{key}"))
        else:
            codes, classes = _categorical(values)
            data[key] = codes
            colors = _class_colors(classes)
            columns[str(col)] = {"key": key, "kind": "categorical", "classes": classes, "colors": colors}
            tooltips.append((str(col), f"@{key}{{custom}}"))
            formatters[f"@{key}"] = CustomJSHover(args=dict(classes=classes), code="return classes[value]")
    source = ColumnDataSource(data, name=TRAIN_SOURCE)

    p = figure(title=title, output_backend="webgl", tools="pan,wheel_zoom,box_select,reset,save",
               active_scroll="wheel_zoom", width=760, height=600, name="fe_sample_plot",
               x_axis_label=f"FE{dx + 1}", y_axis_label=f"FE{dy + 1}")
    legend = Legend(name="fe_legend", click_policy="hide", location="top_left", label_text_font_size="8pt")
    p.add_layout(legend, "right")

    # one renderer per class of each categorical column (legend clicks hide a renderer),
    # sharing the one source through index views; the colour selector swaps them
    groups: dict[str, list] = {}
    size = 7 if n <= 2_000 else 4 if n <= 20_000 else 2.5
    for col, spec in columns.items():
        rends, items = [], []
        if spec["kind"] == "categorical":
            codes = data[spec["key"]]
            for c, (cls, colr) in enumerate(zip(spec["classes"], spec["colors"])):
                from bokeh.models import CDSView, IndexFilter
                idx = np.flatnonzero(codes == c).astype(np.int32)
                r = p.scatter("x", "y", source=source, view=CDSView(filter=IndexFilter(idx)), size=size,
                              color=colr, alpha=0.8, line_width=0, visible=False, name=f"fe_class::{col}::{cls}")
                rends.append(r)
                items.append(LegendItem(label=cls, renderers=[r]))
        else:
            v = ann[col].to_numpy(dtype=float)
            lo, hi = (float(np.nanmin(v)), float(np.nanmax(v))) if np.isfinite(v).any() else (0.0, 1.0)
            r = p.scatter("x", "y", source=source, size=size, color=_continuous_mapper(spec["key"], lo, hi),
                          alpha=0.8, line_width=0, visible=False, name=f"fe_class::{col}::")
            rends.append(r)
            items.append(LegendItem(label=f"{col}: {lo:.3g} (dark) to {hi:.3g} (light)", renderers=[r]))
        groups[col] = [rends, items]
    plain = p.scatter("x", "y", source=source, size=size, color="#4d4d4d", alpha=0.8, line_width=0,
                      visible=not columns, name="fe_class::(none)::")
    groups["(none)"] = [[plain], [LegendItem(label="training samples", renderers=[plain])]]
    first = color_by if color_by is not None else (next(iter(columns)) if columns else "(none)")
    for r in groups[first][0]:
        r.visible = True
    hover_renderers = [r for rs, _ in groups.values() for r in rs]

    extra_items = []
    if new is not None:
        new_r, new_item, new_tips = _new_samples(p, new, Z, names, dx, dy, k_nearest, columns)
        extra_items.append(new_item)
        p.add_tools(HoverTool(renderers=[new_r], tooltips=new_tips, name="fe_new_hover"))
    legend.items = groups[first][1] + extra_items
    p.add_tools(HoverTool(renderers=hover_renderers, tooltips=tooltips, formatters=formatters, name="fe_hover"))

    select = Select(title="colour by", value=first, options=list(groups), name="fe_color_select", width=220)
    select.js_on_change("value", CustomJS(args=dict(groups=groups, legend=legend, extra=extra_items), code="""
        const chosen = cb_obj.value;
        for (const [name, [rends, _items]] of Object.entries(groups))
            for (const r of rends) r.visible = (name === chosen);
        legend.items = groups[chosen][1].concat(extra);
    """))
    controls = [select]
    views = [p]
    if gene_embedding is not None:
        views.append(_gene_view(gene_embedding, genes, k_genes, controls))
    note = Div(text=f"{n:,} training samples" + (f", {len(new['Z']):,} new samples" if new is not None else "")
               + ". Drag to pan, wheel to zoom, box select from the toolbar; click a legend entry to hide it.",
               name="fe_note")
    layout = column(row(*controls), row(*views), note, name="fe_layout")
    if path is not None:
        save_page(layout, path, title)
    return layout


def _check_dims(dims, d: int) -> tuple[int, int]:
    try:
        dx, dy = (int(v) for v in dims)
    except (TypeError, ValueError):
        raise ValueError(f"dims must be two embedding dimensions, got {dims!r}") from None
    if d == 1:
        return 0, 0
    for v in (dx, dy):
        if not 0 <= v < d:
            raise ValueError(f"dims={dims!r}: the embedding has dimensions 0 to {d - 1}")
    return dx, dy


def _coords(Z: np.ndarray, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray]:
    if Z.shape[1] == 1:
        return Z[:, 0].astype(np.float32), np.zeros(len(Z), dtype=np.float32)
    return Z[:, dx].astype(np.float32), Z[:, dy].astype(np.float32)


def _class_colors(classes: Sequence[str]) -> list[str]:
    from .palette import label_palette

    pal = label_palette([c for c in classes if c != "other"])
    return [_hex(pal[c]) if c in pal else "#b0b0b0" for c in classes]


def _continuous_mapper(field: str, lo: float, hi: float):
    """Colour of a numeric column: viridis, dark to light (as the PNGs' ordered palette:
    its lightest 15% left out), missing values grey; computed in the browser."""
    import matplotlib
    from bokeh.transform import linear_cmap

    cmap = matplotlib.colormaps["viridis"]
    palette = [_hex(cmap(t)) for t in np.linspace(0.0, 0.85, 218)]
    return linear_cmap(field, palette, lo, hi if hi > lo else lo + 1.0, nan_color="#b0b0b0")


def _new_samples(p, new: Mapping, Z_train, train_names, dx, dy, k_nearest, columns):
    from bokeh.models import ColumnDataSource, LegendItem

    Zn = np.asarray(new["Z"], dtype=np.float64)
    if Zn.ndim != 2 or Zn.shape[1] != Z_train.shape[1]:
        raise ValueError(f"new samples: embedding of shape {Zn.shape}, the training embedding has "
                         f"{Z_train.shape[1]} dimensions")
    m = len(Zn)
    names = [str(s) for s in (new.get("samples") if new.get("samples") is not None else
                              (f"new {i}" for i in range(m)))]
    ann = _annotation_frame(new.get("annotations"), m, "new samples' annotations")
    xy = _coords(Zn, dx, dy)
    data = {"x": xy[0], "y": xy[1], "sample": names,
            "nearest": nearest_training(Z_train, Zn, train_names, k_nearest)}
    tips = [("new sample", "@sample")]
    for i, col in enumerate(ann.columns):
        data[f"n{i}"] = [str(v) for v in ann[col]]
        tips.append((str(col), f"@n{i}"))
    tips.append(("nearest training samples", "@nearest"))
    src = ColumnDataSource(data, name=NEW_SOURCE)
    r = p.scatter("x", "y", source=src, marker="triangle", size=11, fill_color="#ffffff", fill_alpha=0.9,
                  line_color="#000000", line_width=1.5, name="fe_new")
    return r, LegendItem(label="new samples", renderers=[r]), tips


def _gene_view(G, genes, k: int, controls: list):
    from bokeh.models import AutocompleteInput, ColumnDataSource, CustomJS, Div, HoverTool, LabelSet
    from bokeh.plotting import figure

    G = np.asarray(G)
    m = len(G)
    names = [str(g) for g in (genes if genes is not None else range(m))]
    if len(names) != m:
        raise ValueError(f"{len(names)} gene names for a gene embedding of {m} genes")
    P = gene_pca(G)
    nb = nearest_genes(G, k)
    src = ColumnDataSource({"x": P[:, 0].astype(np.float32), "y": P[:, 1].astype(np.float32), "gene": names},
                           name=GENE_SOURCE)
    hi = ColumnDataSource({"x": [], "y": [], "gene": [], "text": []}, name="fe_gene_highlight")
    g = figure(title=f"gene embedding ({m:,} genes, PCA)", output_backend="webgl", width=520, height=600,
               tools="pan,wheel_zoom,box_select,reset,save", active_scroll="wheel_zoom", name="fe_gene_plot",
               x_axis_label="gene PC1", y_axis_label="gene PC2")
    r = g.scatter("x", "y", source=src, size=4 if m > 2_000 else 6, color="#7f7f7f", alpha=0.6, line_width=0,
                  selection_color="#d62728", selection_alpha=1.0, nonselection_alpha=0.25, name="fe_gene_points")
    g.scatter("x", "y", source=hi, size=9, fill_color=None, line_color="#d62728", line_width=2)
    g.add_layout(LabelSet(x="x", y="y", text="text", source=hi, x_offset=6, y_offset=4, text_font_size="10pt",
                          text_font_style="bold"))
    g.add_tools(HoverTool(renderers=[r], tooltips=[("gene", "@gene")]))
    search = AutocompleteInput(title=f"find a gene (highlights it and its {nb.shape[1]} nearest genes)",
                               completions=names, case_sensitive=False, min_characters=1, width=320,
                               name="fe_gene_search", placeholder="gene name")
    found = Div(text="", name="fe_gene_found", width=520)
    search.js_on_change("value", CustomJS(args=dict(src=src, hi=hi, nb=nb.ravel(), k=nb.shape[1], found=found), code="""
        const names = src.data.gene;
        const want = cb_obj.value.trim().toLowerCase();
        const j = names.findIndex((s) => s.toLowerCase() === want);
        if (j < 0) {
            src.selected.indices = []; hi.data = {x: [], y: [], gene: [], text: []};
            found.text = want ? "no gene named " + cb_obj.value : ""; return;
        }
        const idx = [j];
        for (let t = 0; t < k; t++) idx.push(nb[j * k + t]);
        src.selected.indices = idx;
        hi.data = {x: idx.map((i) => src.data.x[i]), y: idx.map((i) => src.data.y[i]),
                   gene: idx.map((i) => names[i]), text: idx.map((i, t) => t === 0 ? names[i] : "")};
        found.text = "nearest genes: " + idx.slice(1).map((i) => names[i]).join(", ");
    """))
    controls.extend([search, found])
    return g


def save_page(layout, path: str | os.PathLike, title: str = "Factorized Embeddings") -> Path:
    """Write ``layout`` as one self-contained HTML file (bokeh's JavaScript inlined)."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    from .._utils.files import atomic_output

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    html = file_html(layout, INLINE, title)
    with atomic_output(path) as tmp:
        Path(tmp).write_text(html, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------
# from a model
# --------------------------------------------------------------------------------------

def page_from_estimator(fe, labels: Any = None, *, annotations: Any = None, new: Any = None,
                        label_name: str = "label", samples: Sequence | None = None, path=None, **kw):
    """:func:`embedding_page` of a fitted :class:`~factembed.FactorizedEmbeddings`: its
    sample embedding and names, ``labels`` (one annotation column named ``label_name``)
    and/or ``annotations`` (more columns), the gene view from its gene embedding; ``new``:
    an array of new embeddings (rows of ``fe.transform``) or a mapping with ``Z``,
    ``samples`` and ``annotations``."""
    import pandas as pd

    Z = fe.embedding_
    n = len(Z)
    ann = _annotation_frame(annotations, n, "annotations")
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} training samples")
        ann = pd.concat([pd.DataFrame({label_name: labels}), ann.drop(columns=[label_name], errors="ignore")], axis=1)
    if samples is None:
        samples = getattr(fe, "sample_names_", None)
    if new is not None and not isinstance(new, Mapping):
        new = {"Z": np.asarray(new)}
    return embedding_page(Z, samples, ann, gene_embedding=fe.gene_embedding_,
                          genes=getattr(fe, "feature_names_in_", None), new=new, path=path, **kw)
