"""The one place that writes results into an AnnData.

Every ``tl`` function computes first and builds a :class:`Result`; :func:`write` checks every shape, then writes all
keys at once, so bad input never leaves a half-written AnnData. What is written round-trips through
``write_h5ad``/``read_h5ad``: lists become arrays, mappings stay nested dicts, rankings are structured arrays laid out
like :func:`scanpy.tl.rank_genes_groups` so that ``sc.get.rank_genes_groups_df(adata, group, key=key)`` reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ._keys import Key

__all__ = ["Result", "h5ad_safe", "is_result", "ranking_recarrays", "write"]


@dataclass
class Result:
    """Everything a ``tl`` function stores, computed before anything is written.

    Attributes
    ----------
    method
        Method name, e.g. ``"deep_shap"``; stored as ``uns[key]["params"]["method"]``.
    key
        Storage key (see :class:`scexplain._keys.Key`).
    params
        Parameters of the run (JSON-like values only; no timestamps).
    layer
        ``n_obs × n_vars`` attributions toward each cell's own target, stored as float32 in ``layers[key]``.
    obsm
        ``n_obs × k`` array or DataFrame, stored in ``obsm[key]``.
    varm
        ``n_vars × groups`` DataFrame (mean attribution of each group's cells toward their group), ``varm[key]``.
    varm_extra
        Further ``varm`` entries by full key (e.g. ``Key.latent(key)``), each with ``n_vars`` rows.
    layers_extra
        Further ``layers`` entries by full key (e.g. one per explained output when asked for), cells × genes.
    ranking
        ``features × groups`` scores; each column is ranked descending into ``uns[key]["names"/"scores"]``.
        Features are genes, or embedding dimensions for tree models on ``use_rep``.
    uns
        Further ``uns[key]`` entries: ``expected_value``, ``additivity``, ...
    """

    method: str
    key: str
    params: dict[str, Any]
    layer: np.ndarray | None = None
    obsm: np.ndarray | pd.DataFrame | None = None
    varm: pd.DataFrame | None = None
    varm_extra: dict[str, pd.DataFrame | np.ndarray] = field(default_factory=dict)
    layers_extra: dict[str, np.ndarray] = field(default_factory=dict)
    ranking: pd.DataFrame | None = None
    uns: dict[str, Any] = field(default_factory=dict)


def h5ad_safe(value: Any) -> Any:
    """Convert ``value`` to what ``write_h5ad`` stores and reads back equal.

    Lists and tuples become numpy arrays (strings as object arrays), numpy scalars become Python scalars,
    mappings are converted recursively with string keys. ``None``, ``str``, ``bool``, ``int``, ``float`` pass.
    """
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): h5ad_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if len(value) and all(isinstance(v, str) for v in value):
            return np.asarray(value, dtype=object)
        return np.asarray(value)
    if isinstance(value, np.ndarray | pd.DataFrame):
        return value
    raise TypeError(f"Cannot store {type(value).__name__} in an h5ad file: {value!r}")


def ranking_recarrays(scores: pd.DataFrame) -> dict[str, np.ndarray]:
    """Rank each column of a ``features × groups`` score table, highest first.

    Returns ``{"names": ..., "scores": ..., "logfoldchanges": ..., "pvals": ..., "pvals_adj": ...}``, each a
    structured array with one field per group, as :func:`scanpy.tl.rank_genes_groups` stores them. Attributions
    have no fold changes or p-values: those three fields are NaN, present only because scanpy's readers need them.
    """
    groups = [str(g) for g in scores.columns]
    names_cols, score_cols = [], []
    for col in scores.columns:
        s = scores[col].to_numpy(dtype=np.float64)
        order = np.lexsort((np.arange(len(s)), -s))  # stable: ties keep feature order
        names_cols.append(np.asarray(scores.index.astype(str))[order].astype(object))
        score_cols.append(s[order].astype(np.float32))
    out = {
        Key.uns.names: np.rec.fromarrays(names_cols, names=groups),
        Key.uns.scores: np.rec.fromarrays(score_cols, names=groups),
    }
    nan = [np.full(len(scores), np.nan, dtype=np.float32) for _ in groups]
    for name in Key.uns.scanpy_placeholders:
        out[name] = np.rec.fromarrays(nan, names=groups)
    return out


def _version() -> str:
    from . import __version__

    return __version__


def is_result(value: Any) -> bool:
    """Whether an ``adata.uns`` entry is a scexplain result (its params record the scexplain version)."""
    if not isinstance(value, Mapping):
        return False
    params = value.get(Key.uns.params)
    return isinstance(params, Mapping) and "method" in params and "scexplain" in (params.get("versions") or {})


def _check_rows(what: str, n: int, expected: int, axis: str) -> None:
    if n != expected:
        raise ValueError(f"{what} has {n} rows but the AnnData has {expected} {axis}.")


def _as_varm(what: str, value: pd.DataFrame | np.ndarray, adata: AnnData) -> pd.DataFrame | np.ndarray:
    _check_rows(what, value.shape[0], adata.n_vars, "genes")
    if isinstance(value, pd.DataFrame):
        value = value.copy()
        value.index = adata.var_names
        value.columns = value.columns.astype(str)
    return value


def write(adata: AnnData, result: Result, *, copy: bool = False) -> AnnData | None:
    """Write ``result`` into ``adata`` (or a copy), all keys at once after every check passed.

    Parameters
    ----------
    adata
        The AnnData the result was computed on.
    result
        What to store.
    copy
        Write into a copy and return it instead of modifying ``adata``.

    Returns
    -------
    The modified copy if ``copy=True``, else ``None``.
    """
    key = result.key
    obsm = None
    layers = {} if result.layer is None else {key: result.layer}
    layers.update(result.layers_extra)
    for k, v in layers.items():
        layers[k] = np.asarray(v, dtype=np.float32)
        if layers[k].shape != adata.shape:
            raise ValueError(f"layers[{k!r}] has shape {layers[k].shape}, expected {adata.shape} (cells × genes).")
    if result.obsm is not None:
        obsm = result.obsm
        _check_rows("obsm result", obsm.shape[0], adata.n_obs, "cells")
        if isinstance(obsm, pd.DataFrame):
            obsm = obsm.copy()
            obsm.index = adata.obs_names
            obsm.columns = obsm.columns.astype(str)
        else:
            obsm = np.asarray(obsm, dtype=np.float32)
    varm = {}
    if result.varm is not None:
        varm[key] = _as_varm("varm result", result.varm, adata)
    for k, v in result.varm_extra.items():
        varm[k] = _as_varm(f"varm[{k!r}]", v, adata)

    params = {"method": result.method, "reference": "rest", **result.params}
    params["versions"] = {"scexplain": _version(), **(params.get("versions") or {})}
    uns: dict[str, Any] = {Key.uns.params: h5ad_safe(params)}
    uns.update({k: h5ad_safe(v) for k, v in result.uns.items()})
    if result.ranking is not None:
        uns.update(ranking_recarrays(result.ranking))

    if copy:
        adata = adata.copy()
    for k, v in layers.items():
        adata.layers[k] = v
    if obsm is not None:
        adata.obsm[key] = obsm
    for k, v in varm.items():
        adata.varm[k] = v
    adata.uns[key] = uns
    return adata if copy else None
