"""Shared plumbing of the plots: read stored results, colour limits, figure layout, show/return logic.

Nothing here imports matplotlib at module level: ``import scexplain`` stays light.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from .._keys import Key

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "METHOD_LABELS",
    "ResultNotFoundError",
    "StoredResult",
    "color_limits",
    "finish",
    "get_result",
    "method_label",
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
    from .._store import is_result

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
    """A result read back from an AnnData, whatever ``tl`` function wrote it.

    Two layouts exist (see :class:`scexplain._keys.Key`): gene-level results (``layers[key]``, ``varm[key]``) and
    tree models on an embedding (``obsm[key]`` over ``uns[key]["feature_names"]``, group tables in ``uns[key]``).
    """

    adata: AnnData
    key: str
    uns: Mapping[str, Any]

    # -- description ------------------------------------------------------------------------------------------
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
        """Whether the features are embedding dimensions (tree model on ``use_rep``) rather than genes."""
        if "feature_names" in self.uns:
            return True
        return self.params.get("use_rep") is not None and self.key not in self.adata.layers

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
        """``obs[groupby]`` as a categorical (unused categories dropped), category order kept."""
        from .._inputs import get_groups

        col = self.adata.obs[groupby]
        cat = get_groups(self.adata, groupby)
        if isinstance(col.dtype, pd.CategoricalDtype):  # keep the user's category order
            order = [str(c) for c in col.cat.categories if str(c) in set(cat.categories)]
            cat = pd.Categorical(np.asarray(col.astype(str)), categories=order)
        return cat

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

    def group_table(self, groupby: str | None = None, values: Literal["mean", "mean_abs"] = "mean") -> pd.DataFrame:
        """``features × groups`` table of the mean (or mean absolute) attribution of each group's cells.

        The stored table is used when ``groupby`` is the stored one; otherwise it is computed from the per-cell
        attributions.
        """
        if values not in ("mean", "mean_abs"):
            raise ValueError(f"`values` must be 'mean' or 'mean_abs', got {values!r}.")
        gb = self.groupby(groupby)
        table = self._stored_table(values) if gb == self.stored_groupby else None
        if table is None:
            from .._inputs import group_means

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
        if self.on_rep:
            name = "group_mean" if values == "mean" else Key.uns.group_mean_abs
            t = self.uns.get(name)
            return t if isinstance(t, pd.DataFrame) else None
        if values == "mean":
            t = self.adata.varm.get(self.key)
            return t if isinstance(t, pd.DataFrame) else None
        t = self.uns.get(Key.uns.group_mean_abs)
        return t if isinstance(t, pd.DataFrame) else None

    def latent_table(self) -> pd.DataFrame:
        """``genes × latent dims`` table from ``varm[key + "_latent"]``."""
        lk = Key.latent(self.key)
        if lk not in self.adata.varm:
            raise ResultNotFoundError(
                f"adata.varm[{lk!r}] (genes × latent dimensions) is missing: run {tl_call(self.method)[:-1]}, "
                "explain='latent') on an encoder model first, or pass the `key_added` you used."
            )
        t = self.adata.varm[lk]
        if isinstance(t, pd.DataFrame):
            t = t.copy()
            t.columns = t.columns.astype(str)
        else:
            t = np.asarray(t)
            t = pd.DataFrame(t, columns=[f"latent_{i}" for i in range(t.shape[1])])
        t.index = pd.Index([str(g) for g in self.adata.var_names])
        return t.astype(np.float64)


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


# -- colours ----------------------------------------------------------------------------------------------------
def color_limits(
    values: np.ndarray, *, signed: bool, vmin: float | None = None, vmax: float | None = None
) -> tuple[float, float]:
    """Colour limits: symmetric around 0 for signed values, ``[0, max]`` (or data range) otherwise.

    ``vmin``/``vmax`` override; for signed values, giving one of them mirrors it to the other.
    """
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if signed:
        if vmin is None and vmax is None:
            m = float(np.abs(finite).max()) if finite.size else 1.0
            m = m if m > 0 else 1.0
            return -m, m
        if vmin is None:
            return -abs(float(vmax)), float(vmax)
        if vmax is None:
            return float(vmin), abs(float(vmin))
        return float(vmin), float(vmax)
    lo = 0.0 if not finite.size or finite.min() >= 0 else float(finite.min())
    hi = float(finite.max()) if finite.size else 1.0
    if hi <= lo:
        hi = lo + 1.0
    return (lo if vmin is None else float(vmin)), (hi if vmax is None else float(vmax))


def is_signed(values: np.ndarray) -> bool:
    """Whether ``values`` has negative entries (→ diverging colour map centred at 0)."""
    v = np.asarray(values, dtype=np.float64)
    return bool(np.nanmin(v) < 0) if v.size else False


# -- layout -----------------------------------------------------------------------------------------------------
def text_size_in(texts: Sequence[str], fontsize: float | str | None = None) -> tuple[float, float]:
    """``(max width, max height)`` in inches of ``texts`` rendered horizontally at ``fontsize``."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    prop = FontProperties(size=fontsize)
    conv = TextToPath()
    w = h = 0.0
    for t in texts:
        if not t:
            continue
        tw, th, _ = conv.get_text_width_height_descent(str(t), prop, ismath=False)
        w, h = max(w, tw), max(h, th)
    if h == 0:
        h = prop.get_size_in_points()
    return w / 72.0, h / 72.0


