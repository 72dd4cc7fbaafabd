"""``pl.feature_importance``: features (embedding dims) × groups, and a per-cell beeswarm for one group."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ._utils import (
    StoredResult,
    check_choice,
    check_groups,
    check_positive_int,
    color_limits,
    finish,
    get_result,
    is_signed,
    text_width_in,
    top_features,
    wrap_label,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

__all__ = ["feature_importance"]


def swarm_offsets(x: np.ndarray, *, width: float = 0.4, n_bins: int = 100) -> np.ndarray:
    """Vertical offsets that spread points of equal ``x`` apart (a beeswarm, as in ``shap``), deterministic."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        return np.zeros(0)
    lo, hi = np.nanmin(x), np.nanmax(x)
    span = hi - lo if hi > lo else 1.0
    bins = np.clip(((x - lo) / span * n_bins).astype(int), 0, n_bins - 1)
    offsets = np.zeros(n)
    layer = np.zeros(n)
    for b in np.unique(bins):
        idx = np.flatnonzero(bins == b)
        idx = idx[np.argsort(x[idx], kind="stable")]
        k = np.arange(len(idx))
        layer[idx] = np.ceil(k / 2) * np.where(k % 2 == 0, 1, -1)
    top = np.abs(layer).max()
    if top > 0:
        offsets = layer / top * width
    return offsets


def feature_importance(
    adata: AnnData,
    key: str,
    *,
    group: str | None = None,
    groupby: str | None = None,
    groups: list[str] | None = None,
    n_features: int = 10,
    kind: Literal["both", "heatmap", "beeswarm"] = "both",
    cmap: str | Colormap | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | Axes | dict[str, Axes] | None:
    """Feature importance of a model on an embedding: features × groups, and per-cell values for one group.

    Made for tree SHAP on ``use_rep`` (features are embedding dimensions such as ``PC1``…), and works on gene-level
    results too (features are genes). The left panel shows the mean attribution of each group's cells toward
    their group for the ``n_features`` features with the largest mean ``|attribution|`` over all cells; the right
    panel is a beeswarm of the per-cell attributions of ``group``'s cells, one row per feature (its own top
    ``n_features``), coloured by the feature's value in the cell (low blue → high red) as in ``shap``.

    Parameters
    ----------
    adata
        AnnData holding a result of a ``scexplain.tl`` function.
    key
        The result's key (e.g. ``"tree_shap_gpu"``).
    group
        Group whose cells the beeswarm shows; default: the first group.
    groupby
        Column of ``adata.obs``; default: the result's ``groupby``.
    groups
        Groups (columns) of the heatmap; default: all.
    n_features
        Features shown in each panel.
    kind
        ``"both"`` panels, only the ``"heatmap"`` or only the ``"beeswarm"``.
    cmap
        Colour map of the heatmap; default ``"RdBu_r"`` (signed) or ``"Reds"``.
    vmin, vmax
        Colour limits of the heatmap; default symmetric around 0 for signed values.
    title
        Figure title; default names the method.
    figsize
        Figure size in inches.
    ax
        Draw into this axes; only with ``kind="heatmap"`` or ``kind="beeswarm"``.
    show
        Show the figure; default: only when nothing is returned and no ``ax`` is given.
    return_fig
        Return the Figure.

    Returns
    -------
    The Figure if ``return_fig``; else, when not shown, the Axes (one panel) or a dict ``{"heatmap_ax",
    "beeswarm_ax"}``; else ``None``.

    Examples
    --------
    >>> import scexplain as sx
    >>> sx.tl.tree_shap_gpu(adata, model, groupby="cell_type", use_rep="X_pca")  # doctest: +SKIP
    >>> sx.pl.feature_importance(adata, "tree_shap_gpu", group="B cell", n_features=8)  # doctest: +SKIP
    """
    check_choice("kind", kind, ("both", "heatmap", "beeswarm"))
    n_features = check_positive_int("n_features", n_features)
    if ax is not None and kind == "both":
        raise ValueError("`ax` can hold one panel; pass kind='heatmap' or kind='beeswarm', or no `ax`.")
    res = get_result(adata, key)
    gb = res.groupby(groupby)
    table = res.group_table(gb, "mean")
    chosen = check_groups(table, groups, f"Groups of {gb!r}")
    if group is None:
        group = chosen[0]
    elif str(group) not in table.columns:
        raise ValueError(f"`group={group!r}` is not a group of {gb!r}; groups: {list(table.columns)}.")
    group = str(group)
    if title is None:
        title = f"{res.label}: {res.feature_kind} importance per {gb.replace('_', ' ')}"

    if ax is not None:
        fig, ax_given = ax.get_figure(), True
        panels = {f"{kind}_ax": ax}
    else:
        ax_given = False
        fig, panels = _figure(res, chosen, n_features, kind, figsize)
    if "heatmap_ax" in panels:
        _heatmap_panel(panels["heatmap_ax"], res, table[chosen], n_features, gb, cmap=cmap, vmin=vmin, vmax=vmax)
    if "beeswarm_ax" in panels:
        _beeswarm_panel(panels["beeswarm_ax"], res, gb, group, n_features)
    if not ax_given:
        fig.suptitle(title)
    out = next(iter(panels.values())) if len(panels) == 1 else panels
    return finish(fig, out, ax_given=ax_given, show=show, return_fig=return_fig)


def _figure(res: StoredResult, groups: list[str], n_features: int, kind: str, figsize):
    """A figure sized from the labels: rows of features, rotated group labels, a title."""
    import matplotlib.pyplot as plt
    from matplotlib.font_manager import FontProperties

    fs = FontProperties(size="medium").get_size_in_points()
    row = max(0.25, 1.6 * fs / 72)
    n_rows = min(n_features, len(res.feature_names))
    feat_w = text_width_in(res.feature_names, fs)
    group_w = text_width_in(groups, fs)
    body_h = max(n_rows * row, 1.5)
    heat_w = feat_w + len(groups) * row + 1.6
    bees_w = feat_w + 5.0
    below = max(group_w if kind != "beeswarm" else 0.0, 2.2 * fs / 72 if kind != "heatmap" else 0.0)
    h = body_h + below + 1.1
    w = {"both": heat_w + bees_w, "heatmap": heat_w, "beeswarm": bees_w}[kind] + 0.3
    if figsize is not None:
        w, h = float(figsize[0]), float(figsize[1])
    if kind == "both":
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(w, h), layout="constrained", width_ratios=[heat_w, bees_w])
        return fig, {"heatmap_ax": a1, "beeswarm_ax": a2}
    fig, a = plt.subplots(figsize=(w, h), layout="constrained")
    return fig, {f"{kind}_ax": a}


