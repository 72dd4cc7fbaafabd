"""``pl.dotplot``: colour = mean attribution, size = fraction of cells with positive attribution (or mean |φ|)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ._heatmap import (
    CBAR_W_IN,
    DENDRO_IN,
    PAD_IN,
    Dendrogram,
    Frame,
    add_colorbar,
    add_title,
    cell_size_in,
    colorbar_label,
    draw_blocks,
    draw_dendrogram,
    make_frame,
    right_extra_in,
    scale,
    select,
    style_ticks,
)
from ._utils import (
    StoredResult,
    check_choice,
    color_limits,
    finish,
    fontsize_pt,
    get_result,
    is_signed,
    side_axes,
    text_size_in,
    wrap_label,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

__all__ = ["dotplot"]

LEGEND_W_IN = 1.1


def _fraction_positive(res: StoredResult, groupby: str, groups: list[str], features: list[str]) -> pd.DataFrame:
    """``groups × features`` fraction of each group's cells whose attribution is > 0."""
    x = res.cell_values()
    cats = res.groups(groupby)
    codes = np.asarray(cats.codes)
    names = pd.Index(res.feature_names)
    cols = names.get_indexer(features)
    out = np.zeros((len(groups), len(features)))
    for i, g in enumerate(groups):
        rows = codes == list(cats.categories).index(g)
        out[i] = (x[np.ix_(rows, cols)] > 0).mean(axis=0) if rows.any() else 0.0
    return pd.DataFrame(out, index=groups, columns=features)


def _legend_values(size: str, max_value: float) -> tuple[list[float], list[str]]:
    if size == "fraction_positive":
        vals = [0.25, 0.5, 0.75, 1.0]
        return vals, [f"{int(v * 100)}%" for v in vals]
    from matplotlib.ticker import MaxNLocator

    ticks = [t for t in MaxNLocator(nbins=4).tick_values(0, max_value) if 0 < t <= max_value * 1.0001]
    ticks = ticks[-4:] or [max_value]
    return ticks, [f"{t:.3g}" for t in ticks]