def fontsize_pt(size: float | str | None = None) -> float:
    """A font size (number or name such as ``"medium"``) in points."""
    from matplotlib.font_manager import FontProperties

    return float(FontProperties(size=size).get_size_in_points())


def wrap_label(text: str, length_in: float, fontsize: float) -> str:
    """Wrap ``text`` into lines no longer than ``length_in`` inches (estimated at 0.55 em per character)."""
    chars = max(12, int(length_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.wrap(text, chars)) or text


def side_axes(ax: Axes, side: str, offset_in: float, size_in: float, *, length_in: float | None = None,
              label: str = "") -> Axes:
    """An axes glued to a side of ``ax`` (an inset outside it), ``offset_in`` away, ``size_in`` thick.

    ``length_in`` shortens it along the side (centred); the default spans the whole side. It follows ``ax`` when
    the layout changes.
    """
    fig = ax.get_figure()
    pos = ax.get_position()
    fw, fh = fig.get_size_inches()
    w_in, h_in = pos.width * fw, pos.height * fh
    if side in ("right", "left"):
        length = 1.0 if length_in is None else min(length_in / h_in, 1.0)
        y0 = (1 - length) / 2
        x0 = 1 + offset_in / w_in if side == "right" else -(offset_in + size_in) / w_in
        bounds = [x0, y0, size_in / w_in, length]
    else:
        length = 1.0 if length_in is None else min(length_in / w_in, 1.0)
        x0 = (1 - length) / 2
        y0 = 1 + offset_in / h_in if side == "top" else -(offset_in + size_in) / h_in
        bounds = [x0, y0, length, size_in / h_in]
    child = ax.inset_axes(bounds)
    child.set_label(label)
    return child


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A pyplot figure (so that ``plt.show()`` shows it), without a layout engine."""
    import matplotlib.pyplot as plt

    return plt.figure(figsize=figsize)


def finish(fig: Figure, axes: Any, *, ax_given: bool, show: bool | None, return_fig: bool):
    """Show and return like scanpy.

    ``show=None`` shows only when nothing is returned and no ``ax`` was given. ``return_fig=True`` returns the
    Figure; otherwise, when not shown, the axes (an Axes, a list, or a dict of named axes) are returned; a shown
    plot returns ``None``.
    """
    import matplotlib.pyplot as plt

    if show is None:
        show = not return_fig and not ax_given
    if show:
        plt.show()
    if return_fig:
        return fig
    if not show:
        return axes
    return None


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise a :class:`ValueError` naming the allowed values when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")
