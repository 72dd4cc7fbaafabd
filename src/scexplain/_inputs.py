"""Shared input handling for every ``tl`` function: validate, pick the matrix, groups, background and targets.

Everything here raises :class:`ValueError`/:class:`TypeError` with the problem and the fix, and never modifies the
AnnData.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

__all__ = [
    "Targets",
    "check_adata",
    "check_finite",
    "check_seed",
    "column_map",
    "dense_rows",
    "get_groups",
    "get_matrix",
    "group_means",
    "group_sums",
    "resolve_output_names",
    "resolve_targets",
    "scatter_columns",
    "select_background",
    "stratified_indices",
]


def check_adata(adata: AnnData) -> None:
    """Raise if ``adata`` is not a non-empty AnnData."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"Expected an AnnData as first argument, got {type(adata).__name__}.")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"The AnnData is empty ({adata.n_obs} cells × {adata.n_vars} genes); nothing to explain.")


def get_matrix(adata: AnnData, *, layer: str | None = None, use_raw: bool = False):
    """Return ``(X, var_names)``: the matrix to explain (dense, sparse or dask) and its gene names.

    ``layer`` picks ``adata.layers[layer]``; ``use_raw`` picks ``adata.raw.X``; neither picks ``adata.X``.
    """
    if layer is not None and use_raw:
        raise ValueError("Pass either `layer` or `use_raw=True`, not both.")
    if use_raw:
        if adata.raw is None:
            raise ValueError("`use_raw=True` but `adata.raw` is None; pass `layer=` or set `use_raw=False`.")
        return adata.raw.X, adata.raw.var_names
    if layer is not None:
        if layer not in adata.layers:
            raise ValueError(f"Layer {layer!r} not found; available layers: {sorted(adata.layers)}.")
        return adata.layers[layer], adata.var_names
    if adata.X is None:
        raise ValueError("`adata.X` is None; pass `layer=` naming the matrix to explain.")
    return adata.X, adata.var_names


def check_finite(X, what: str = "input matrix") -> None:
    """Raise if ``X`` (dense, sparse, or a dask array of dense or sparse chunks) holds NaN or infinite values."""
    if hasattr(X, "dask"):  # one reduction over the chunks, whatever their type
        counts = X.map_blocks(lambda b: np.full((1,) * b.ndim, _count_nonfinite(b), dtype=np.int64),
                              dtype=np.int64, chunks=(1,) * X.ndim)
        n_bad = int(counts.sum().compute())
    else:
        n_bad = _count_nonfinite(X)
    if n_bad:
        raise ValueError(
            f"The {what} contains {n_bad} NaN or infinite values; impute or filter them before explaining."
        )


def _count_nonfinite(block) -> int:
    data = block.data if sparse.issparse(block) else np.asarray(block)
    return int(np.size(data) - np.count_nonzero(np.isfinite(data)))


def check_seed(random_state) -> None:
    """Raise unless ``random_state`` is an integer or ``None``."""
    if random_state is not None and (not isinstance(random_state, int | np.integer) or isinstance(random_state, bool)):
        raise TypeError(f"`random_state` must be an integer or None, got {random_state!r}.")


def dense_rows(X, rows: np.ndarray | slice | None = None, dtype=np.float64) -> np.ndarray:
    """Rows of ``X`` (dense, sparse or dask) as a dense C-contiguous array of ``dtype``."""
    sub = X if rows is None else X[rows]
    if hasattr(sub, "compute"):
        sub = sub.compute()
    if sparse.issparse(sub):
        sub = sub.toarray()
    return np.ascontiguousarray(np.asarray(sub), dtype=dtype)


