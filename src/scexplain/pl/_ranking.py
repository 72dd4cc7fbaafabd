"""``pl.ranking``: the top positive and negative genes of each group as horizontal bars, with intervals and marks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from .._keys import Key
from ._marks import ABSENCE_HATCH, Marks, absence_driven, contrast_color
from ._utils import check_choice, check_groups, check_positive_int, finish, get_result, text_width_in, top_features

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["ranking"]

POSITIVE_COLOR = "#b2182b"
NEGATIVE_COLOR = "#2166ac"


def ranked_pos_neg(column: pd.Series, n: int) -> pd.Series:
    """The ``n`` highest positive and ``n`` lowest negative values of ``column``, highest first."""
    pos = [g for g in top_features(column, n) if column[g] > 0]
    neg = [g for g in top_features(-column, n) if column[g] < 0 and g not in pos]
    return column[pos + neg[::-1]]


def _wanted(flag: bool | None, name: str, available: bool) -> bool:
    if flag not in (None, True, False):
        raise TypeError(f"`{name}` must be None (when stored), True or False, got {flag!r}.")
    return available if flag is None else flag


def ranking(
    adata: AnnData,
    key: str,
    *,
    groupby: str | None = None,
    groups: Sequence[str] | str | None = None,
    n_genes: int = 10,
    values: Literal["mean", "mean_abs"] = "mean",
    intervals: bool | None = None,
    mark_absence: bool | None = None,
    ncols: int = 4,
    sharex: bool = False,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | Axes | list[Axes] | None:
    """Bar charts of each group's top positive and top negative genes, with bootstrap intervals.

    One panel per group: the ``n_genes`` genes with the highest mean attribution toward the group (red, top) and
    the ``n_genes`` with the most negative one (blue, bottom): what pushes the model toward the cell type and what
    speaks against it. When the result stores bootstrap intervals (``n_bootstrap=``), each bar carries its
    percentile interval (a black line from ``ci_low`` to ``ci_high``). When it stores the presence/absence
    split, bars whose score comes mostly from absence (``|absence part| > |presence part|``: the group's cells
    have *less* of the gene than the reference) are hatched ``////``, as in :func:`~scexplain.pl.heatmap`. A
    legend explains both.

    Parameters
    ----------
    adata
        AnnData holding a result of a ``scexplain.tl`` function.
    key
        The result's key (e.g. ``"deep_shap"``).
    groupby
        Column of ``adata.obs``; default: the result's ``groupby``.
    groups
        Groups to show (one panel each); default: all.
    n_genes
        Genes per direction (positive, negative) and panel.
    values
        ``"mean"`` (signed) or ``"mean_abs"`` (mean |attribution|; only the top ``n_genes``, no intervals or
        marks: those describe the mean).
    intervals
        Draw the bootstrap intervals. ``None``: when stored; ``True``: require them; ``False``: off.
    mark_absence
        Hatch absence-driven bars. ``None``: when the split is stored; ``True``: require it; ``False``: off.
    ncols
        Panels per row.
    sharex
        Same x axis in every panel (compare magnitudes across groups).
    title
        Figure title; default names the method.
    figsize
        Figure size in inches; default: sized from the number of genes and groups.
    ax
        Draw into this axes; only with a single group.
    show
        Show the figure; default: only when nothing is returned and no ``ax`` is given.
    return_fig
        Return the Figure.

    Returns
    -------
    The Figure if ``return_fig``; else, when not shown, the Axes (``ax`` given) or the list of panel axes; else
    ``None``.

    Examples
    --------
    >>> import scexplain as sx
    >>> sx.pl.ranking(adata, "deep_shap", n_genes=5)  # doctest: +SKIP
    >>> sx.pl.ranking(adata, "deep_shap", groups="B cell", n_genes=10, intervals=False)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    check_choice("values", values, ("mean", "mean_abs"))
    n_genes = check_positive_int("n_genes", n_genes)
    ncols = check_positive_int("ncols", ncols)
    res = get_result(adata, key)
    gb = res.groupby(groupby)
    table = res.group_table(gb, values)
    chosen = check_groups(table, groups, f"Groups of {gb!r}")
    if ax is not None and len(chosen) != 1:
        raise ValueError(f"`ax` can hold one group's panel; pass `groups=` naming one of {chosen}, or no `ax`.")
    signed, stored = values == "mean", gb == res.stored_groupby
    if not signed and (intervals or mark_absence):
        raise ValueError("Intervals and absence marks describe the mean: use values='mean' with them.")
    show_ci = signed and _wanted(intervals, "intervals", stored and res.has_table(Key.table.ci_low))
    show_absence = signed and _wanted(mark_absence, "mark_absence", stored and res.has_table(Key.table.presence))
    bars = {g: ranked_pos_neg(table[g], n_genes) if signed else table[g][top_features(table[g], n_genes)]
            for g in chosen}
    ci = (res.group_table(gb, Key.table.ci_low), res.group_table(gb, Key.table.ci_high)) if show_ci else None
    absent = absence_driven(table, res.group_table(gb, Key.table.presence)) if show_absence else None
    meaning = f"{res.label}: {res.meaning(gb, values)}"

    if ax is not None:
        fig, axs = ax.get_figure(), [ax]
    else:
        nc = min(ncols, len(chosen))
        nr = int(np.ceil(len(chosen) / nc))
        if figsize is None:
            label_w = text_width_in([str(g) for s in bars.values() for g in s.index], "medium")
            rows = max(len(s) for s in bars.values())
            figsize = (nc * (label_w + 2.4) + 0.3, nr * (rows * 0.22 + 0.7) + 1.2)
        fig, grid = plt.subplots(nr, nc, figsize=figsize, squeeze=False, sharex=sharex, layout="constrained")
        axs = list(grid.ravel())
        for extra in axs[len(chosen):]:
            extra.set_visible(False)
        axs = axs[:len(chosen)]
    for g, a in zip(chosen, axs, strict=True):
        s = bars[g]
        _panel(a, s, g, ci=None if ci is None else (ci[0].loc[s.index, g], ci[1].loc[s.index, g]),
               absent=None if absent is None else absent.loc[s.index, g].to_numpy())
    handles = _legend_handles(res, ci is not None, absent is not None)
    if ax is not None:
        ax.set_xlabel(meaning)
        if handles:
            ax.legend(handles=handles, loc="best", fontsize="small")
        out = ax
    else:
        fig.suptitle(title if title is not None else f"{res.label}: top {res.feature_kind}s per {gb.replace('_', ' ')}")
        fig.supxlabel(meaning, fontsize="medium")
        if handles:
            fig.legend(handles=handles, loc="outside right upper", frameon=False,
                       fontsize="small")
        out = axs
    return finish(fig, out, ax_given=ax is not None, show=show, return_fig=return_fig)


