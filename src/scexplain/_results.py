"""The one place that reads results back from an AnnData, whatever scexplain version wrote them.

:func:`get_result` returns a :class:`StoredResult`, which maps stored arrays back to their names (groups, outputs,
features, latent dimensions) for ``get``, ``pl`` and ``scexplain info``. It reads storage layout 2 (names in
arrays, see :class:`scexplain._keys.Key`) and the layout of scexplain 0.1.0 (layout 1: group names as DataFrame
columns, ``keep_all`` layers named after outputs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ._keys import Key

__all__ = [
    "METHOD_LABELS",
    "ResultNotFoundError",
    "StoredResult",
    "get_result",
    "method_label",
    "result_keys",
    "tl_call",
]

#: how a method is called in titles and colour-bar labels
METHOD_LABELS: dict[str, str] = {
    "deep_shap": "DeepSHAP",
    "vargrad": "VarGrad",
    "smoothgrad": "SmoothGrad",
    "integrated_gradients": "Integrated gradients",
    "saliency": "Saliency",
    "tree_shap": "TreeSHAP",
    "tree_shap_gpu": "TreeSHAP",
    "tree_shap_cpu": "TreeSHAP",
}

#: the call that produces a result, named in "missing key" errors
TL_CALLS: dict[str, str] = {
    "deep_shap": "scexplain.tl.deep_shap(adata, model, groupby=...)",
    "vargrad": "scexplain.tl.vargrad(adata, model, groupby=...)",
    "smoothgrad": "scexplain.tl.smoothgrad(adata, model, groupby=...)",
    "integrated_gradients": "scexplain.tl.integrated_gradients(adata, model, groupby=...)",
    "tree_shap": "scexplain.tl.tree_shap(adata, model, groupby=...)",
    "tree_shap_gpu": "scexplain.tl.tree_shap_gpu(adata, model, groupby=..., use_rep=...)",
}


class ResultNotFoundError(KeyError):
    """A plot asked for a result (or a part of one) that is not in the AnnData.

    A :class:`KeyError` whose message is printed as written (a plain ``KeyError`` shows its message quoted).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def method_label(method: str) -> str:
    """Display name of a method (``"deep_shap"`` → ``"DeepSHAP"``)."""
    return METHOD_LABELS.get(method, method.replace("_", " "))


def tl_call(method: str) -> str:
    """The ``tl`` call that computes ``method``'s results."""
    return TL_CALLS.get(method, f"scexplain.tl.{method}(adata, model, groupby=...)")


def result_keys(adata: AnnData) -> list[str]:
    """Keys of ``adata.uns`` that hold a scexplain result."""
    from ._store import is_result

    return sorted(str(k) for k, v in adata.uns.items() if is_result(v))


def _missing_key_message(adata: AnnData, key: str) -> str:
    present = result_keys(adata)
    if key in TL_CALLS:
        run = f"run {tl_call(key)} first"
    else:
        run = "run a scexplain.tl function first (e.g. scexplain.tl.deep_shap(adata, model, groupby=...))"
    return (
        f"No scexplain result under key {key!r}: {run}, or pass the `key_added` you used. "
        f"Results in this AnnData: {present if present else 'none'}."
    )


def _as_str_list(values) -> list[str]:
    return [str(v) for v in np.asarray(values).tolist()]


def _groupby_words(groupby: str | None) -> str:
    return "group" if not groupby else str(groupby).replace("_", " ")