def get_groups(adata: AnnData, groupby: str | None) -> pd.Categorical | None:
    """``adata.obs[groupby]`` as a categorical with its declared categories, or ``None`` if ``groupby`` is None.

    Categories without cells are kept: a category is a class the model may know even when no cell of it is
    explained (e.g. only the B cells of a 10-class model), so output names and targets follow the declared ones.
    Group summaries skip groups without cells (see :func:`group_means`).
    """
    if groupby is None:
        return None
    if not isinstance(groupby, str):
        raise TypeError(f"`groupby` must be the name of an obs column, got {groupby!r}.")
    if groupby not in adata.obs.columns:
        cats = [c for c in adata.obs.columns if not pd.api.types.is_numeric_dtype(adata.obs[c])]
        raise ValueError(f"`groupby={groupby!r}` is not a column of adata.obs; categorical columns: {cats}.")
    col = adata.obs[groupby]
    if col.isna().any():
        raise ValueError(f"adata.obs[{groupby!r}] has {int(col.isna().sum())} missing values; fill or drop them.")
    if isinstance(col.dtype, pd.CategoricalDtype):  # keep the user's categories and their order (models use codes)
        return pd.Categorical(col.astype(str), categories=[str(c) for c in col.cat.categories])
    return pd.Categorical(col.astype(str))


def stratified_indices(groups: pd.Categorical | None, n_obs: int, n: int, random_state: int | None) -> np.ndarray:
    """Draw ``n`` row indices without replacement, proportionally per group (at least one per group), sorted.

    With ``groups=None`` the draw is uniform. All rows are returned when ``n >= n_obs``.
    """
    if not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"`n_background` must be a positive integer, got {n!r}.")
    if n >= n_obs:
        return np.arange(n_obs)
    rng = np.random.default_rng(random_state)
    if groups is None:
        return np.sort(rng.choice(n_obs, size=n, replace=False))
    codes = np.asarray(groups.codes)
    counts = np.bincount(codes, minlength=len(groups.categories))
    if n < int((counts > 0).sum()):  # fewer background cells than groups: one cell of each of the n largest groups
        quota = np.zeros_like(counts)
        quota[np.argsort(-counts, kind="stable")[:n]] = 1
    else:
        quota = np.floor(counts / n_obs * n).astype(int)
        quota = np.minimum(np.maximum(quota, (counts > 0).astype(int)), counts)
    # hand out what rounding left (or take back the excess) by largest remainder, deterministically
    remainder = counts / n_obs * n - quota
    while quota.sum() < n:
        i = int(np.argmax(np.where(quota < counts, remainder, -np.inf)))
        quota[i] += 1
        remainder[i] -= 1
    while quota.sum() > n:
        i = int(np.argmax(np.where(quota > 1, quota, -1)))
        quota[i] -= 1
    picked = [rng.choice(np.flatnonzero(codes == g), size=q, replace=False) for g, q in enumerate(quota) if q]
    return np.sort(np.concatenate(picked))