def _legend_handles(res, with_ci: bool, with_absence: bool) -> list:
    from matplotlib.lines import Line2D

    handles = Marks(absence=pd.DataFrame() if with_absence else None).legend_handles(face="0.45")
    if with_ci:
        level = (res.params.get("bootstrap") or {}).get("ci_level", 0.95)
        handles.append(Line2D([], [], color="0.1", lw=1.2, marker="|", markersize=6,
                              label=f"{float(level):.0%} bootstrap\ninterval"))
    return handles


def _panel(ax: Axes, scores: pd.Series, group: str, *, ci, absent: np.ndarray | None) -> None:
    from matplotlib.colors import to_rgba

    y = np.arange(len(scores))
    vals = scores.to_numpy(dtype=np.float64)
    colors = np.where(vals >= 0, POSITIVE_COLOR, NEGATIVE_COLOR)
    bars = ax.barh(y, vals, color=colors, height=0.75)
    if absent is not None:
        for bar, color, flag in zip(bars, colors, absent, strict=True):
            if flag:
                bar.set_hatch(ABSENCE_HATCH)
                bar.set_hatchcolor(contrast_color(np.asarray(to_rgba(color))))
                bar.set_label("absence_mark")
    if ci is not None:
        lo, hi = (c.to_numpy(dtype=np.float64) for c in ci)
        ax.hlines(y, lo, hi, color="0.1", lw=1.2, zorder=3, label="intervals")
        ax.scatter(np.r_[lo, hi], np.r_[y, y], marker="|", s=30, color="0.1", zorder=3)
    ax.set_yticks(y)
    ax.set_yticklabels([str(i) for i in scores.index])
    ax.set_ylim(len(scores) - 0.5, -0.5)
    ax.axvline(0, color="0.2", lw=0.8)
    ax.set_title(group, fontsize="medium")
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="x", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
