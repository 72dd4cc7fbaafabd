"""What :func:`~scexplain.pl.heatmap` and :func:`~scexplain.pl.dotplot` share.

The selection of groups and genes, the small AnnData scanpy's plot classes are fed with, and what scexplain adds
to those classes (marks, their legend, room for the gene-block labels).

scanpy's :class:`~scanpy.pl.MatrixPlot` and :class:`~scanpy.pl.DotPlot` draw values per group from an AnnData.
Here they are given the stored group tables (``values_df``, ``dot_color_df``) and an AnnData with one row per
group whose values are the group's attributions: scanpy's dendrogram (:func:`scanpy.tl.dendrogram`) then clusters
the groups by their attribution profiles, not by expression, and nothing is written into the user's AnnData.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ._marks import Marks, hatch_cells, hatch_dots, question_marks
from ._utils import (
    StoredResult,
    check_groups,
    check_positive_int,
    color_limits,
    is_signed,
    text_width_in,
    top_features,
    wrap_label,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["LEGENDS_WIDTH", "GroupPlotMixin", "Selection", "colorbar_title", "finish_plot", "select"]

#: width of the legend column (inches): scanpy's 1.5 is too narrow for the marks' legend and long titles
LEGENDS_WIDTH = 2.0
#: characters per line of legend titles in that column at scanpy's "small" legend font size
LEGEND_CHARS = 22


@dataclass
class Selection:
    """Groups and features of a plot: the table (features × groups), the groups, the features in blocks."""

    table: pd.DataFrame
    groups: list[str]
    var_names: list[str] | dict[str, list[str]]  # a dict gives scanpy's gene blocks (brackets)

    @property
    def features(self) -> list[str]:
        """Features in display order (a gene topping two groups appears twice)."""
        if isinstance(self.var_names, dict):
            return [f for names in self.var_names.values() for f in names]
        return list(self.var_names)

    def frame(self, table: pd.DataFrame | None = None) -> pd.DataFrame:
        """``groups × features`` of ``table`` (default: the plotted one), in display order (columns may repeat)."""
        table = self.table if table is None else table
        return table.loc[self.features, self.groups].T

    def proxy(self, groupby: str) -> AnnData:
        """An AnnData with one row per group whose values are the group's column of the table (unique features)."""
        features = list(dict.fromkeys(self.features))
        obs = pd.DataFrame({groupby: pd.Categorical(self.groups, categories=self.groups)},
                           index=[f"group{i}" for i in range(len(self.groups))])
        x = self.table.loc[features, self.groups].T.to_numpy(dtype=np.float64)
        return AnnData(x, obs=obs, var=pd.DataFrame(index=pd.Index(features, dtype=object)))


def _check_features(table: pd.DataFrame, names: Sequence[str] | str, kind: str) -> list[str]:
    names = [names] if isinstance(names, str) else [str(n) for n in names]
    if not names:
        raise ValueError(f"The list of {kind}s is empty.")
    missing = [n for n in names if n not in table.index]
    if missing:
        shown = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
        raise ValueError(f"{len(missing)} {kind}(s) not among the explained features: {shown}.")
    return names


def select(
    table: pd.DataFrame,
    *,
    n_genes: int,
    genes: Sequence[str] | Mapping[str, Sequence[str]] | None,
    groups: Sequence[str] | str | None,
    by_abs: bool,
    kind: str,
    group_what: str,
) -> Selection:
    """The top ``n_genes`` of every chosen group as one block per group, or the given genes (a mapping: blocks)."""
    chosen = check_groups(table, groups, group_what)
    if genes is None:
        n = check_positive_int("n_genes", n_genes)
        var_names: Any = {g: top_features(table[g], n, by_abs=by_abs) for g in chosen}
    elif isinstance(genes, Mapping):
        if not genes:
            raise ValueError(f"`genes` is empty; name at least one {kind}.")
        var_names = {str(label): _check_features(table, names, kind) for label, names in genes.items()}
    else:
        var_names = _check_features(table, genes, kind)
    return Selection(table=table, groups=chosen, var_names=var_names)


