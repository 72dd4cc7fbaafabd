"""Exact TreeSHAP on the GPU (CuPy), over the same :class:`~scexplain.models._trees.TreePaths` as the CPU engine.

The algorithm is written once against an array module ``xp``: CuPy on a GPU, NumPy to validate the very same code
on a machine without one (the tests do). Paths are grouped by their number of unique features d (no padding), and
processed in tiles of rows × paths sized to a memory budget:

- path-dependent: the factors F_j(t_q) = z_j + (o_j − z_j) t_q for all (row, path, feature, quadrature node),
  products over the other features by exclusive prefix/suffix cumulative products, summed with the Gauss–Legendre
  weights (⌈d/2⌉ nodes, exact); interactions exclude a second feature the same way;
- interventional: per (row, path, background row) the sets A (only x satisfies) and B (only r satisfies), the
  Shapley weights W(|A| − 1, n) / −W(|A|, n) looked up in a table, averaged over the background; the pairs'
  terms are also split by sign (presence: the row's value is the larger), kept per pair, or summed per (group of
  rows, background row);
- contributions are scattered into rows × outputs × features with one ``bincount`` per tile (float64).

See :mod:`scexplain.engines.treeshap_cpu` for the formulas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType

import numpy as np

from .treeshap_cpu import check_depth, gauss_legendre_table, shapley_weight_table

__all__ = [
    "cuda_available", "expected_value", "get_cupy", "group_sums", "interaction_values", "pair_values", "predict",
    "shap_values", "split_values",
]

#: Default number of float64 elements of the largest intermediate array of one tile.
DEFAULT_BUDGET = 1 << 24

Progress = Callable[[Iterable], Iterable] | None


def get_cupy() -> ModuleType:
    """CuPy, or an :class:`ImportError` naming the ``gpu`` extra."""
    from .._optional import import_optional

    return import_optional("cupy", purpose="the GPU TreeSHAP engine")


def cuda_available() -> bool:
    """Whether CuPy is installed and sees at least one CUDA device."""
    try:
        import cupy
    except ImportError:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CUDARuntimeError without a driver
        return False


def _xp(xp: ModuleType | None) -> ModuleType:
    return get_cupy() if xp is None else xp


def _host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


class _Bucket:
    """The paths with ``d`` unique features, as dense ``P × d`` arrays on the device."""

    def __init__(self, xp, paths, idx: np.ndarray, d: int):
        cols = paths.path_ptr[idx][:, None] + np.arange(d)[None, :]
        self.xp = xp
        self.d = d
        self.idx = idx
        self.feature = xp.asarray(paths.feature[cols])
        self.lower = xp.asarray(paths.lower[cols])
        self.upper = xp.asarray(paths.upper[cols])
        self.nan_ok = xp.asarray(paths.nan_ok[cols])
        self.zero = xp.asarray(paths.zero_fraction[cols])
        self.value = xp.asarray(paths.leaf_value[idx])
        self.value_host = paths.leaf_value[idx]

    def take(self, sel):
        """Sub-bucket of the paths ``sel`` (host indices into this bucket)."""
        sub = object.__new__(_Bucket)
        sub.xp, sub.d, sub.idx = self.xp, self.d, self.idx[sel]
        on_device = self.xp.asarray(sel)
        for name in ("feature", "lower", "upper", "nan_ok", "zero", "value"):
            setattr(sub, name, getattr(self, name)[on_device])
        sub.value_host = self.value_host[sel]
        return sub


def _buckets(xp, paths) -> list[_Bucket]:
    lengths = paths.path_length
    return [_Bucket(xp, paths, np.flatnonzero(lengths == d), int(d)) for d in np.unique(lengths[lengths > 0])]


def _satisfied(xp, X, b: _Bucket, p0: int, p1: int):
    """``rows × paths × d`` booleans: row x lies in each feature's interval (NaN: follows the path)."""
    f = b.feature[p0:p1]
    xg = X[:, f.ravel()].reshape(X.shape[0], p1 - p0, b.d)
    inside = (xg > b.lower[p0:p1]) & (xg <= b.upper[p0:p1])
    return inside | (xp.isnan(xg) & b.nan_ok[p0:p1])


