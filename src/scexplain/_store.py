"""The one place that writes results into an AnnData.

Every ``tl`` function computes first and builds a :class:`Result`; :func:`write` checks every shape, then writes all
keys at once, so bad input never leaves a half-written AnnData. What is written round-trips through
``write_h5ad``/``read_h5ad``: lists become arrays, mappings stay nested dicts, rankings are structured arrays laid out
like :func:`scanpy.tl.rank_genes_groups` so that ``sc.get.rank_genes_groups_df(adata, group, key=key)`` reads them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ._keys import LAYOUT_VERSION, Key, check_key

__all__ = [
    "Result", "anndata_013_rules", "check_storable", "h5ad_safe", "is_result", "ranking_recarrays",
    "storage_problems", "versions", "write",
]


@dataclass
class Result:
    """Everything a ``tl`` function stores, computed before anything is written.

    Names (groups, outputs, features) are given as lists and stored as arrays in ``uns[key]``; tables over them
    are plain arrays (storage layout 2, see :class:`scexplain._keys.Key`).

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
    presence
        The part of ``layer`` (or, for embedding features only, of ``obsm``) from features above the reference,
        stored in ``layers``/``obsm[Key.presence_layer(key)]``; absence = attributions − presence.
    obsm
        ``n_obs × k`` array (float32) or a DataFrame with fixed column names, stored in ``obsm[key]``.
    features
        Names of the explained features when they are embedding dimensions (stored as
        ``uns[key]["feature_names"]``); ``None`` when the features are the AnnData's genes.
    groups
        Names of the groups, the columns of every group table (``uns[key]["groups"]``).
    group_tables
        ``features × groups`` tables by name (:class:`~scexplain._keys.Key.table`): ``varm[Key.group_table(key,
        name)]`` for genes, ``uns[key]["group_tables"][name]`` for embedding features.
    ranking
        ``(scores, columns)``: a ``features × columns`` array ranked column by column (highest first) into
        ``uns[key]["names"/"scores"]``; ``columns`` name the ranked groups (or latent dimensions).
    output_layers
        Further cells × genes attributions by output position (``keep_all``): ``layers[Key.output_layer(key, j)]``,
        the positions listed in ``uns[key]["kept_outputs"]``.
    varm_extra, obsm_extra
        Further arrays by full key (e.g. ``Key.latent(key)``), with ``n_vars`` / ``n_obs`` rows.
    uns
        Further ``uns[key]`` entries: ``expected_value``, ``additivity``, ``output_names``, ...
    """

    method: str
    key: str
    params: dict[str, Any]
    layer: np.ndarray | None = None
    presence: np.ndarray | None = None
    obsm: np.ndarray | pd.DataFrame | None = None
    features: Sequence[str] | None = None
    groups: Sequence[str] | None = None
    group_tables: dict[str, np.ndarray] = field(default_factory=dict)
    ranking: tuple[np.ndarray, Sequence[str]] | None = None
    output_layers: dict[int, np.ndarray] = field(default_factory=dict)
    varm_extra: dict[str, np.ndarray] = field(default_factory=dict)
    obsm_extra: dict[str, np.ndarray | pd.DataFrame] = field(default_factory=dict)
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


def ranking_recarrays(scores: np.ndarray, features: Sequence[str], columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Rank each column of a ``features × columns`` score array, highest first.

    Returns ``{"names": ..., "scores": ..., "logfoldchanges": ..., "pvals": ..., "pvals_adj": ...}``, each a
    structured array with one field per column (group), as :func:`scanpy.tl.rank_genes_groups` stores them.
    Attributions have no fold changes or p-values: those three fields are NaN, present only because scanpy's
    readers need them. Field names are part of the array's dtype, not storage keys, so any group name is fine.
    """
    scores = np.asarray(scores, dtype=np.float64)
    feature_arr = np.asarray([str(f) for f in features], dtype=object)
    columns = [str(c) for c in columns]
    if scores.shape != (len(feature_arr), len(columns)):
        raise ValueError(f"Ranking scores have shape {scores.shape}, expected ({len(feature_arr)}, {len(columns)}).")
    names_cols, score_cols = [], []
    for j in range(len(columns)):
        s = scores[:, j]
        order = np.lexsort((np.arange(len(s)), -s))  # stable: ties keep feature order
        names_cols.append(feature_arr[order])
        score_cols.append(s[order].astype(np.float32))
    out = {
        Key.uns.names: np.rec.fromarrays(names_cols, names=columns),
        Key.uns.scores: np.rec.fromarrays(score_cols, names=columns),
    }
    nan = [np.full(len(feature_arr), np.nan, dtype=np.float32) for _ in columns]
    for name in Key.uns.scanpy_placeholders:
        out[name] = np.rec.fromarrays(nan, names=columns)
    return out