def scale(frame: pd.DataFrame, standard_scale: str | None) -> pd.DataFrame:
    """Min–max scale like scanpy's ``standard_scale``: to [0, 1] per gene (``"var"``) or per group (``"group"``)."""
    if standard_scale == "group":
        frame = frame.sub(frame.min(axis=1), axis=0)
        return frame.div(frame.max(axis=1), axis=0).fillna(0)
    if standard_scale == "var":
        frame = frame - frame.min(axis=0)
        return (frame / frame.max(axis=0)).fillna(0)
    return frame


def colors_and_limits(values: pd.DataFrame, *, standard_scale, cmap, vmin, vmax) -> tuple[Any, float, float]:
    """Colour map and limits: diverging ``RdBu_r`` symmetric around 0 for signed values, ``Reds`` otherwise."""
    signed = standard_scale is None and is_signed(values.to_numpy())
    lo, hi = color_limits(values.to_numpy(), signed=signed, vmin=vmin, vmax=vmax)
    return (cmap if cmap is not None else ("RdBu_r" if signed else "Reds")), lo, hi


def _common_factor(ax) -> None:
    """Tick labels of a small colour scale with a common factor (×10⁻³) instead of long labels that collide."""
    from matplotlib.ticker import ScalarFormatter

    formatter = ScalarFormatter(useMathText=True)
    formatter.set_powerlimits((-2, 3))
    ax.xaxis.set_major_formatter(formatter)


def colorbar_title(res: StoredResult, groupby: str | None, *, values: str, standard_scale: str | None,
                   latent: bool) -> str:
    """``"DeepSHAP: mean attribution toward own cell type"`` and variants, wrapped for scanpy's legend column."""
    meaning = "attribution to latent dimension" if latent else res.meaning(groupby, values)
    if standard_scale == "var":
        meaning += f" (scaled 0–1 per {res.feature_kind})"
    elif standard_scale == "group":
        meaning += " (scaled 0–1 per group)"
    return wrap_label(f"{res.label}: {meaning}", LEGEND_CHARS)


def default_title(res: StoredResult, what: str, n_genes: int, genes) -> str:
    """``"DeepSHAP: top 5 genes per cell type"`` (or ``"DeepSHAP: genes × cell type"`` for given genes)."""
    noun = res.feature_kind + "s"
    what = what.replace("_", " ")
    return f"{res.label}: top {n_genes} {noun} per {what}" if genes is None else f"{res.label}: {noun} × {what}"