def _exclusive_products(xp, F, axis: int):
    """``Π_{k≠j} F[..., k, ...]`` along ``axis`` by exclusive prefix and suffix products (no division)."""
    F = xp.moveaxis(F, axis, -1)
    ones = xp.ones_like(F[..., :1])
    pre = xp.concatenate([ones, xp.cumprod(F, axis=-1)[..., :-1]], axis=-1)
    suf = xp.flip(xp.cumprod(xp.flip(F, axis=-1), axis=-1), axis=-1)
    suf = xp.concatenate([suf[..., 1:], ones], axis=-1)
    return xp.moveaxis(pre * suf, -1, axis)


def _quadrature(xp, d: int):
    nq = (d + 1) // 2
    gx, gw = gauss_legendre_table()
    q0 = nq * (nq - 1) // 2
    return xp.asarray(gx[q0 : q0 + nq]), xp.asarray(gw[q0 : q0 + nq])


def _pd_weights(xp, o, z, d: int):
    """Path-dependent weights ``rows × paths × d``."""
    tq, wq = _quadrature(xp, d)
    dz = o - z
    F = z[..., None] + dz[..., None] * tq  # rows × paths × d × Q
    return dz * (_exclusive_products(xp, F, axis=2) * wq).sum(axis=-1)


def _above(xp, X, b: _Bucket, p0: int, p1: int):
    """``rows × paths × d`` booleans: the value lies above the feature's interval (NaN never does)."""
    f = b.feature[p0:p1]
    xg = X[:, f.ravel()].reshape(X.shape[0], p1 - p0, b.d)
    return xg > b.upper[p0:p1]


def _iv_pair_weights(xp, o_x, o_b, wtab, a_x=None, a_b=None):
    """Interventional weights of every (row, path, background row, feature): ``rows × paths × B × d``.

    With the above-bits ``a_x`` (rows × paths × d) and ``a_b`` (paths × B × d), also the presence part: the terms
    where the row's value is the larger one (b below an interval x lies in, or x above an interval b lies in).
    """
    ox = o_x[:, :, None, :]
    a = ox & ~o_b[None]  # only x satisfies
    fails_x = ~o_x  # = B wherever the pair is compatible
    compat = (ox | o_b[None]).all(axis=-1)
    s = a.sum(axis=-1)
    nbx = fails_x.sum(axis=-1)[:, :, None]
    n = s + nbx
    wa = wtab[xp.maximum(s - 1, 0), n] * (s > 0) * compat
    wb = wtab[s, n] * compat
    w = a * wa[..., None] - fails_x[:, :, None, :] * wb[..., None]
    if a_x is None:
        return w, None
    pw = (a & ~a_b[None]) * wa[..., None] - (fails_x & a_x)[:, :, None, :] * wb[..., None]
    return w, pw


def _scatter(xp, out_flat, contrib, outputs_cols: int, features, n_features: int, extra: int = 1):
    """Add ``contrib`` (rows × paths × d [× d] × C) into the flat (rows × C × F [× F]) output with bincount."""
    R = contrib.shape[0]
    C = outputs_cols
    r = xp.arange(R).reshape((R,) + (1,) * (contrib.ndim - 1))
    c = xp.arange(C).reshape((1,) * (contrib.ndim - 1) + (C,))
    if extra == 1:
        f = features[None, :, :, None]
        index = (r * C + c) * n_features + f
    else:
        fi = features[None, :, :, None, None]
        fj = features[None, :, None, :, None]
        index = ((r * C + c) * n_features + fi) * n_features + fj
    size = R * C * n_features**extra
    out_flat += xp.bincount(index.ravel(), weights=contrib.ravel(), minlength=size)


def _row_groups(outputs: np.ndarray, b: _Bucket):
    """``(rows, paths)`` pairs: with one output per row, each class's rows with the paths that feed it."""
    if outputs.shape[1] != 1:
        yield np.arange(outputs.shape[0]), np.arange(len(b.idx))
        return
    for c in np.unique(outputs[:, 0]):
        paths = np.flatnonzero(b.value_host[:, c] != 0)
        if paths.size:
            yield np.flatnonzero(outputs[:, 0] == c), paths