@dataclass
class StoredResult:
    """A result read back from an AnnData, whatever ``tl`` function (and scexplain version) wrote it.

    Two kinds of features exist (see :class:`scexplain._keys.Key`): genes (``layers[key]``, group tables in
    ``varm``) and embedding dimensions of tree models on ``use_rep`` (``obsm[key]`` over
    ``uns[key]["feature_names"]``, group tables in ``uns[key]``). Both are read in storage layout 2 and in the
    layout of scexplain 0.1.0 (:attr:`layout` 1).
    """

    adata: AnnData
    key: str
    uns: Mapping[str, Any]

    # -- description ------------------------------------------------------------------------------------------
    @property
    def layout(self) -> int:
        """Storage layout version: 2 for this scexplain, 1 for results written by scexplain 0.1.0."""
        return int(self.uns.get(Key.uns.layout, 1))

    @property
    def params(self) -> Mapping[str, Any]:
        """``uns[key]["params"]``."""
        p = self.uns.get(Key.uns.params, {})
        return p if isinstance(p, Mapping) else {}

    @property
    def method(self) -> str:
        """Method name (``params["method"]``, else the key)."""
        return str(self.params.get("method", self.key))

    @property
    def label(self) -> str:
        """Display name of the method."""
        return method_label(self.method)

    @property
    def stored_groupby(self) -> str | None:
        """The ``obs`` column the stored per-group summaries are over (``None`` if none)."""
        g = self.params.get("groupby")
        return None if g is None or (isinstance(g, str) and not g) else str(g)

    @property
    def on_rep(self) -> bool:
        """Whether the features are embedding dimensions (tree model on ``use_rep``) rather than genes.

        A result with both (a tree on an embedding carried back to genes) is read on its genes.
        """
        if self.key in self.adata.layers:
            return False
        return "feature_names" in self.uns or self.params.get("use_rep") is not None

    @property
    def feature_kind(self) -> str:
        """``"gene"`` or ``"dimension"`` (for labels)."""
        return "dimension" if self.on_rep else "gene"

    @property
    def feature_names(self) -> list[str]:
        """Names of the explained features: ``var_names`` or the embedding's dimension names."""
        if self.on_rep:
            if "feature_names" in self.uns:
                return _as_str_list(self.uns["feature_names"])
            return [f"{self.params.get('use_rep', 'dim')}_{i}" for i in range(self.cell_values().shape[1])]
        return [str(g) for g in self.adata.var_names]

    @property
    def output_names(self) -> list[str]:
        """Names of the model's outputs, in output order."""
        return _as_str_list(self.uns.get(Key.uns.output_names, []))

    @property
    def stored_groups(self) -> list[str]:
        """Names of the groups of the stored group tables (empty without ``groupby``)."""
        if self.layout >= 2:
            return _as_str_list(self.uns.get(Key.uns.groups, []))
        table = self.uns.get("group_mean") if self.on_rep else self.adata.varm.get(self.key)
        return [str(c) for c in table.columns] if isinstance(table, pd.DataFrame) else []

    def meaning(self, groupby: str | None, values: str = "mean") -> str:
        """What a per-group value means, e.g. ``"mean attribution toward own cell type"``."""
        what = "mean |attribution|" if values == "mean_abs" else "mean attribution"
        target = self.params.get("target", "label")
        if isinstance(target, str) and target == "predicted":
            return f"{what} toward predicted class"
        return f"{what} toward own {_groupby_words(groupby or self.stored_groupby)}"

    # -- data -------------------------------------------------------------------------------------------------
    def groupby(self, groupby: str | None) -> str:
        """Resolve the ``groupby`` of a plot: given, else the stored one; raise when neither exists."""
        gb = groupby if groupby is not None else self.stored_groupby
        if gb is None:
            cats = [c for c in self.adata.obs.columns if not pd.api.types.is_numeric_dtype(self.adata.obs[c])]
            raise ValueError(
                f"Result {self.key!r} was computed without `groupby`, so it has no per-group summary; pass "
                f"`groupby=` naming a column of adata.obs (categorical columns: {cats})."
            )
        if gb not in self.adata.obs.columns:
            cats = [c for c in self.adata.obs.columns if not pd.api.types.is_numeric_dtype(self.adata.obs[c])]
            raise ValueError(f"`groupby={gb!r}` is not a column of adata.obs; categorical columns: {cats}.")
        return gb

    def groups(self, groupby: str) -> pd.Categorical:
        """``obs[groupby]`` as a categorical in the declared category order, groups without cells dropped."""
        from ._inputs import get_groups

        return get_groups(self.adata, groupby).remove_unused_categories()

    def presence_values(self) -> np.ndarray | None:
        """Per-cell presence part of the attributions (``layers[key + "_presence"]``), ``None`` if not stored."""
        slot = self.adata.obsm if self.on_rep else self.adata.layers
        value = slot.get(Key.presence_layer(self.key)) if Key.presence_layer(self.key) in slot else None
        if value is None:
            return None
        value = value.compute() if hasattr(value, "compute") else value
        return np.asarray(value.toarray() if hasattr(value, "toarray") else value, dtype=np.float64)

    def cell_values(self) -> np.ndarray:
        """Per-cell attributions: ``layers[key]`` (cells × genes) or ``obsm[key]`` (cells × dims)."""
        a = self.adata
        if self.on_rep:
            value = a.obsm.get(self.key)
            if value is None:
                raise ResultNotFoundError(
                    f"adata.obsm[{self.key!r}] (per-cell attributions over the embedding) is missing; rerun "
                    f"{tl_call(self.method)}."
                )
            return np.asarray(value, dtype=np.float64)
        if self.key not in a.layers:
            raise ResultNotFoundError(
                f"adata.layers[{self.key!r}] (per-cell attributions) is missing; rerun {tl_call(self.method)} "
                "without dropping the layer."
            )
        layer = a.layers[self.key]
        if hasattr(layer, "compute"):  # a dask-backed result (read back from its spill store)
            layer = layer.compute()
        if hasattr(layer, "toarray"):
            layer = layer.toarray()
        return np.asarray(layer, dtype=np.float64)

    def feature_values(self) -> np.ndarray | None:
        """The explained inputs (cells × features), to colour a beeswarm; ``None`` when not found."""
        a, p = self.adata, self.params
        if self.on_rep:
            rep = p.get("use_rep")
            if rep is None or rep not in a.obsm:
                return None
            x = np.asarray(a.obsm[rep], dtype=np.float64)
            n = len(self.feature_names)
            return x[:, :n] if x.shape[1] >= n else None
        layer = p.get("layer")
        if isinstance(layer, str) and layer in a.layers:
            x = a.layers[layer]
        elif p.get("use_raw") and a.raw is not None and a.raw.n_vars == a.n_vars:
            x = a.raw.X
        elif a.X is not None:
            x = a.X
        else:
            return None
        if hasattr(x, "toarray"):
            x = x.toarray()
        return np.asarray(x, dtype=np.float64)

    def has_table(self, values: str) -> bool:
        """Whether the group table ``values`` (see :class:`~scexplain._keys.Key.table`) is stored."""
        if values == Key.table.absence:
            return self.has_table(Key.table.presence)
        return self._stored_table(values) is not None

    def group_table(self, groupby: str | None = None, values: str = "mean") -> pd.DataFrame:
        """``features × groups`` table ``values`` of each group's cells (see :class:`~scexplain._keys.Key.table`).

        ``"mean"`` and ``"mean_abs"``: the mean (absolute) attribution; ``"presence"``/``"absence"``: the parts of
        the mean from features above / below the reference; ``"ci_low"``, ``"ci_high"``, ``"rank_stability"``:
        bootstrap summaries. The stored table is used when ``groupby`` is the stored one; otherwise means are
        computed from the per-cell attributions (the other tables exist only for the stored ``groupby``).
        """
        allowed = (*Key.table.stored, Key.table.absence)
        if values not in allowed:
            raise ValueError(f"`values` must be one of {list(allowed)}, got {values!r}.")
        gb = self.groupby(groupby)
        if values == Key.table.absence:
            return self.group_table(gb, Key.table.mean) - self.group_table(gb, Key.table.presence)
        table = self._stored_table(values) if gb == self.stored_groupby else None
        if table is None and values in (Key.table.presence, Key.table.ci_low, Key.table.ci_high,
                                        Key.table.rank_stability):
            raise ResultNotFoundError(
                f"Result {self.key!r} has no {values!r} table for groupby={gb!r}; rerun {tl_call(self.method)} "
                + ("with `groupby=` set to it." if gb != self.stored_groupby else
                   ("with n_bootstrap=… ." if values != Key.table.presence else "(this method stores no split)."))
            )
        if table is None:
            from ._inputs import group_means

            x = self.cell_values()
            table = group_means(np.abs(x) if values == "mean_abs" else x, self.groups(gb), self.feature_names)
        else:
            table = table.copy()
            table.index = pd.Index(self.feature_names if len(self.feature_names) == len(table) else table.index)
            table.index = table.index.astype(str)
            table.columns = table.columns.astype(str)
            order = [str(c) for c in self.groups(gb).categories]
            if set(order) <= set(table.columns):  # follow obs category order, drop unused groups
                table = table[order]
        return table.astype(np.float64)

    def _stored_table(self, values: str) -> pd.DataFrame | None:
        """The stored ``features × groups`` table ``values`` (``"mean"``, ``"mean_abs"``, ...), named."""
        if self.layout < 2:  # 0.1.0: DataFrames with the group names as columns (mean and mean_abs only)
            if values not in (Key.table.mean, Key.table.mean_abs):
                return None
            if self.on_rep:
                t = self.uns.get("group_mean" if values == Key.table.mean else "group_mean_abs")
            elif values == Key.table.mean:
                t = self.adata.varm.get(self.key)
            else:
                t = self.uns.get("group_mean_abs")
            return t if isinstance(t, pd.DataFrame) else None
        if self.on_rep:
            t = (self.uns.get(Key.uns.group_tables) or {}).get(values)
        else:
            t = self.adata.varm.get(Key.group_table(self.key, values))
        if t is None:
            return None
        return pd.DataFrame(np.asarray(t), index=self.feature_names, columns=self.stored_groups)

    def _latent(self, varm_key: str, what: str) -> pd.DataFrame:
        if varm_key not in self.adata.varm:
            raise ResultNotFoundError(
                f"adata.varm[{varm_key!r}] ({what}) is missing: run {tl_call(self.method)[:-1]}, "
                "explain='latent') on an encoder model first, or pass the `key_added` you used."
            )
        t = self.adata.varm[varm_key]
        if isinstance(t, pd.DataFrame):  # 0.1.0
            t = t.copy()
            t.columns = t.columns.astype(str)
        else:
            t = np.asarray(t)
            dims = _as_str_list(self.uns.get(Key.uns.latent_dims, [])) or [f"latent_{i}" for i in range(t.shape[1])]
            t = pd.DataFrame(t, columns=dims)
        t.index = pd.Index([str(g) for g in self.adata.var_names])
        return t.astype(np.float64)

    @property
    def latent_dims(self) -> list[str]:
        """Names of the explained latent dimensions (latent mode)."""
        return _as_str_list(self.uns.get(Key.uns.latent_dims, []))

    def latent_table(self, values: Literal["mean", "mean_abs"] = "mean") -> pd.DataFrame:
        """``genes × latent dims`` table of the mean (or mean absolute) attribution over all cells."""
        if values == "mean":
            return self._latent(Key.latent(self.key), "genes × latent dimensions")
        return self._latent(Key.latent_abs(self.key), "genes × latent dimensions, mean |attribution|")

    def latent_group_table(self, group: str) -> pd.DataFrame:
        """``genes × latent dims`` mean |attribution| over the cells of ``group`` (latent mode with ``groupby``)."""
        genes = pd.Index([str(g) for g in self.adata.var_names])
        dims = self.latent_dims
        if self.layout < 2:
            table = self.uns.get("latent_group_mean_abs")
            cols = [f"{group}|{d}" for d in dims]
            if not isinstance(table, pd.DataFrame) or any(c not in table.columns for c in cols):
                raise ResultNotFoundError(f"No per-group latent table for group {group!r} under {self.key!r}.")
            return pd.DataFrame(table[cols].to_numpy(np.float64), index=genes, columns=dims)
        cube = self.adata.varm.get(Key.latent_groups(self.key))
        groups = self.stored_groups
        if cube is None or group not in groups:
            raise ResultNotFoundError(
                f"No per-group latent table for group {group!r} under {self.key!r}; groups: {groups}."
            )
        return pd.DataFrame(np.asarray(cube)[:, groups.index(group), :], index=genes, columns=dims)

    def output_layer(self, output: str) -> np.ndarray:
        """Cells × genes attributions toward ``output`` (stored with ``keep_all=True``)."""
        names = self.output_names
        if output not in names:
            raise ResultNotFoundError(f"{output!r} is not an output of {self.key!r}; outputs: {names}.")
        if self.layout < 2:
            layer_key = f"{self.key}_{output}"
        else:
            kept = [int(j) for j in np.asarray(self.uns.get(Key.uns.kept_outputs, []))]
            layer_key = Key.output_layer(self.key, names.index(output)) if names.index(output) in kept else None
        if layer_key is None or layer_key not in self.adata.layers:
            raise ResultNotFoundError(
                f"No layer toward output {output!r} under {self.key!r}: rerun with keep_all=True and a target "
                "listing it."
            )
        return np.asarray(self.adata.layers[layer_key])

    def stored_group_table(self, values: str) -> pd.DataFrame | None:
        """The stored ``features × groups`` table ``values`` over :attr:`stored_groups`, ``None`` if not stored.

        ``"absence"`` is derived (``mean − presence``). Unlike :meth:`group_table` it needs no ``obs`` column
        (for readers of the stored rankings, such as :func:`scexplain.get.ranked_genes_df`).
        """
        if values == Key.table.absence:
            mean, presence = self.stored_group_table(Key.table.mean), self.stored_group_table(Key.table.presence)
            return None if mean is None or presence is None else mean - presence
        table = self._stored_table(values)
        if table is None:
            return None
        table = table.astype(np.float64)
        table.index, table.columns = table.index.astype(str), table.columns.astype(str)
        return table


def get_result(adata: AnnData, key: str) -> StoredResult:
    """Read the result stored under ``key``; raise :class:`ResultNotFoundError` naming the ``tl`` call if absent."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"Expected an AnnData as first argument, got {type(adata).__name__}.")
    if not isinstance(key, str):
        raise TypeError(f"`key` must be the string key of a stored result, got {key!r}.")
    uns = adata.uns.get(key)
    has_data = key in adata.layers or key in adata.varm or key in adata.obsm
    if not has_data:
        raise ResultNotFoundError(_missing_key_message(adata, key))
    return StoredResult(adata, key, uns if isinstance(uns, Mapping) else {})
