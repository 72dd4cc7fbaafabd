"""``pl.heatmap``: genes × cell types of mean attributions, top genes per group in blocks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ._utils import (
    StoredResult,
    check_choice,
    color_limits,
    finish,
    fontsize_pt,
    get_result,
    is_signed,
    new_figure,
    side_axes,
    text_size_in,
    wrap_label,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

__all__ = ["heatmap", "save_heatmap"]

Dendrogram = bool | Literal["both", "groups", "genes"]


# ---------------------------------------------------------------------------------------------------------------
# what to show: a features × columns table, feature blocks, orders
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Selection:
    """Rows (groups or latent dims) and columns (features) of a matrix plot, with feature blocks."""

    table: pd.DataFrame  # features × groups, all features
    groups: list[str]
    features: list[str]  # may repeat a gene that tops two groups
    blocks: list[tuple[str, int, int]] = field(default_factory=list)  # (group label, start, stop) over features
    group_linkage: Any = None
    feature_linkage: Any = None

    def matrix(self) -> pd.DataFrame:
        """``groups × features`` values in display order (columns may repeat)."""
        return self.table.loc[self.features, self.groups].T


def _check_groups(table: pd.DataFrame, groups: Sequence[str] | str | None, what: str) -> list[str]:
    available = [str(c) for c in table.columns]
    if groups is None:
        return available
    chosen = [groups] if isinstance(groups, str) else [str(g) for g in groups]
    missing = [g for g in chosen if g not in available]
    if missing:
        raise ValueError(f"{what} {missing} not found; available: {available}.")
    if not chosen:
        raise ValueError(f"`groups` is empty; pick at least one of {available}.")
    return chosen


def _check_features(table: pd.DataFrame, names: Sequence[str], kind: str) -> list[str]:
    names = [str(n) for n in names]
    missing = [n for n in names if n not in table.index]
    if missing:
        shown = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
        raise ValueError(f"{len(missing)} {kind}(s) not among the explained features: {shown}.")
    if not names:
        raise ValueError(f"The list of {kind}s is empty.")
    return names


def top_features(column: pd.Series, n: int, *, by_abs: bool = False) -> list[str]:
    """The ``n`` features with the highest value (or absolute value) of ``column``, stable on ties."""
    s = column.to_numpy(dtype=np.float64)
    key = np.abs(s) if by_abs else s
    key = np.where(np.isfinite(key), key, -np.inf)
    order = np.lexsort((np.arange(len(s)), -key))
    return [str(column.index[i]) for i in order[:n]]


def select(
    table: pd.DataFrame,
    *,
    n_genes: int,
    genes: Sequence[str] | Mapping[str, Sequence[str]] | None,
    groups: Sequence[str] | str | None,
    by_abs: bool,
    kind: str,
    dendrogram: Dendrogram,
    group_what: str = "Groups",
) -> Selection:
    """Pick groups and features (top ``n_genes`` per group in blocks, or the given ones) and order them."""
    if not (isinstance(dendrogram, bool) or dendrogram in ("both", "groups", "genes")):
        raise ValueError(f"`dendrogram` must be a bool or one of 'both', 'groups', 'genes'; got {dendrogram!r}.")
    chosen = _check_groups(table, groups, group_what)
    blocks_of: list[tuple[str, list[str]]] = []
    if genes is None:
        if not isinstance(n_genes, int | np.integer) or isinstance(n_genes, bool) or n_genes < 1:
            raise ValueError(f"`n_genes` must be a positive integer, got {n_genes!r}.")
        for g in chosen:
            blocks_of.append((g, top_features(table[g], int(n_genes), by_abs=by_abs)))
    elif isinstance(genes, Mapping):
        for label, names in genes.items():
            blocks_of.append((str(label), _check_features(table, [names] if isinstance(names, str) else names, kind)))
    else:
        flat = [genes] if isinstance(genes, str) else list(genes)
        blocks_of.append(("", _check_features(table, flat, kind)))

    cluster_groups = dendrogram is True or dendrogram in ("both", "groups")
    cluster_features = dendrogram is True or dendrogram in ("both", "genes")
    sel = Selection(table=table, groups=chosen, features=[])
    all_features = list(dict.fromkeys(f for _, names in blocks_of for f in names))
    if cluster_groups and len(chosen) > 2:
        order, sel.group_linkage = _cluster(table.loc[all_features, chosen].to_numpy().T)
        sel.groups = [chosen[i] for i in order]
        rank = {g: i for i, g in enumerate(sel.groups)}
        # feature blocks follow the clustered group order (block-diagonal layout kept)
        blocks_of.sort(key=lambda b: rank.get(b[0], len(rank)))
    if cluster_features and len(all_features) > 2:
        order, sel.feature_linkage = _cluster(table.loc[all_features, sel.groups].to_numpy())
        sel.features = [all_features[i] for i in order]
    else:
        start = 0
        for label, names in blocks_of:
            sel.features.extend(names)
            if len(blocks_of) > 1 or label:
                sel.blocks.append((label, start, start + len(names)))
            start += len(names)
    return sel


def _cluster(x: np.ndarray):
    """Leaf order and linkage of the rows of ``x`` (average linkage, Euclidean, optimal leaf ordering)."""
    from scipy.cluster.hierarchy import leaves_list, linkage

    z = linkage(np.asarray(x, dtype=np.float64), method="average", metric="euclidean", optimal_ordering=True)
    return leaves_list(z), z


def scale(matrix: pd.DataFrame, standard_scale: str | None) -> pd.DataFrame:
    """Min–max scale to [0, 1] per gene (``"var"``, a column) or per group (``"group"``, a row)."""
    check_choice("standard_scale", standard_scale, (None, "var", "group"))
    if standard_scale is None:
        return matrix
    axis = 0 if standard_scale == "var" else 1
    lo = matrix.min(axis=axis)
    span = (matrix.max(axis=axis) - lo).replace(0, 1.0)
    return matrix.sub(lo, axis=1 - axis).div(span, axis=1 - axis)


# ---------------------------------------------------------------------------------------------------------------
# layout: the figure is sized from the labels so that nothing overlaps
# ---------------------------------------------------------------------------------------------------------------
DENDRO_IN = 0.6
CBAR_W_IN = 0.15
PAD_IN = 0.1
MARGIN_IN = 0.15


@dataclass
class Frame:
    """The figure, its main axes and what was reserved around it."""

    fig: Figure
    ax: Axes
    ax_given: bool
    tick_fs: float
    cbar_len_in: float


def cell_size_in(fontsize: float) -> float:
    """Side of a heatmap cell (inches) that fits one tick label per row or column."""
    return max(0.22, 1.6 * fontsize / 72)


def right_extra_in(*, colorbar_label: str, cbar_len_in: float, tick_fs: float, dendro: bool) -> float:
    """Width right of the heatmap: dendrogram, colour bar, its tick labels and its label."""
    label_fs = fontsize_pt("medium")
    lines = wrap_label(colorbar_label, cbar_len_in, label_fs).count("\n") + 1
    tick_w, _ = text_size_in(["−0.00"], tick_fs)
    width = PAD_IN + (DENDRO_IN + PAD_IN if dendro else 0.0) + CBAR_W_IN + 0.1 + tick_w
    width += lines * label_fs * 1.25 / 72 + 0.1
    return width + MARGIN_IN


def make_frame(
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str,
    colorbar_label: str,
    row_dendro: bool,
    col_dendro: bool,
    figsize: tuple[float, float] | None,
    ax: Axes | None,
    right_min_in: float = 0.0,
    cell_in: float | None = None,
) -> Frame:
    """Create (or adopt) the main axes, sized so that every row and column label is readable."""
    from matplotlib import rcParams

    tick_fs = fontsize_pt(rcParams["xtick.labelsize"])
    if ax is not None:
        fig = ax.get_figure()
        pos = ax.get_position()
        h_in = pos.height * fig.get_size_inches()[1]
        return Frame(fig, ax, True, tick_fs, min(h_in, 3.0))
    cell = cell_size_in(tick_fs) if cell_in is None else cell_in
    row_w, _ = text_size_in(row_labels, tick_fs)
    col_w, _ = text_size_in(col_labels, tick_fs)
    title_fs = fontsize_pt(rcParams["axes.titlesize"])
    left = MARGIN_IN + row_w + PAD_IN
    bottom = MARGIN_IN + col_w + PAD_IN
    heat_w = max(len(col_labels) * cell, 1.0)
    heat_h = max(len(row_labels) * cell, 1.5)
    cbar_len = min(heat_h, 3.0)
    right = max(right_extra_in(colorbar_label=colorbar_label, cbar_len_in=cbar_len, tick_fs=tick_fs,
                               dendro=row_dendro), right_min_in)
    fw = float(figsize[0]) if figsize is not None else left + heat_w + right
    title_lines = (wrap_label(title, fw - 2 * MARGIN_IN, title_fs).count("\n") + 1) if title else 0
    top = MARGIN_IN + title_lines * title_fs * 1.3 / 72 + 0.15 + (DENDRO_IN + PAD_IN if col_dendro else 0.0)
    if figsize is not None:
        fh = float(figsize[1])
        heat_w = max(fw - left - right, 0.5)
        heat_h = max(fh - top - bottom, 0.5)
        cbar_len = min(heat_h, 3.0)
    else:
        fw, fh = left + heat_w + right, bottom + heat_h + top
    fig = new_figure((fw, fh))
    main = fig.add_axes((left / fw, bottom / fh, heat_w / fw, heat_h / fh))
    main.set_label("mainplot")
    return Frame(fig, main, False, tick_fs, cbar_len)


def draw_dendrogram(dax: Axes, linkage, side: str, n: int) -> None:
    """Draw a scipy linkage next to the heatmap, leaves aligned with the cells (``side``: ``"right"``/``"top"``)."""
    from scipy.cluster.hierarchy import dendrogram

    d = dendrogram(linkage, no_plot=True)
    top = max((max(dc) for dc in d["dcoord"]), default=1.0) or 1.0
    for ic, dc in zip(d["icoord"], d["dcoord"], strict=True):
        pos = (np.asarray(ic) - 5.0) / 10.0 + 0.5
        if side == "top":
            dax.plot(pos, dc, color="0.3", lw=0.8)
        else:
            dax.plot(dc, pos, color="0.3", lw=0.8)
    if side == "top":
        dax.set_xlim(0, n)
        dax.set_ylim(0, top * 1.05)
    else:
        dax.set_ylim(n, 0)
        dax.set_xlim(0, top * 1.05)
    dax.set_axis_off()


def add_colorbar(frame: Frame, mappable, label: str, *, offset_in: float) -> Axes:
    """A vertical colour bar right of the main axes with a wrapped label."""
    cax = side_axes(frame.ax, "right", offset_in, CBAR_W_IN, length_in=frame.cbar_len_in, label="colorbar")
    cb = frame.fig.colorbar(mappable, cax=cax)
    cb.outline.set_linewidth(0.5)
    cb.set_label(wrap_label(label, frame.cbar_len_in, fontsize_pt("medium")))
    cb.ax.tick_params(labelsize=frame.tick_fs)
    return cax


def style_ticks(ax: Axes, *, xlabels: Sequence[str], ylabels: Sequence[str], fontsize: float) -> None:
    """Tick labels at cell centres: x rotated 90°, y horizontal."""
    ax.set_xticks(np.arange(len(xlabels)) + 0.5)
    ax.set_xticklabels(list(xlabels), rotation=90, ha="center", va="top", fontsize=fontsize)
    ax.set_yticks(np.arange(len(ylabels)) + 0.5)
    ax.set_yticklabels(list(ylabels), rotation=0, va="center", ha="right", fontsize=fontsize)
    ax.tick_params(length=2, pad=2)


def draw_blocks(ax: Axes, sel: Selection, *, swap_axes: bool, diagonal_color: str = "black",
                separator_color: str = "white") -> None:
    """Separate feature blocks and outline each group's own block (the block-diagonal of top genes)."""
    from matplotlib.patches import Rectangle

    row_of = {g: i for i, g in enumerate(sel.groups)}
    for k, (label, start, stop) in enumerate(sel.blocks):
        if k:
            (ax.axhline if swap_axes else ax.axvline)(start, color=separator_color, lw=1.5)
        if label in row_of:
            r = row_of[label]
            xy, w, h = ((r, start), 1, stop - start) if swap_axes else ((start, r), stop - start, 1)
            ax.add_patch(Rectangle(xy, w, h, fill=False, edgecolor=diagonal_color, lw=1.2, clip_on=False))