def _version() -> str:
    from . import __version__

    return __version__


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of scexplain and ``packages`` (``"unknown"`` when not installed), for the params."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"scexplain": _version()}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def is_result(value: Any) -> bool:
    """Whether an ``adata.uns`` entry is a scexplain result (its params record the scexplain version)."""
    if not isinstance(value, Mapping):
        return False
    params = value.get(Key.uns.params)
    return isinstance(params, Mapping) and "method" in params and "scexplain" in (params.get("versions") or {})


def storage_problems(value: Any, where: str) -> list[str]:
    """Every mapping key and DataFrame column name at any depth of ``value`` that cannot be a storage key.

    Keys must be non-empty strings without '/' (anndata 0.13 and zarr reject '/' in every store). Structured-array
    field names (rankings) are part of a dtype, not keys, and are not checked.
    """
    problems: list[str] = []
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str) or not k or "/" in k:
                problems.append(f"{where}[{k!r}]")
            problems.extend(storage_problems(v, f"{where}[{k!r}]"))
    elif isinstance(value, pd.DataFrame):
        problems.extend(f"{where} column {c!r}" for c in value.columns if not isinstance(c, str) or "/" in c)
    return problems


def check_storable(adata: AnnData, fmt: str = "zarr") -> None:
    """Raise a :class:`ValueError` listing every key of ``adata`` that writing to ``fmt`` would reject.

    zarr rejects '/' in keys always; h5ad when ``anndata.settings.disallow_forward_slash_in_h5ad`` is set (the
    default from anndata 0.13 on; 0.12 only warns). Walks ``layers``, ``obsm``, ``varm``, ``obsp``, ``varp`` and
    ``uns`` (keys at any depth, DataFrame column names) and the columns of ``obs`` and ``var``, so that a write
    never fails half-way.
    """
    if fmt not in ("zarr", "h5ad"):
        raise ValueError(f"`fmt` must be 'zarr' or 'h5ad', got {fmt!r}.")
    if fmt == "h5ad":
        import anndata

        if not getattr(anndata.settings, "disallow_forward_slash_in_h5ad", True):
            return
    problems: list[str] = []
    for attr in ("layers", "obsm", "varm", "obsp", "varp"):
        problems.extend(storage_problems(dict(getattr(adata, attr)), attr))
    problems.extend(storage_problems(dict(adata.uns), "uns"))
    for attr in ("obs", "var"):
        problems.extend(storage_problems(getattr(adata, attr), attr))
    if problems:
        shown = ", ".join(problems[:5]) + (f" and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(
            f"This AnnData cannot be written to {fmt}: '/' (or a non-string) in {shown}; rename these keys or "
            "columns first (anndata ≥ 0.13 and zarr reject '/' in keys)."
        )


@contextmanager
def anndata_013_rules() -> Iterator[None]:
    """Write under anndata 0.13's key rules: '/' in any key raises in h5ad as it does in zarr.

    anndata 0.12 only warns for h5ad unless ``settings.disallow_forward_slash_in_h5ad`` is set; this sets it for
    the duration (0.13 sets it by default).
    """
    import anndata

    if hasattr(anndata.settings, "disallow_forward_slash_in_h5ad"):
        with anndata.settings.override(disallow_forward_slash_in_h5ad=True):
            yield
    else:  # pragma: no cover - versions without the setting have no such rule to switch on
        yield


def _check_rows(what: str, n: int, expected: int, axis: str) -> None:
    if n != expected:
        raise ValueError(f"{what} has {n} rows but the AnnData has {expected} {axis}.")


def _cells_by_genes(k: str, value, adata: AnnData):
    """A cells × genes float32 layer; a dask array stays one (spilled results are streamed on write)."""
    if hasattr(value, "dask"):
        value = value if value.dtype == np.float32 else value.astype(np.float32)
    else:
        value = np.asarray(value, dtype=np.float32)
    if tuple(value.shape) != tuple(adata.shape):
        raise ValueError(f"layers[{k!r}] has shape {value.shape}, expected {adata.shape} (cells × genes).")
    return value