def select_background(
    X,
    *,
    background,
    n_background: int,
    groups: pd.Categorical | None,
    random_state: int | None,
    matrix_of: Callable[[AnnData], Any] | None = None,
    dtype=np.float64,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(background_matrix, background_obs_indices)``.

    Parameters
    ----------
    X
        The explained matrix (cells × features, dense, sparse or dask), already aligned to the model's inputs.
    background
        ``None`` (draw ``n_background`` rows of ``X`` stratified by ``groups``), a boolean mask or integer indices
        over the rows of ``X``, an AnnData (turned into a matrix by ``matrix_of``), or a cells × features array.
    n_background, groups, random_state
        How to draw when ``background`` is ``None``.
    matrix_of
        Turns a background AnnData into a matrix aligned like ``X`` (e.g. the adapter's ``input_matrix``).
    dtype
        dtype of the returned matrix.

    Returns
    -------
    The dense background matrix and, when it was taken from ``X``, the row indices (else ``None``).
    """
    n_obs, n_vars = X.shape
    if background is None:
        idx = stratified_indices(groups, n_obs, n_background, random_state)
        return dense_rows(X, idx, dtype), idx
    idx = None
    if isinstance(background, AnnData):
        if matrix_of is None:  # pragma: no cover - programming error
            raise TypeError("A background AnnData needs `matrix_of`.")
        check_adata(background)
        bg = dense_rows(matrix_of(background), None, dtype)
    else:
        arr = background if sparse.issparse(background) else np.asarray(background)
        if arr.ndim == 1 and arr.dtype == bool:
            if arr.shape[0] != n_obs:
                raise ValueError(f"Background mask has length {arr.shape[0]}, expected one entry per cell ({n_obs}).")
            idx = np.flatnonzero(arr)
        elif arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer):
            if arr.size and (arr.min() < 0 or arr.max() >= n_obs):
                raise ValueError(f"Background indices must lie in [0, {n_obs}).")
            idx = np.asarray(arr)
        elif arr.ndim == 2:
            if arr.shape[1] != n_vars:
                raise ValueError(
                    f"Background has {arr.shape[1]} columns but the model input has {n_vars} genes; "
                    "pass background rows over the same genes."
                )
            bg = dense_rows(arr, None, dtype)
        else:
            raise TypeError(
                "`background` must be None, an AnnData, a boolean mask or integer indices over cells, or a "
                f"cells × genes array; got {type(background).__name__} with shape {getattr(arr, 'shape', None)}."
            )
        if idx is not None:
            bg = dense_rows(X, idx, dtype)
    if bg.shape[0] == 0:
        raise ValueError("The background is empty; select at least one cell.")
    if bg.shape[1] != n_vars:
        raise ValueError(f"Background has {bg.shape[1]} genes but the model input has {n_vars}.")
    check_finite(bg, "background")
    return bg, idx


def resolve_output_names(
    output_names: Sequence[str] | None, n_outputs: int, groups: pd.Categorical | None
) -> list[str]:
    """Names of the model's outputs: given, else the groupby categories when their number matches, else 0..C-1."""
    if output_names is not None:
        names = [str(n) for n in output_names]
        if len(names) != n_outputs:
            raise ValueError(f"`output_names` has {len(names)} entries but the model has {n_outputs} outputs.")
        if len(set(names)) != len(names):
            raise ValueError("`output_names` has duplicates; output names must be unique.")
        return names
    if groups is not None and len(groups.categories) == n_outputs:
        return [str(c) for c in groups.categories]
    return [str(i) for i in range(n_outputs)]


@dataclass
class Targets:
    """Which outputs to explain.

    Attributes
    ----------
    mode
        ``"label"``, ``"predicted"``, ``"all"``, ``"list"``, or ``"single"`` (the only output of a single-output
        model, for every cell).
    classes
        Output indices explained for every cell (``"all"``/``"list"``); empty for per-cell modes.
    per_cell
        Output index per cell (``"label"``; ``-1`` = use the prediction), filled for ``"predicted"`` by
        :meth:`with_predictions`.
    """

    mode: str
    classes: np.ndarray
    per_cell: np.ndarray | None = None

    def with_predictions(self, predicted: np.ndarray) -> Targets:
        """Fill per-cell targets that wait for the model's prediction (mode ``"predicted"`` or ``-1`` labels)."""
        predicted = np.asarray(predicted, dtype=np.int64)
        if self.per_cell is None:
            return Targets(self.mode, self.classes, predicted)
        return Targets(self.mode, self.classes, np.where(self.per_cell < 0, predicted, self.per_cell))

    @property
    def per_cell_mode(self) -> bool:
        """Whether each cell is explained toward one own output."""
        return self.mode in ("label", "predicted", "single")


def resolve_targets(
    target,
    *,
    output_names: list[str],
    groups: pd.Categorical | None,
    unlabeled: str | None = None,
    n_obs: int | None = None,
) -> Targets:
    """Turn ``target`` (``"label"``, ``"predicted"``, ``"all"`` or a list of output names) into indices.

    With ``target="label"``, cells whose group is ``unlabeled`` get ``-1`` (explained toward their prediction).
    A model with a single output (a regressor, one logit) has nothing to choose: ``"label"`` and ``"predicted"``
    explain that output for every cell (mode ``"single"``; needs ``n_obs``), with or without ``groupby``.
    """
    n_outputs = len(output_names)
    if isinstance(target, str) and target in ("label", "predicted", "all"):
        if n_outputs == 1 and target != "all":
            if n_obs is None:  # pragma: no cover - programming error
                raise TypeError("A single-output model needs `n_obs` to resolve per-cell targets.")
            return Targets("single", np.zeros(0, dtype=np.int64), np.zeros(n_obs, dtype=np.int64))
        if target == "all":
            return Targets("all", np.arange(n_outputs))
        if target == "predicted":
            return Targets("predicted", np.zeros(0, dtype=np.int64))
        if groups is None:
            raise ValueError("`target='label'` needs `groupby=` naming the obs column with each cell's class.")
        lookup = {name: i for i, name in enumerate(output_names)}
        if unlabeled is not None:
            lookup[str(unlabeled)] = -1
        used = set(np.asarray(groups.categories)[np.unique(np.asarray(groups.codes))])
        unknown = [c for c in groups.categories if c not in lookup and c in used]
        if unknown:
            raise ValueError(
                f"Groups {unknown} of `groupby` are not among the model outputs {output_names}; pass "
                "`output_names=` in the model's output order, or use target='predicted'."
            )
        # categories without cells map to nothing (-2 is never looked up)
        per_cell = np.asarray([lookup.get(c, -2) for c in groups.categories], dtype=np.int64)[np.asarray(groups.codes)]
        return Targets("label", np.zeros(0, dtype=np.int64), per_cell)
    names = [target] if isinstance(target, str | int | np.integer) else list(target)
    if not names:
        raise ValueError("`target` is an empty list; name at least one output.")
    lookup = {name: i for i, name in enumerate(output_names)}
    idx = []
    for t in names:
        if str(t) in lookup:
            idx.append(lookup[str(t)])
        else:
            raise ValueError(
                f"Target {t!r} is not a model output; outputs are {output_names} "
                "(or use 'label', 'predicted', 'all')."
            )
    return Targets("list", np.asarray(idx, dtype=np.int64))


def group_means(values: np.ndarray, groups: pd.Categorical, feature_names: Sequence[str]) -> pd.DataFrame:
    """``features × groups`` mean of ``values`` (cells × features) over each group's cells.

    Only groups with cells get a column (in category order): an empty group has no mean.
    """
    sums, counts = group_sums(values, groups)
    keep = counts > 0
    means = sums[keep] / counts[keep, None]
    names = [str(c) for c, k in zip(groups.categories, keep, strict=True) if k]
    return pd.DataFrame(means.T, index=pd.Index(feature_names).astype(str), columns=names)


def group_sums(values: np.ndarray, groups: pd.Categorical) -> tuple[np.ndarray, np.ndarray]:
    """Per-group sums (``n_categories × features``, float64) of ``values`` over cells, and the cells per group."""
    codes = np.asarray(groups.codes)
    n_groups = len(groups.categories)
    onehot = np.zeros((n_groups, len(codes)))
    onehot[codes, np.arange(len(codes))] = 1.0
    return onehot @ np.asarray(values, dtype=np.float64), onehot.sum(axis=1)


def column_map(names: pd.Index, var_names: pd.Index) -> np.ndarray | None:
    """Positions of the model's features in ``var_names`` (``None`` when identical; ``-1`` for absent ones)."""
    if len(names) == len(var_names) and (np.asarray(names) == np.asarray(var_names)).all():
        return None
    return pd.Index(var_names).get_indexer(names)


def scatter_columns(values: np.ndarray, pos: np.ndarray | None, n_columns: int) -> np.ndarray:
    """Put model-feature columns (last axis) at their positions ``pos`` among ``n_columns``; the others get 0."""
    if pos is None:
        return values
    out = np.zeros((*values.shape[:-1], n_columns), dtype=values.dtype)
    keep = pos >= 0
    out[..., pos[keep]] = values[..., keep]
    return out