def dotplot(
    adata: AnnData,
    key: str,
    *,
    groupby: str | None = None,
    n_genes: int = 5,
    genes: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    groups: Sequence[str] | None = None,
    size: Literal["fraction_positive", "mean_abs"] = "fraction_positive",
    standard_scale: Literal["var", "group"] | None = None,
    dendrogram: Dendrogram = False,
    cmap: str | Colormap | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    dot_max: float | None = None,
    title: str | None = None,
    colorbar_title: str | None = None,
    size_title: str | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | dict[str, Axes] | None:
    """Dot plot of attributions: cell types × top genes, colour = mean attribution, size = how consistent.

    The colour of a dot is the mean attribution of the group's cells toward their group (as in :func:`heatmap`);
    its area is the fraction of the group's cells with a positive attribution for that gene (do most cells rely on
    it, or a few strongly?) or the mean absolute attribution.

    Parameters
    ----------
    adata
        AnnData holding a result of a ``scexplain.tl`` function.
    key
        The result's key (e.g. ``"deep_shap"``).
    groupby
        Column of ``adata.obs``; default: the result's ``groupby``.
    n_genes
        Top genes per group (highest mean attribution).
    genes
        Genes to show instead: a list, or ``{group: genes}`` shown as blocks.
    groups
        Subset (and order) of the groups.
    size
        ``"fraction_positive"``: fraction of the group's cells with attribution > 0 (needs the per-cell
        attributions ``layers[key]``/``obsm[key]``); ``"mean_abs"``: mean |attribution| of the group's cells.
    standard_scale
        Min–max scale the colour per gene (``"var"``) or per group (``"group"``).
    dendrogram
        Cluster groups and/or genes (see :func:`heatmap`).
    cmap
        Colour map; default ``"RdBu_r"`` (signed) or ``"Reds"``.
    vmin, vmax
        Colour limits; default symmetric around 0 for signed values.
    dot_max
        Value mapped to the largest dot; default 1 for fractions, the largest shown value for ``"mean_abs"``.
    title, colorbar_title, size_title
        Figure title, colour bar label and size legend title; defaults describe the method and the values.
    figsize
        Figure size in inches; default: sized from the labels.
    ax
        Draw into this axes (legends are attached to its right).
    show
        Show the figure; default: only when nothing is returned and no ``ax`` is given.
    return_fig
        Return the Figure.

    Returns
    -------
    The Figure if ``return_fig``; else, when not shown, a dict of axes (``"mainplot_ax"``, ``"color_legend_ax"``,
    ``"size_legend_ax"``, with dendrograms ``"groups_dendrogram_ax"``/``"genes_dendrogram_ax"``); else ``None``.

    Examples
    --------
    >>> import scexplain as sx
    >>> sx.pl.dotplot(adata, "deep_shap", n_genes=3)  # doctest: +SKIP
    >>> sx.pl.dotplot(adata, "vargrad", size="mean_abs", dendrogram=True)  # doctest: +SKIP
    """
    from matplotlib import rcParams
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    check_choice("size", size, ("fraction_positive", "mean_abs"))
    check_choice("standard_scale", standard_scale, (None, "var", "group"))
    res = get_result(adata, key)
    gb = res.groupby(groupby)
    table = res.group_table(gb, "mean")
    sel = select(table, n_genes=n_genes, genes=genes, groups=groups, by_abs=False, kind=res.feature_kind,
                 dendrogram=dendrogram, group_what=f"Groups of {gb!r}")
    color = scale(sel.matrix(), standard_scale)
    if size == "fraction_positive":
        sizes = _fraction_positive(res, gb, sel.groups, sel.features)
        top = 1.0 if dot_max is None else float(dot_max)
    else:
        sizes = res.group_table(gb, "mean_abs").loc[sel.features, sel.groups].T
        top = float(np.nanmax(sizes.to_numpy())) if dot_max is None else float(dot_max)
    top = top if top > 0 else 1.0
    signed = standard_scale is None and is_signed(color.to_numpy())
    lo, hi = color_limits(color.to_numpy(), signed=signed, vmin=vmin, vmax=vmax)
    cmap = cmap if cmap is not None else ("RdBu_r" if signed else "Reds")
    cb_label = colorbar_title if colorbar_title is not None else colorbar_label(
        res, gb, values="mean", standard_scale=standard_scale, latent=False)
    if size_title is None:
        size_title = "fraction of cells with φ > 0" if size == "fraction_positive" else "mean |φ|"
    if title is None:
        noun = res.feature_kind + "s"
        title = (f"{res.label}: top {n_genes} {noun} per {gb.replace('_', ' ')}" if genes is None
                 else f"{res.label}: {noun} × {gb.replace('_', ' ')}")

    tick_fs = fontsize_pt(rcParams["xtick.labelsize"])
    cell = max(cell_size_in(tick_fs), 0.3)
    row_labels, col_labels = list(sel.groups), list(sel.features)
    cb_len = min(max(len(row_labels) * cell, 1.5), 3.0)
    right = right_extra_in(colorbar_label=cb_label, cbar_len_in=cb_len, tick_fs=tick_fs,
                           dendro=sel.group_linkage is not None) + LEGEND_W_IN + PAD_IN
    frame = make_frame(row_labels, col_labels, title=title, colorbar_label=cb_label,
                       row_dendro=sel.group_linkage is not None, col_dendro=sel.feature_linkage is not None,
                       figsize=figsize, ax=ax, right_min_in=right, cell_in=cell)
    axes = _draw(frame, color, sizes, sel, top=top, size=size, cmap=cmap, lo=lo, hi=hi, title=title,
                 cb_label=cb_label, size_title=size_title, norm_cls=Normalize, sm_cls=ScalarMappable)
    return finish(frame.fig, axes, ax_given=frame.ax_given, show=show, return_fig=return_fig)


def _draw(frame: Frame, color: pd.DataFrame, sizes: pd.DataFrame, sel, *, top: float, size: str, cmap, lo: float,
          hi: float, title: str, cb_label: str, size_title: str, norm_cls, sm_cls) -> dict[str, Axes]:
    ax = frame.ax
    n_rows, n_cols = color.shape
    fw, fh = frame.fig.get_size_inches()
    pos = ax.get_position()
    cell_in = min(pos.width * fw / max(n_cols, 1), pos.height * fh / max(n_rows, 1))
    max_area = (0.9 * cell_in * 72) ** 2
    yy, xx = np.mgrid[0:n_rows, 0:n_cols]
    frac = np.clip(sizes.to_numpy(dtype=np.float64) / top, 0, 1)
    norm = norm_cls(vmin=lo, vmax=hi)
    ax.scatter(xx.ravel() + 0.5, yy.ravel() + 0.5, s=frac.ravel() * max_area, c=color.to_numpy().ravel(),
               cmap=cmap, norm=norm, edgecolors="0.4", linewidths=0.4, zorder=3)
    ax.set_xlim(0, n_cols)
    ax.set_ylim(n_rows, 0)
    ax.set_axisbelow(True)
    style_ticks(ax, xlabels=[str(c) for c in color.columns], ylabels=[str(r) for r in color.index],
                fontsize=frame.tick_fs)
    ax.grid(True, color="0.92", lw=0.5)
    ax.tick_params(which="both", grid_alpha=1)
    if sel.blocks:
        draw_blocks(ax, sel, swap_axes=False, diagonal_color="0.5", separator_color="0.7")
    out: dict[str, Axes] = {"mainplot_ax": ax}
    offset = PAD_IN
    if sel.group_linkage is not None:
        dax = side_axes(ax, "right", offset, DENDRO_IN, label="row_dendrogram")
        draw_dendrogram(dax, sel.group_linkage, "right", n_rows)
        out["groups_dendrogram_ax"] = dax
        offset += DENDRO_IN + PAD_IN
    top_ax = ax
    if sel.feature_linkage is not None:
        dax = side_axes(ax, "top", PAD_IN / 2, DENDRO_IN, label="col_dendrogram")
        draw_dendrogram(dax, sel.feature_linkage, "top", n_cols)
        out["genes_dendrogram_ax"] = dax
        top_ax = dax
    sm = sm_cls(norm=norm, cmap=cmap)
    out["color_legend_ax"] = add_colorbar(frame, sm, cb_label, offset_in=offset)
    # the size legend goes right of the colour bar, its tick labels and its label
    label_fs = fontsize_pt("medium")
    lines = wrap_label(cb_label, frame.cbar_len_in, label_fs).count("\n") + 1
    tick_w, _ = text_size_in(["−0.00"], frame.tick_fs)
    offset += CBAR_W_IN + 0.1 + tick_w + lines * label_fs * 1.25 / 72 + 0.15
    out["size_legend_ax"] = _size_legend(frame, offset, size=size, top=top, max_area=max_area, title=size_title)
    if title:
        add_title(frame, top_ax, title)
    return out


def _size_legend(frame: Frame, offset_in: float, *, size: str, top: float, max_area: float, title: str) -> Axes:
    values, labels = _legend_values(size, top)
    n = len(values)
    row_in = max(np.sqrt(max_area) / 72 * 1.15, frame.tick_fs * 1.6 / 72)
    lax = side_axes(frame.ax, "right", offset_in, LEGEND_W_IN, length_in=min(n * row_in + 0.05,
                                                                              frame.cbar_len_in), label="size_legend")
    lax.scatter(np.full(n, 0.25), np.arange(n) + 0.5, s=[v / top * max_area for v in values], color="0.55",
                edgecolors="0.4", linewidths=0.4, clip_on=False)
    for i, lab in enumerate(labels):
        lax.text(0.55, i + 0.5, lab, va="center", ha="left", fontsize=frame.tick_fs)
    lax.set_xlim(0, 1)
    lax.set_ylim(n, 0)
    lax.set_axis_off()
    lax.set_title("\n".join(textwrap.wrap(title, 18)) or title, fontsize=frame.tick_fs, loc="left")
    return lax