def colorbar_label(res: StoredResult, groupby: str | None, *, values: str, standard_scale: str | None,
                   latent: bool) -> str:
    """``"DeepSHAP: mean attribution toward own cell type"`` and variants."""
    if latent:
        meaning = "attribution to latent dimension"
    else:
        meaning = res.meaning(groupby, values)
    if standard_scale == "var":
        meaning += f" (scaled 0–1 per {res.feature_kind})"
    elif standard_scale == "group":
        meaning += " (scaled 0–1 per group)"
    return f"{res.label}: {meaning}"


# ---------------------------------------------------------------------------------------------------------------
# the plot
# ---------------------------------------------------------------------------------------------------------------
def heatmap(
    adata: AnnData,
    key: str,
    *,
    groupby: str | None = None,
    n_genes: int = 10,
    genes: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    groups: Sequence[str] | None = None,
    values: Literal["mean", "mean_abs"] = "mean",
    latent: bool = False,
    standard_scale: Literal["var", "group"] | None = None,
    dendrogram: Dendrogram = False,
    swap_axes: bool = False,
    cmap: str | Colormap | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    colorbar_title: str | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | dict[str, Axes] | None:
    """Heatmap of mean attributions, cell types × top genes of each cell type.

    Reads the ``genes × groups`` table a ``scexplain.tl`` function stored (``varm[key]``, or ``uns[key]``'s
    ``group_mean`` for tree models on an embedding, whose features are embedding dimensions), picks the top
    ``n_genes`` of every group and lays them out in blocks ordered like the groups, so that each group's own block
    lies on the diagonal (outlined). Signed values get a diverging colour map centred at 0 with symmetric limits;
    unsigned ones (``values="mean_abs"``, ``standard_scale``, VarGrad-like scores) a sequential one. The figure is
    sized from the labels so that none overlap.

    Parameters
    ----------
    adata
        AnnData holding a result of a ``scexplain.tl`` function.
    key
        The result's key (the method name, e.g. ``"deep_shap"``, unless ``key_added`` was given).
    groupby
        Column of ``adata.obs`` to group cells by; default: the ``groupby`` the result was computed with. Another
        column is summarised from the per-cell attributions ``layers[key]`` (or ``obsm[key]``).
    n_genes
        Top genes (features) per group, highest mean attribution first (highest ``|value|`` for ``latent=True``).
    genes
        Genes to show instead of the top ones: a list, or a mapping ``{group: genes}`` shown as blocks.
    groups
        Subset (and order) of the groups; default: all, in category order.
    values
        ``"mean"``: mean attribution (signed); ``"mean_abs"``: mean absolute attribution (``group_mean_abs``).
    latent
        Show ``varm[key + "_latent"]`` (genes × latent dimensions of an encoder explanation) instead: latent
        dimensions take the place of groups.
    standard_scale
        Min–max scale each gene (``"var"``) or each group (``"group"``) to [0, 1].
    dendrogram
        Hierarchically cluster (average linkage) groups and genes (``True`` or ``"both"``), only the groups (gene
        blocks follow their order) or only the genes; dendrograms are drawn alongside.
    swap_axes
        Genes as rows and groups as columns instead of groups as rows.
    cmap
        Colour map; default ``"RdBu_r"`` for signed values, ``"Reds"`` otherwise.
    vmin, vmax
        Colour limits; default symmetric around 0 (``±max|value|``) for signed values. Giving one of them for
        signed values mirrors it.
    title
        Figure title; default names the method and the selection.
    colorbar_title
        Colour bar label; default names the method and what a value means.
    figsize
        Figure size in inches; default: sized from the number and length of labels.
    ax
        Draw into this axes (colour bar and dendrograms are attached to its side).
    show
        Show the figure; default: only when nothing is returned and no ``ax`` is given (as in scanpy).
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.

    Returns
    -------
    The Figure if ``return_fig``; else, when not shown, a dict of axes (``"mainplot_ax"``, ``"color_legend_ax"``
    and, with dendrograms, ``"groups_dendrogram_ax"``/``"genes_dendrogram_ax"``); else ``None``.

    Examples
    --------
    >>> import scexplain as sx
    >>> sx.tl.deep_shap(adata, model, groupby="cell_type")  # doctest: +SKIP
    >>> sx.pl.heatmap(adata, "deep_shap", n_genes=5)  # doctest: +SKIP
    >>> fig = sx.pl.heatmap(adata, "deep_shap", dendrogram=True, show=False, return_fig=True)  # doctest: +SKIP
    """
    check_choice("values", values, ("mean", "mean_abs"))
    check_choice("standard_scale", standard_scale, (None, "var", "group"))
    res = get_result(adata, key)
    if latent:
        table = res.latent_table()
        gb = None
        group_what = "Latent dimensions"
    else:
        gb = res.groupby(groupby)
        table = res.group_table(gb, values)
        group_what = f"Groups of {gb!r}"
    sel = select(table, n_genes=n_genes, genes=genes, groups=groups, by_abs=latent, kind=res.feature_kind,
                 dendrogram=dendrogram, group_what=group_what)
    matrix = scale(sel.matrix(), standard_scale)
    signed = standard_scale is None and is_signed(matrix.to_numpy())
    lo, hi = color_limits(matrix.to_numpy(), signed=signed, vmin=vmin, vmax=vmax)
    cmap = cmap if cmap is not None else ("RdBu_r" if signed else "Reds")
    cb_label = colorbar_title if colorbar_title is not None else colorbar_label(
        res, gb, values=values, standard_scale=standard_scale, latent=latent)
    if title is None:
        what = "latent dimension" if latent else (gb or "group").replace("_", " ")
        noun = res.feature_kind + "s"
        title = (f"{res.label}: top {n_genes} {noun} per {what}" if genes is None
                 else f"{res.label}: {noun} × {what}")
    plot_matrix = matrix.T if swap_axes else matrix
    row_labels = [str(r) for r in plot_matrix.index]
    col_labels = [str(c) for c in plot_matrix.columns]
    group_link, feature_link = sel.group_linkage, sel.feature_linkage
    row_link, col_link = (feature_link, group_link) if swap_axes else (group_link, feature_link)

    frame = make_frame(row_labels, col_labels, title=title, colorbar_label=cb_label, row_dendro=row_link is not None,
                       col_dendro=col_link is not None, figsize=figsize, ax=ax)
    axes = draw_heatmap(frame, plot_matrix, sel, cmap=cmap, vmin=lo, vmax=hi, title=title, colorbar_label=cb_label,
                        row_link=row_link, col_link=col_link, swap_axes=swap_axes)
    names = {"row": "genes" if swap_axes else "groups", "col": "groups" if swap_axes else "genes"}
    out = {"mainplot_ax": axes["main"], "color_legend_ax": axes["colorbar"]}
    for side in ("row", "col"):
        if f"{side}_dendrogram" in axes:
            out[f"{names[side]}_dendrogram_ax"] = axes[f"{side}_dendrogram"]
    return finish(frame.fig, out, ax_given=frame.ax_given, show=show, return_fig=return_fig)


def pcolor_matrix(ax: Axes, values: np.ndarray, *, cmap, vmin: float, vmax: float):
    """Cells of ``values`` (rows top to bottom) as a mesh on ``[0, n_cols] × [0, n_rows]``, like seaborn's heatmap."""
    mesh = ax.pcolormesh(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xlim(0, values.shape[1])
    ax.set_ylim(values.shape[0], 0)
    return mesh


def draw_heatmap(
    frame: Frame,
    matrix: pd.DataFrame,
    sel: Selection | None,
    *,
    cmap,
    vmin: float,
    vmax: float,
    title: str,
    colorbar_label: str,
    row_link=None,
    col_link=None,
    swap_axes: bool = False,
) -> dict[str, Axes]:
    """Draw ``matrix`` (rows × columns, display order) into ``frame``: cells, ticks, blocks, dendrograms, colour bar."""
    ax = frame.ax
    pcolor_matrix(ax, matrix.to_numpy(dtype=np.float64), cmap=cmap, vmin=vmin, vmax=vmax)
    style_ticks(ax, xlabels=[str(c) for c in matrix.columns], ylabels=[str(r) for r in matrix.index],
                fontsize=frame.tick_fs)
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_linewidth(0.5)
    out: dict[str, Axes] = {"main": ax}
    if sel is not None and sel.blocks:
        draw_blocks(ax, sel, swap_axes=swap_axes)
    offset = PAD_IN
    if row_link is not None:
        dax = side_axes(ax, "right", offset, DENDRO_IN, label="row_dendrogram")
        draw_dendrogram(dax, row_link, "right", matrix.shape[0])
        out["row_dendrogram"] = dax
        offset += DENDRO_IN + PAD_IN
    top_ax = ax
    if col_link is not None:
        dax = side_axes(ax, "top", PAD_IN / 2, DENDRO_IN, label="col_dendrogram")
        draw_dendrogram(dax, col_link, "top", matrix.shape[1])
        out["col_dendrogram"] = dax
        top_ax = dax
    out["colorbar"] = add_colorbar(frame, ax.collections[0], colorbar_label, offset_in=offset)
    if title:
        add_title(frame, top_ax, title)
    return out


def add_title(frame: Frame, top_ax: Axes, title: str) -> None:
    """Title above the plot: the figure's (centred, wrapped) when the figure is ours, else ``top_ax``'s."""
    from matplotlib import rcParams

    fs = fontsize_pt(rcParams["axes.titlesize"])
    fw, fh = frame.fig.get_size_inches()
    if frame.ax_given:
        top_ax.set_title(wrap_label(title, top_ax.get_position().width * fw, fs), fontsize=fs)
    else:
        frame.fig.suptitle(wrap_label(title, fw - 2 * MARGIN_IN, fs), fontsize=fs, y=1 - MARGIN_IN / fh, va="top")


def save_heatmap(
    adata: AnnData,
    path: str | Path,
    key: str = "deep_shap",
    *,
    n_genes: int = 5,
    dpi: int = 150,
    **kwargs: Any,
) -> Path:
    """Draw :func:`heatmap` and save it as an image (PNG by default), closing the figure afterwards.

    Meant for scripts and the ``scexplain demo`` command; interactive users call :func:`heatmap` with
    ``return_fig=True`` and save the figure themselves.

    Parameters
    ----------
    adata
        AnnData holding a result of a ``scexplain.tl`` function.
    path
        Output file; the format follows its suffix (``.png``, ``.pdf``, ``.svg``).
    key
        The result's key.
    n_genes
        Top genes per group.
    dpi
        Resolution of raster formats.
    **kwargs
        Further keyword arguments of :func:`heatmap` (not ``ax``, ``show``, ``return_fig``).

    Returns
    -------
    The path written.

    Examples
    --------
    >>> from scexplain.pl._heatmap import save_heatmap
    >>> save_heatmap(adata, "heatmap.png", "deep_shap", n_genes=5)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    for bad in ("ax", "show", "return_fig"):
        if bad in kwargs:
            raise TypeError(f"save_heatmap() does not take `{bad}`.")
    fig = heatmap(adata, key, n_genes=n_genes, show=False, return_fig=True, **kwargs)
    try:
        path = Path(path)
        fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.1)
    finally:
        plt.close(fig)
    return path