def _table(what: str, value, n_features: int, n_groups: int) -> np.ndarray:
    value = np.asarray(value, dtype=np.float64)
    if value.shape != (n_features, n_groups):
        raise ValueError(f"{what} has shape {value.shape}, expected ({n_features}, {n_groups}) (features × groups).")
    return value


def write(adata: AnnData, result: Result, *, copy: bool = False) -> AnnData | None:
    """Write ``result`` into ``adata`` (or a copy), all keys at once after every check passed.

    Every shape and every key (at any depth, DataFrame columns included) is checked first, so that bad input
    never leaves a half-written AnnData, and what is written can be saved to h5ad and zarr.

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
    key = check_key(result.key)
    on_genes = result.features is None
    features = [str(g) for g in adata.var_names] if on_genes else [str(f) for f in result.features]
    layers: dict[str, np.ndarray] = {}
    if result.layer is not None:
        layers[key] = _cells_by_genes(key, result.layer, adata)
    if result.presence is not None and (on_genes or result.layer is not None):
        layers[Key.presence_layer(key)] = _cells_by_genes(Key.presence_layer(key), result.presence, adata)
    for j, v in sorted(result.output_layers.items()):
        layers[Key.output_layer(key, j)] = _cells_by_genes(Key.output_layer(key, j), v, adata)
    obsm: dict[str, Any] = {}
    if result.obsm is not None:
        value = result.obsm
        _check_rows("obsm result", value.shape[0], adata.n_obs, "cells")
        if isinstance(value, pd.DataFrame):
            value = value.copy()
            value.index = adata.obs_names
        elif not hasattr(value, "dask"):
            value = np.asarray(value, dtype=np.float32)
        obsm[key] = value
    if result.presence is not None and not on_genes and result.layer is None:
        _check_rows("presence", result.presence.shape[0], adata.n_obs, "cells")
        obsm[Key.presence_layer(key)] = result.presence
    for k, v in result.obsm_extra.items():
        _check_rows(f"obsm[{k!r}]", v.shape[0], adata.n_obs, "cells")
        obsm[k] = v.set_axis(adata.obs_names) if isinstance(v, pd.DataFrame) else np.asarray(v)
    varm: dict[str, np.ndarray] = {}
    uns: dict[str, Any] = {Key.uns.layout: LAYOUT_VERSION}
    if result.group_tables:
        if result.groups is None:
            raise ValueError("Group tables need the names of their groups (`groups`).")
        groups = [str(g) for g in result.groups]
        uns[Key.uns.groups] = groups
        tables = {name: _table(f"group table {name!r}", t, len(features), len(groups))
                  for name, t in result.group_tables.items()}
        if on_genes:
            varm.update({Key.group_table(key, name): t for name, t in tables.items()})
        else:
            uns[Key.uns.group_tables] = tables
    for k, v in result.varm_extra.items():
        _check_rows(f"varm[{k!r}]", v.shape[0], adata.n_vars, "genes")
        varm[k] = np.asarray(v)
    if not on_genes:
        uns[Key.uns.feature_names] = features
    if result.output_layers:
        uns[Key.uns.kept_outputs] = np.asarray(sorted(result.output_layers), dtype=np.int64)

    params = {"method": result.method, "reference": "rest", **result.params}
    params["versions"] = {"scexplain": _version(), **(params.get("versions") or {})}
    uns[Key.uns.params] = h5ad_safe(params)
    uns.update({k: h5ad_safe(v) for k, v in result.uns.items()})
    uns = {k: h5ad_safe(v) for k, v in uns.items()}
    if result.ranking is not None:
        scores, columns = result.ranking
        uns.update(ranking_recarrays(scores, features, columns))

    problems = [p for attr, slots in (("layers", layers), ("obsm", obsm), ("varm", varm))
                for p in storage_problems(slots, attr)] + storage_problems(uns, f"uns[{key!r}]")
    if problems:
        raise ValueError(f"Refusing to write keys that h5ad/zarr reject: {problems}.")

    if copy:
        adata = adata.copy()
    for k, v in layers.items():
        adata.layers[k] = v
    for k, v in obsm.items():
        adata.obsm[k] = v
    for k, v in varm.items():
        adata.varm[k] = v
    adata.uns[key] = uns
    return adata if copy else None