def _heatmap_panel(ax: Axes, res: StoredResult, table: pd.DataFrame, n: int, groupby: str, *, cmap, vmin, vmax):
    """Features (rows, by overall mean |attribution|) × groups of mean attribution, with a colour bar."""
    overall = pd.Series(np.abs(res.cell_values()).mean(axis=0), index=pd.Index(res.feature_names))
    feats = top_features(overall.loc[table.index], n)
    m = table.loc[feats]
    signed = is_signed(m.to_numpy())
    lo, hi = color_limits(m.to_numpy(), signed=signed, vmin=vmin, vmax=vmax)
    cmap = cmap if cmap is not None else ("RdBu_r" if signed else "Reds")
    mesh = ax.pcolormesh(m.to_numpy(dtype=np.float64), cmap=cmap, vmin=lo, vmax=hi)
    ax.set_xlim(0, m.shape[1])
    ax.set_ylim(m.shape[0], 0)
    ax.set_xticks(np.arange(m.shape[1]) + 0.5, [str(c) for c in m.columns], rotation=90)
    ax.set_yticks(np.arange(m.shape[0]) + 0.5, [str(r) for r in m.index])
    ax.tick_params(length=2, pad=2)
    cb = ax.get_figure().colorbar(mesh, ax=ax, fraction=0.08, pad=0.03, aspect=25)
    rows_in = m.shape[0] * 0.25  # wrap the label to the colour bar's length
    cb.set_label(wrap_label(f"{res.label}: {res.meaning(groupby)}", int(max(rows_in, 1.2) * 72 / 6)))
    cb.outline.set_linewidth(0.5)
    ax.set_title(f"mean per {groupby.replace('_', ' ')}", fontsize="medium")


def _beeswarm_panel(ax: Axes, res: StoredResult, groupby: str, group: str, n: int):
    """Per-cell attributions of ``group``'s cells, one row per feature, coloured by the feature's value."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cats = res.groups(groupby)
    cells = np.asarray(cats.codes) == list(cats.categories).index(group)
    phi = res.cell_values()[cells]
    names = pd.Index(res.feature_names)
    importance = pd.Series(np.abs(phi).mean(axis=0), index=names)
    feats = top_features(importance, n)
    cols = names.get_indexer(feats)
    xvals = res.feature_values()
    cmap = "coolwarm"
    norm = Normalize(0, 1)
    for row, c in enumerate(cols):
        v = phi[:, c]
        y = row + swarm_offsets(v)
        if xvals is not None:
            f = xvals[cells, c]
            lo, hi = np.nanpercentile(f, [5, 95])
            col = np.clip((f - lo) / (hi - lo), 0, 1) if hi > lo else np.full(len(f), 0.5)
            ax.scatter(v, y, c=col, cmap=cmap, norm=norm, s=10, linewidths=0, rasterized=True, zorder=3)
        else:
            ax.scatter(v, y, color="0.4", s=10, linewidths=0, rasterized=True, zorder=3)
    ax.set_yticks(np.arange(len(feats)))
    ax.set_yticklabels(feats, fontsize="medium")
    ax.set_ylim(len(feats) - 0.5, -0.5)
    ax.axvline(0, color="0.3", lw=0.8, zorder=2)
    ax.grid(axis="y", color="0.92", lw=0.6)
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel(f"{res.label}: attribution toward {group} (per cell)", fontsize="medium")
    ax.set_title(f"{group}: {int(cells.sum())} cells", fontsize="medium")
    if xvals is not None:
        cb = ax.get_figure().colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.05, pad=0.02,
                                      aspect=25, ticks=[0, 1])
        cb.ax.set_yticklabels(["low", "high"], fontsize="medium")
        cb.set_label(f"{res.feature_kind} value", fontsize="medium")
        cb.outline.set_linewidth(0.5)