class GroupPlotMixin:
    """scexplain's additions to scanpy's :class:`~scanpy.pl.MatrixPlot` / :class:`~scanpy.pl.DotPlot`.

    - marks over the drawn values (:mod:`scexplain.pl._marks`), following scanpy's reordering (dendrogram) and
      ``swap_axes``, explained in a legend above the colour bar (``ax_dict["marks_legend_ax"]``);
    - enough height above the plot for the rotated labels of the gene blocks, which scanpy lets run into the
      title when they are long (``"CD4+/CD45RA+/CD25- Naive T"``).
    """

    marks: Marks
    #: the legends scanpy draws in the legend column, top to bottom (below the marks legend)
    legend_rows: tuple[str, ...] = ("color",)

    def _displayed(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` (groups × features like the plotted values) as the plot draws it: reordered, maybe swapped."""
        if self.var_names_idx_order is not None:
            frame = frame.iloc[:, list(self.var_names_idx_order)]
        if self.categories_order is not None:
            frame = frame.loc[list(self.categories_order)]
        return frame.T if self.are_axes_swapped else frame

    def _mark_frames(self) -> dict[str, np.ndarray]:
        out = {}
        for name in ("absence", "unstable"):
            frame = getattr(self.marks, name)
            if frame is not None:
                out[name] = self._displayed(frame).to_numpy(dtype=bool)
        return out

    def _draw_cell_marks(self, ax: Axes, colors: np.ndarray | None, dots=None) -> None:
        """Draw the marks: on cells coloured ``colors`` (rows × columns × RGBA), or on the scatter ``dots``."""
        frames = self._mark_frames()
        if "absence" in frames:
            if dots is None:
                hatch_cells(ax, frames["absence"], colors)
            else:
                hatch_dots(ax, dots, frames["absence"].ravel())
        if "unstable" in frames:
            question_marks(ax, frames["unstable"], colors)

    # -- legend column: [spacer, marks legend, gap, <legend_rows>], heights in inches -------------------------
    def _marks_legend_height(self) -> float:
        handles = self.marks.legend_handles()
        lines = sum(h.get_label().count("\n") + 1 for h in handles)
        return 0.05 + 0.16 * lines + 0.1 * len(handles) if handles else 0.0

    def _legend_layout(self) -> list[tuple[str, float]]:
        base = self.MIN_FIGURE_HEIGHT  # scanpy sizes its legends as fractions of its minimum figure height
        title_lines = str(self.color_legend_title or "").count("\n") + 1
        # room above a legend for its title (and for the tick labels of the legend above it)
        gap = {"size": 0.25 + 0.15 * (str(getattr(self, "size_title", "")).count("\n") + 1),
               "color": 0.3 + 0.15 * title_lines}
        shown = [n for n in self.legend_rows if getattr(self, {"size": "show_size_legend"}.get(n, "show_colorbar"), True)]
        rows: list[tuple[str, float]] = []
        if self.marks.legend_handles():
            rows.append(("marks", self._marks_legend_height()))
        for name in shown:
            rows += [("gap", gap[name]), (name, base * (0.27 if name == "size" else 0.08))]
        return rows

    def _plot_legend(self, legend_ax, return_ax_dict, normalize):
        fig = legend_ax.get_figure()
        column_in = legend_ax.get_position().height * fig.get_size_inches()[1]
        rows = self._legend_layout()
        ratios = [max(column_in - sum(r[1] for r in rows), 0.01)] + [r[1] for r in rows]
        legend_ax.axis("off")
        grid = legend_ax.get_subplotspec().subgridspec(len(ratios), 1, height_ratios=ratios, hspace=0)
        for (name, _), spec in zip(rows, list(grid)[1:], strict=True):
            if name == "gap":
                continue
            ax = fig.add_subplot(spec)
            if name == "marks":
                ax.axis("off")
                ax.legend(handles=self.marks.legend_handles(), loc="upper left", frameon=False, fontsize="small",
                          borderaxespad=0, borderpad=0, handlelength=1.8, handleheight=1.8, labelspacing=0.6)
                return_ax_dict["marks_legend_ax"] = ax
            elif name == "size":
                self._plot_size_legend(ax)
                return_ax_dict["size_legend_ax"] = ax
            else:
                self._plot_colorbar(ax, normalize)
                _common_factor(ax)
                return_ax_dict["color_legend_ax"] = ax

    def make_figure(self) -> None:
        """Render the plot (scanpy's :meth:`~scanpy.pl.MatrixPlot.make_figure`), room made for labels first."""
        from matplotlib import rcParams

        if self.height is None:
            share = rcParams["figure.subplot.top"] - rcParams["figure.subplot.bottom"]  # scanpy's grid's share
            need = (sum(r[1] for r in self._legend_layout()) + 0.1) / share
            if self.var_groups and not self.are_axes_swapped:
                labels = list(self.var_groups.labels)
                rotated = self.var_group_rotation not in (None, 0) or max(len(x) for x in labels) > 4
                label_in = text_width_in(labels, rcParams["font.size"]) if rotated else 0.25
                rows = len(self.categories) * self.DEFAULT_CATEGORY_HEIGHT
                need = max(need, rows + self.DEFAULT_CATEGORY_HEIGHT / 2 + (label_in + 0.15) / share)
            self.min_figure_height = max(self.min_figure_height, need)
        super().make_figure()


def finish_plot(plot, *, ax_given: bool, show: bool | None, return_fig: bool):
    """Return like scanpy's plot functions: the plot object (``return_fig``), else the axes dict or ``None``.

    ``show=None`` shows only when nothing is returned and no ``ax`` was given.
    """
    import matplotlib.pyplot as plt

    if return_fig:
        return plot
    plot.make_figure()
    if show is None:
        show = not ax_given
    if show:
        plt.show()
        return None
    return plot.get_axes()


def add_dendrogram(plot, proxy: AnnData, groupby: str) -> None:
    """Add scanpy's dendrogram over the groups' attribution profiles (correlation distance, complete linkage)."""
    import scanpy as sc

    if proxy.n_obs > 2:
        if proxy.n_vars < 2:
            raise ValueError("`dendrogram=True` clusters groups by their attributions: show at least 2 genes.")
        sc.tl.dendrogram(proxy, groupby, var_names=list(proxy.var_names))
    plot.add_dendrogram()
