import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

import scexplain as sx
from scexplain._results import get_result


def _labels(axis):
    return [t.get_text() for t in axis.get_ticklabels()]


def test_dotplot_content(adata10, overlaps):
    out = sx.pl.dotplot(adata10, "deep_shap", n_genes=3, show=False)
    ax = out["mainplot_ax"]
    groups = list(adata10.obs["cell_type"].cat.categories)
    markers = adata10.uns["toy"]["markers"]
    assert _labels(ax.yaxis) == groups
    assert _labels(ax.xaxis) == [g for grp in groups for g in list(markers[grp])[:3]]
    dots = ax.collections[0]
    lo, hi = dots.get_clim()
    assert lo == pytest.approx(-hi) and hi > 0
    # colour = mean attribution (varm), size ∝ fraction of the group's cells with positive attribution
    colors = np.asarray(dots.get_array()).reshape(len(groups), -1)
    genes = _labels(ax.xaxis)
    np.testing.assert_allclose(colors, get_result(adata10, "deep_shap").group_table().loc[genes, groups].to_numpy().T, rtol=1e-6)
    sizes = np.asarray(dots.get_sizes()).reshape(len(groups), -1)
    layer = adata10.layers["deep_shap"]
    cells = (adata10.obs["cell_type"] == groups[0]).to_numpy()
    frac = (layer[cells][:, adata10.var_names.get_indexer(genes)] > 0).mean(axis=0)
    np.testing.assert_allclose(sizes[0] / sizes[0].max(), frac / frac.max(), rtol=1e-6)
    assert out["size_legend_ax"].get_title(loc="left").replace("\n", " ") == "fraction of cells with φ > 0"
    assert "DeepSHAP: mean attribution toward own cell type" in out["color_legend_ax"].get_ylabel().replace("\n", " ")
    assert overlaps(ax.get_figure()) == []


def test_dotplot_mean_abs_unsigned_and_dendrogram(adata4, overlaps):
    fig = sx.pl.dotplot(adata4, "vargrad", n_genes=2, size="mean_abs", dendrogram=True, return_fig=True)
    assert isinstance(fig, Figure)
    ax = next(a for a in fig.axes if a.get_label() == "mainplot")
    dots = ax.collections[0]
    assert dots.get_clim()[0] == 0 and dots.get_cmap().name == "Reds"
    labels = {c.get_label() for c in ax.child_axes}
    assert {"colorbar", "size_legend", "row_dendrogram", "col_dendrogram"} <= labels
    assert overlaps(fig) == []


def test_dotplot_on_tree_rep_and_ax(adata4, show_calls):
    _, ax = plt.subplots(figsize=(5, 3))
    out = sx.pl.dotplot(adata4, "tree_shap_gpu", n_genes=1, ax=ax)
    assert out["mainplot_ax"] is ax and show_calls == []
    assert all(t.startswith("PC") for t in _labels(ax.xaxis))


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
