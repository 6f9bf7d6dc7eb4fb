"""TCGA-style HDF5 (``.h5`` / ``.hdf5``): datasets ``data`` (samples x genes, or
genes x samples), ``samples``, ``genes``, optional ``labels``, ``biotypes`` and
``obs/`` / ``var/`` groups of annotations; the ``transform`` attribute.  Other top-level
1-D datasets with one value per sample (survival time / event, age ...) are read into
``obs`` too.

:func:`_open_h5` is also used by the AnnData reader and the backed sources
(:mod:`factembed.sources`)."""

from __future__ import annotations

import os

import numpy as np

from ..errors import FEInputError, one_line
from ._data import ExpressionData, _chunk_rows, _to_str_array


def _open_h5(path: str):
    """The HDF5 file ``path`` opened read-only; FEInputError when it is not a
    file or not readable HDF5."""
    import h5py

    if not os.path.isfile(path):
        raise FEInputError("no such file", path)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise FEInputError(f"not a readable HDF5 file (truncated or corrupt?): {one_line(exc)}", path) from None


def _h5_strings(ds, path: str, what: str) -> np.ndarray:
    try:
        raw = ds[()]
    except (OSError, RuntimeError, KeyError) as exc:
        raise FEInputError(f"cannot read dataset {what!r} (truncated or corrupt?): {one_line(exc)}", path) from None
    raw = np.asarray(raw)
    if raw.ndim == 0:
        raw = raw.reshape(1)
    if raw.ndim == 2 and 1 in raw.shape:
        raw = raw.reshape(-1)
    if raw.ndim != 1:
        raise FEInputError(f"dataset {what!r} must be 1-D, got shape {raw.shape}", path)
    return _to_str_array(raw)


def _read_h5(path: str, samples_as_rows: bool | None, chunk_rows: int) -> ExpressionData:
    import h5py

    with _open_h5(path) as f:
        try:
            for key in ("data", "samples", "genes"):
                if key not in f:
                    keys = ", ".join(sorted(f.keys())) or "none"
                    raise FEInputError(f"missing dataset {key!r} (TCGA-style HDF5 needs data, samples, genes; found {keys})", path)
            ds = f["data"]
            if not isinstance(ds, h5py.Dataset):
                raise FEInputError("'data' is a group, expected a 2-D dataset", path)
            if ds.ndim != 2:
                raise FEInputError(f"dataset 'data' must be 2-D, got shape {ds.shape}", path)
            if ds.dtype.kind not in "biuf":
                raise FEInputError(f"dataset 'data' must be numeric, got dtype {ds.dtype}", path)
            samples = _h5_strings(f["samples"], path, "samples")
            genes = _h5_strings(f["genes"], path, "genes")
            r, c = ds.shape
            ns, ng = len(samples), len(genes)
            if samples_as_rows is None:
                if (r, c) == (ns, ng):
                    rows_are_samples = True
                elif (r, c) == (ng, ns):
                    rows_are_samples = False
                else:
                    raise FEInputError(
                        f"data has shape {ds.shape} but there are {ns} samples and {ng} genes", path
                    )
            else:
                rows_are_samples = bool(samples_as_rows)
                want = (ns, ng) if rows_are_samples else (ng, ns)
                if (r, c) != want:
                    orient = "samples x genes" if rows_are_samples else "genes x samples"
                    raise FEInputError(
                        f"data has shape {ds.shape}, expected {want} ({orient}) for {ns} samples and {ng} genes", path
                    )
            X = np.empty((ns, ng), dtype=np.float32)
            step = _chunk_rows(c, chunk_rows)
            try:
                for a in range(0, r, step):
                    b = min(r, a + step)
                    block = ds[a:b]
                    if rows_are_samples:
                        X[a:b] = block
                    else:
                        X[:, a:b] = block.T
            except (OSError, RuntimeError) as exc:
                raise FEInputError(f"cannot read dataset 'data' rows {a}-{b} (truncated or corrupt?): {one_line(exc)}", path) from None
            labels = _h5_strings(f["labels"], path, "labels") if "labels" in f else None
            biotypes = _h5_strings(f["biotypes"], path, "biotypes") if "biotypes" in f else None
            transform = f.attrs.get("transform")
            if isinstance(transform, bytes):
                transform = transform.decode()
            obs = _h5_annotations(f, "obs", path)
            var = _h5_annotations(f, "var", path)
            for k, v in _h5_sample_datasets(f, ns, path).items():
                obs.setdefault(k, v)
        except KeyError as exc:  # h5py raises KeyError for broken links
            raise FEInputError(f"cannot read HDF5 content (corrupt?): {one_line(exc)}", path) from None
    return ExpressionData(X, samples, genes, labels, biotypes, source=path,
                          transform=str(transform) if transform else None, obs=obs, var=var)


def _h5_annotations(f, group: str, path: str) -> dict:
    import h5py

    out: dict = {}
    g = f.get(group)
    if not isinstance(g, h5py.Group):
        return out
    for k, ds in g.items():
        if isinstance(ds, h5py.Dataset):
            if ds.dtype.kind in "biuf":
                out[k] = np.asarray(ds[()])
            else:
                out[k] = _h5_strings(ds, path, f"{group}/{k}")
    return out


#: top-level datasets with a meaning of their own (not per-sample annotations)
_H5_RESERVED = frozenset({"data", "samples", "genes", "labels", "biotypes"})


def _h5_sample_datasets(f, n_samples: int, path: str) -> dict:
    """Other top-level 1-D datasets with one value per sample (e.g. survival time and
    event datasets next to ``data``), as ``obs`` annotations: numbers as numbers."""
    import h5py

    out: dict = {}
    for k, ds in f.items():
        if k in _H5_RESERVED or not isinstance(ds, h5py.Dataset):
            continue
        shape = tuple(ds.shape)
        if len(shape) == 2 and 1 in shape:
            shape = (shape[0] * shape[1],)
        if shape != (n_samples,):
            continue
        out[k] = np.asarray(ds[()]).reshape(-1) if ds.dtype.kind in "biuf" else _h5_strings(ds, path, k)
    return out


def _write_h5(tmp: str, data: ExpressionData) -> None:
    import h5py

    sdt = h5py.string_dtype("utf-8")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("data", data=data.X)
        f.create_dataset("samples", data=data.samples.astype(object), dtype=sdt)
        f.create_dataset("genes", data=data.genes.astype(object), dtype=sdt)
        if data.labels is not None:
            f.create_dataset("labels", data=data.labels.astype(object), dtype=sdt)
        if data.biotypes is not None:
            f.create_dataset("biotypes", data=data.biotypes.astype(object), dtype=sdt)
        f.attrs["format"] = "factembed-expression-h5"
        f.attrs["orientation"] = "samples x genes"
        if data.transform:
            f.attrs["transform"] = data.transform
        for group, ann in (("obs", data.obs), ("var", data.var)):
            if not ann:
                continue
            g = f.create_group(group)
            for k, v in ann.items():
                if v.dtype.kind in "biuf":
                    g.create_dataset(k, data=v)
                else:
                    g.create_dataset(k, data=_to_str_array(v).astype(object), dtype=sdt)
