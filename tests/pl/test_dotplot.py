import matplotlib.pyplot as plt
import numpy as np
import pytest
import scanpy as sc
from matplotlib import colormaps
from matplotlib.colors import Normalize

import scexplain as sx
from scexplain._results import get_result


def _labels(axis):
    return [t.get_text() for t in axis.get_ticklabels()]


def _axes(adata, key="deep_shap", **kwargs):
    plot = sx.pl.dotplot(adata, key, return_fig=True, **kwargs)
    plot.make_figure()
    return plot, plot.get_axes()


def _dots(ax):
    return ax.collections[0]  # scanpy's scatter; the marks are drawn after it


def test_dotplot_is_scanpys_dotplot_of_the_stored_table(adata10, overlaps):
    plot, axes = _axes(adata10, n_genes=5)
    assert isinstance(plot, sc.pl.DotPlot)
    ax = axes["mainplot_ax"]
    groups = list(adata10.obs["cell_type"].cat.categories)
    markers = adata10.uns["toy"]["markers"]
    genes = [g for grp in groups for g in list(markers[grp])[:5]]
    assert _labels(ax.yaxis) == groups and _labels(ax.xaxis) == genes
    # colour = the stored mean attribution, on a diverging scale symmetric around 0
    mean = get_result(adata10, "deep_shap").group_table().loc[genes, groups].to_numpy().T
    lo, hi = plot.vboundnorm.vmin, plot.vboundnorm.vmax
    assert lo == pytest.approx(-hi) and hi == pytest.approx(np.abs(mean).max(), rel=1e-6)
    expected = colormaps["RdBu_r"](Normalize(lo, hi)(mean.ravel()))
    np.testing.assert_allclose(_dots(ax).get_facecolors(), expected, atol=1e-6)
    # size: fraction of the group's cells with φ > 0, drawn with scanpy's size rule (fraction/dot_max)^1.5 · 200
    layer = adata10.layers["deep_shap"]
    cols = adata10.var_names.get_indexer(genes)
    frac = np.stack([(layer[(adata10.obs["cell_type"] == g).to_numpy()][:, cols] > 0).mean(0) for g in groups])
    np.testing.assert_allclose(plot.dot_size_df.to_numpy(), frac)
    dot_max = np.ceil(frac.max() * 10) / 10
    np.testing.assert_allclose(_dots(ax).get_sizes(), (frac.ravel() / dot_max) ** 1.5 * 200, rtol=1e-6)
    assert axes["size_legend_ax"].get_title().replace("\n", " ") == "fraction of cells with φ > 0 (%)"
    assert axes["color_legend_ax"].get_title().replace("\n", " ") == "DeepSHAP: mean attribution toward own cell type"
    assert plot.var_groups.labels == groups
    assert overlaps(plot.fig, inside=False) == []


def test_dotplot_marks_exactly_the_planted_pairs(adata10, planted, marks_on):
    axes = _axes(adata10, n_genes=5)[1]
    ax = axes["mainplot_ax"]
    assert marks_on(ax, "absence") == planted(adata10, "absence")
    assert marks_on(ax, "unstable") == planted(adata10, "unstable")
    # the hatch lies on the dot: same centre, same area
    hatch = next(c for c in ax.collections if c.get_label() == "absence_marks")
    offsets = [tuple(o) for o in _dots(ax).get_offsets()]
    sizes = dict(zip(offsets, _dots(ax).get_sizes(), strict=True))
    for off, s in zip(hatch.get_offsets(), hatch.get_sizes(), strict=True):
        assert sizes[tuple(off)] == pytest.approx(s)
    legend = [t.get_text().split("\n")[0] for t in axes["marks_legend_ax"].get_legend().get_texts()]
    assert legend == ["score mostly from", "unstable: in top 5"]
    # scanpy's other legends are all there, in the legend column
    assert {"size_legend_ax", "color_legend_ax", "marks_legend_ax"} <= set(axes)