def _prepare(xp, paths, X, outputs):
    check_depth(paths)
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != paths.n_features:
        raise ValueError(f"X has shape {X.shape}; the model expects {paths.n_features} features per row.")
    outputs = np.asarray(outputs, dtype=np.int64).reshape(X.shape[0], -1)
    if outputs.size and (outputs.min() < 0 or outputs.max() >= paths.n_outputs):
        raise ValueError(f"`outputs` must index the model's {paths.n_outputs} outputs.")
    return X, outputs


def _run(xp, paths, X, outputs, *, background, budget, progress, interactions: bool = False, split: bool = False,
         pairs: bool = False, groups=None, n_groups: int = 0):
    """The engine: values ``n × C × F`` (or interactions), with ``split`` also their presence part.

    ``pairs``: per-pair values ``n × B × F`` instead; ``groups``: per-(group, background row) sums ``K × B × F``
    (both with one output per row).
    """
    X, outputs = _prepare(xp, paths, X, outputs)
    n, C = outputs.shape
    F = paths.n_features
    extra = 2 if interactions else 1
    bg = None if background is None else xp.asarray(np.ascontiguousarray(background, dtype=np.float64))
    if bg is not None and (bg.ndim != 2 or bg.shape[1] != F or bg.shape[0] == 0):
        raise ValueError(f"background has shape {tuple(bg.shape)}; expected B × {F} with B ≥ 1.")
    n_bg = 0 if bg is None else bg.shape[0]
    per_pair_mode = pairs or groups is not None
    if per_pair_mode and C != 1:
        raise ValueError("Per-pair values and group sums explain one output per row: pass `outputs` of shape (n,).")
    if pairs:
        result = np.zeros((n, n_bg, F))
    elif groups is not None:
        result = np.zeros((n_groups, n_bg, F))
    else:
        result = np.zeros((n, C) + (F,) * extra)
    presence = np.zeros_like(result) if split else None
    if n == 0 or paths.n_paths == 0:
        return (result, presence) if split else result
    wtab = xp.asarray(shapley_weight_table())
    work = []
    for b in _buckets(xp, paths):
        for rows, sel in _row_groups(outputs, b):
            work.append((b.take(sel), rows))
    for b, rows in progress(work) if progress is not None else work:
        d = b.d
        per_pair = d * ((d + 1) // 2 + 1) * (d if interactions else 1) + d * C * extra
        if bg is not None:
            per_pair = max(per_pair, bg.shape[0] * (d + 2) * (3 if split or per_pair_mode else 1))
        n_paths = len(b.idx)
        r_tile = int(max(1, min(len(rows), budget // max(per_pair * min(n_paths, 64), 1))))
        p_tile = int(max(1, min(n_paths, budget // max(per_pair * r_tile, 1))))
        for r0 in range(0, len(rows), r_tile):
            r_idx = rows[r0 : r0 + r_tile]
            Xr = xp.asarray(X[r_idx])
            if per_pair_mode:
                lead = len(r_idx) * n_bg if pairs else n_groups * n_bg
                out_flat = xp.zeros(lead * F)
                row_of = xp.arange(len(r_idx)) if pairs else xp.asarray(np.asarray(groups)[r_idx])
            else:
                out_flat = xp.zeros(len(r_idx) * C * F**extra)
            pres_flat = xp.zeros_like(out_flat) if split else None
            out_cols = xp.asarray(outputs[r_idx])
            for p0 in range(0, n_paths, p_tile):
                p1 = min(n_paths, p0 + p_tile)
                o = _satisfied(xp, Xr, b, p0, p1)
                z = b.zero[p0:p1]
                v = b.value[p0:p1][:, out_cols].transpose(1, 0, 2)  # rows × paths × C
                if interactions:
                    contrib = _pd_interactions(xp, o.astype(np.float64), z, d)[..., None] * v[:, :, None, None, :]
                    _scatter(xp, out_flat, contrib, C, b.feature[p0:p1], F, extra)
                    continue
                if bg is None:
                    w = _pd_weights(xp, o.astype(np.float64), z, d)
                    _scatter(xp, out_flat, w[..., None] * v[:, :, None, :], C, b.feature[p0:p1], F)
                    continue
                o_b = _satisfied(xp, bg, b, p0, p1).transpose(1, 0, 2)
                above = (_above(xp, Xr, b, p0, p1), _above(xp, bg, b, p0, p1).transpose(1, 0, 2)) if split else ()
                w, pw = _iv_pair_weights(xp, o, o_b, wtab, *above)
                if per_pair_mode:  # rows × paths × B × d, scattered by (row or group, background row, feature)
                    vv = v[:, :, 0][:, :, None, None]
                    _scatter_pairs(xp, out_flat, w * vv, row_of, n_bg, b.feature[p0:p1], F)
                    if split:
                        _scatter_pairs(xp, pres_flat, pw * vv, row_of, n_bg, b.feature[p0:p1], F)
                else:
                    _scatter(xp, out_flat, w.mean(axis=2)[..., None] * v[:, :, None, :], C, b.feature[p0:p1], F)
                    if split:
                        _scatter(xp, pres_flat, pw.mean(axis=2)[..., None] * v[:, :, None, :], C,
                                 b.feature[p0:p1], F)
            if groups is not None:
                result += _host(out_flat).reshape(result.shape)
                if split:
                    presence += _host(pres_flat).reshape(result.shape)
            else:
                shape = (len(r_idx), *result.shape[1:])
                result[r_idx] += _host(out_flat).reshape(shape)
                if split:
                    presence[r_idx] += _host(pres_flat).reshape(shape)
    return (result, presence) if split else result


def _scatter_pairs(xp, out_flat, contrib, row_of, n_bg: int, features, n_features: int):
    """Add ``contrib`` (rows × paths × B × d) into the flat (row_of[row] × B × F) output with bincount."""
    R, _, B, _ = contrib.shape
    r = row_of.reshape(R, 1, 1, 1)
    b = xp.arange(B).reshape(1, 1, B, 1)
    f = features[None, :, None, :]
    index = (r * n_bg + b) * n_features + f
    out_flat += xp.bincount(index.ravel(), weights=contrib.ravel(), minlength=out_flat.size)


def _pd_interactions(xp, o, z, d: int):
    """Interaction weights ``rows × paths × d × d`` (without the leaf value)."""
    tq, wq = _quadrature(xp, d)
    dz = o - z
    F = z[..., None] + dz[..., None] * tq  # rows × paths × d × Q
    integrals = []
    for i in range(d):
        G = F.copy()
        G[:, :, i, :] = 1.0
        integrals.append((_exclusive_products(xp, G, axis=2) * wq).sum(axis=-1))  # [r, p, j] = ∫ Π_{k∉{i,j}}
    integral = xp.stack(integrals, axis=2)  # rows × paths × i × j
    pair = 0.5 * dz[:, :, :, None] * dz[:, :, None, :] * integral
    eye = xp.eye(d, dtype=bool)
    pair = xp.where(eye, 0.0, pair)
    phi = dz * xp.diagonal(integral, axis1=2, axis2=3)
    return pair + eye * (phi - pair.sum(axis=3))[..., None]


def shap_values(
    paths,
    X: np.ndarray,
    outputs: np.ndarray,
    *,
    background: np.ndarray | None = None,
    xp: ModuleType | None = None,
    memory_budget: int = DEFAULT_BUDGET,
    progress: Progress = None,
) -> np.ndarray:
    """Exact SHAP values (``n × C × n_features``, float64 on the host); arguments as in the CPU engine.

    ``xp`` is the array module (default CuPy; NumPy runs the same algorithm on the CPU). ``memory_budget`` bounds
    the elements of the largest intermediate array of a tile.
    """
    return _run(_xp(xp), paths, X, outputs, background=background, budget=memory_budget, progress=progress,
                interactions=False)


def split_values(
    paths,
    X: np.ndarray,
    outputs: np.ndarray,
    *,
    background: np.ndarray,
    xp: ModuleType | None = None,
    memory_budget: int = DEFAULT_BUDGET,
    progress: Progress = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Interventional SHAP values and their presence part: ``(values, presence)``, ``n × C × F`` each.

    See the CPU engine's :func:`~scexplain.engines.treeshap_cpu.split_values`.
    """
    if background is None:
        raise ValueError("The presence split of the engine is interventional: pass `background`.")
    return _run(_xp(xp), paths, X, outputs, background=background, budget=memory_budget, progress=progress,
                split=True)


def pair_values(paths, X: np.ndarray, outputs: np.ndarray, *, background: np.ndarray,
                xp: ModuleType | None = None, memory_budget: int = DEFAULT_BUDGET) -> np.ndarray:
    """Per-pair interventional SHAP values ``n × B × F`` toward one output per row (``outputs``: ``n``)."""
    return _run(_xp(xp), paths, X, np.asarray(outputs).reshape(-1, 1), background=background, budget=memory_budget,
                progress=None, pairs=True)


def group_sums(paths, X: np.ndarray, outputs: np.ndarray, groups: np.ndarray, n_groups: int, *,
               background: np.ndarray, xp: ModuleType | None = None, memory_budget: int = DEFAULT_BUDGET
               ) -> np.ndarray:
    """Per-(group, background row) sums of the pairs' SHAP values, ``K × B × F`` (``outputs``, ``groups``: ``n``)."""
    return _run(_xp(xp), paths, X, np.asarray(outputs).reshape(-1, 1), background=background, budget=memory_budget,
                progress=None, groups=np.asarray(groups, dtype=np.int64), n_groups=int(n_groups))


def interaction_values(
    paths,
    X: np.ndarray,
    outputs: np.ndarray,
    *,
    xp: ModuleType | None = None,
    memory_budget: int = DEFAULT_BUDGET,
    progress: Progress = None,
) -> np.ndarray:
    """Exact path-dependent SHAP interaction values (``n × C × F × F``, float64 on the host)."""
    return _run(_xp(xp), paths, X, outputs, background=None, budget=memory_budget, progress=progress,
                interactions=True)


def predict(paths, X: np.ndarray, *, xp: ModuleType | None = None) -> np.ndarray:
    """Raw model output (rows × outputs, float64 on the host), all trees walked at once on the device."""
    xp = _xp(xp)
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != paths.n_features:
        raise ValueError(f"X has shape {X.shape}; the model expects {paths.n_features} features per row.")
    out = np.zeros((X.shape[0], paths.n_outputs)) + paths.base_offset
    if paths.n_trees == 0 or X.shape[0] == 0:
        return out
    left, right = xp.asarray(paths.node_left), xp.asarray(paths.node_right)
    feat, thr = xp.asarray(paths.node_feature), xp.asarray(paths.node_threshold)
    nan_left, node_path = xp.asarray(paths.node_nan_left), xp.asarray(paths.node_path)
    value = xp.asarray(paths.leaf_value)
    Xd = xp.asarray(X)
    rows = xp.arange(X.shape[0])[:, None]
    node = xp.broadcast_to(xp.asarray(paths.tree_root)[None, :], (X.shape[0], paths.n_trees)).copy()
    while True:
        inner = left[node] >= 0
        if not bool(inner.any()):
            break
        x = Xd[rows, feat[node]]
        go_left = xp.where(xp.isnan(x), nan_left[node], x <= thr[node])
        node = xp.where(inner, xp.where(go_left, left[node], right[node]), node)
    return out + _host(value[node_path[node]].sum(axis=1))


def expected_value(paths, background: np.ndarray | None = None, *, xp: ModuleType | None = None) -> np.ndarray:
    """Path-dependent expected value per output, or the mean model output over ``background``."""
    if background is None:
        return paths.expected_value()
    return predict(paths, background, xp=xp).mean(axis=0)