def test_dotplot_marks_follow_swap_axes_and_turn_off(adata10, planted, marks_on):
    ax = _axes(adata10, n_genes=5, swap_axes=True, dendrogram=True)[1]["mainplot_ax"]
    assert {(g, gene) for gene, g in marks_on(ax, "absence")} == planted(adata10, "absence")
    axes = _axes(adata10, n_genes=5, mark_absence=False, mark_unstable=False)[1]
    assert len(axes["mainplot_ax"].collections) == 1 and "marks_legend_ax" not in axes


def test_dotplot_mean_abs_unsigned_and_dendrogram(adata4, overlaps):
    plot, axes = _axes(adata4, "vargrad", n_genes=2, size="mean_abs", dendrogram=True)
    assert plot.vboundnorm.vmin == 0 and plot.cmap == "Reds"
    assert {"mainplot_ax", "size_legend_ax", "color_legend_ax", "group_extra_ax"} <= set(axes)
    # sizes are mean |φ| in units of a round value (1, 2 or 5 × 10^k) above the largest; the size legend shows
    # the values those sizes stand for, not percentages
    genes, groups = _labels(axes["mainplot_ax"].xaxis), _labels(axes["mainplot_ax"].yaxis)
    mean_abs = get_result(adata4, "vargrad").group_table(values="mean_abs").loc[genes, groups].to_numpy().T
    ratio = mean_abs / plot.dot_size_df.loc[groups, genes].to_numpy()
    np.testing.assert_allclose(ratio, plot.size_unit, rtol=1e-6)
    assert mean_abs.max() <= plot.size_unit < 2.5 * mean_abs.max()
    shown = [float(t.get_text()) for t in axes["size_legend_ax"].get_xticklabels()]
    assert max(shown) == pytest.approx(plot.dot_max * plot.size_unit)
    assert plot.dot_max * plot.size_unit >= mean_abs.max() > (plot.dot_max - 0.1) * plot.size_unit
    assert axes["size_legend_ax"].get_title() == "mean |φ| in group"
    assert overlaps(plot.fig, inside=False) == []


def test_dotplot_styling_api(adata4):
    plot = sx.pl.dotplot(adata4, "deep_shap", n_genes=2, return_fig=True)
    plot.style(largest_dot=400, grid=True).legend(colorbar_title="colour", size_title="size")
    plot.make_figure()
    axes = plot.get_axes()
    assert max(_dots(axes["mainplot_ax"]).get_sizes()) == pytest.approx(400)
    assert axes["color_legend_ax"].get_title() == "colour" and axes["size_legend_ax"].get_title() == "size"


def test_dotplot_on_tree_rep_and_ax(adata4, show_calls):
    _, ax = plt.subplots(figsize=(5, 3))
    out = sx.pl.dotplot(adata4, "tree_shap_gpu", n_genes=1, ax=ax)
    assert out["mainplot_ax"].get_figure() is ax.get_figure() and show_calls == []
    assert all(t.startswith("PC") for t in _labels(out["mainplot_ax"].xaxis))


def test_dotplot_fraction_needs_cells(adata4):
    adata = adata4.copy()
    del adata.layers["deep_shap"]
    with pytest.raises(KeyError, match=r"layers\['deep_shap'\].*scexplain\.tl\.deep_shap"):
        sx.pl.dotplot(adata, "deep_shap", n_genes=2)
    out = sx.pl.dotplot(adata, "deep_shap", n_genes=2, size="mean_abs", show=False)
    assert out["mainplot_ax"].collections


def test_dotplot_errors(adata4):
    with pytest.raises(ValueError, match="size"):
        sx.pl.dotplot(adata4, "deep_shap", size="count")
    with pytest.raises(KeyError, match=r"scexplain\.tl\.integrated_gradients"):
        sx.pl.dotplot(adata4, "integrated_gradients")
    with pytest.raises(ValueError, match=r"not a column of adata\.obs"):
        sx.pl.dotplot(adata4, "deep_shap", groupby="nope")
    with pytest.raises(KeyError, match="no 'presence' table"):
        sx.pl.dotplot(adata4, "deep_shap_plain", mark_absence=True)
