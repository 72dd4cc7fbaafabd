import matplotlib.pyplot as plt
import numpy as np
import pytest
import scanpy as sc

import scexplain as sx
from scexplain._results import ResultNotFoundError, get_result


def _labels(axis):
    return [t.get_text() for t in axis.get_ticklabels()]


def _drawn(ax):
    """The values scanpy's MatrixPlot coloured (rows × columns of the main axes)."""
    return np.asarray(ax.collections[0].get_array(), dtype=float)


def _top_markers(adata, n):
    markers = adata.uns["toy"]["markers"]
    return [g for grp in adata.obs["cell_type"].cat.categories for g in list(markers[grp])[:n]]


def _axes(adata, key="deep_shap", **kwargs):
    plot = sx.pl.heatmap(adata, key, return_fig=True, **kwargs)
    plot.make_figure()
    return plot, plot.get_axes()


def test_demo_sized_heatmap_is_scanpys_matrixplot_of_the_stored_table(adata10, overlaps):
    plot, axes = _axes(adata10, n_genes=5)
    assert isinstance(plot, sc.pl.MatrixPlot)
    ax = axes["mainplot_ax"]
    groups = list(adata10.obs["cell_type"].cat.categories)
    # rows: the cell types in category order; columns: top 5 genes of each type in blocks, highest first
    assert _labels(ax.yaxis) == groups
    genes = _top_markers(adata10, 5)
    assert _labels(ax.xaxis) == genes
    table = get_result(adata10, "deep_shap").group_table()
    np.testing.assert_allclose(_drawn(ax), table.loc[genes, groups].to_numpy().T, rtol=1e-6)
    # one gene block per group, labelled by the group (scanpy's brackets)
    assert plot.var_groups.labels == groups
    assert [t.get_text() for t in axes["gene_group_ax"].texts] == groups
    # signed values: diverging, symmetric colour limits around 0
    lo, hi = ax.collections[0].get_clim()
    assert lo == pytest.approx(-hi) and hi == pytest.approx(np.abs(table.loc[genes].to_numpy()).max(), rel=1e-6)
    assert ax.collections[0].get_cmap().name == "RdBu_r"
    assert plot.fig_title == "DeepSHAP: top 5 genes per cell type"
    title = axes["color_legend_ax"].get_title().replace("\n", " ")
    assert title == "DeepSHAP: mean attribution toward own cell type"
    # legible: no two labels overlap (block labels, ticks, legends, title), fonts readable
    assert overlaps(plot.fig, inside=False) == []
    assert min(t.get_fontsize() for t in ax.get_xticklabels() + ax.get_yticklabels()) >= 7


def test_marks_exactly_the_planted_absence_and_unstable_pairs(adata10, planted, marks_on):
    axes = _axes(adata10, n_genes=5)[1]
    ax = axes["mainplot_ax"]
    assert marks_on(ax, "absence") == planted(adata10, "absence")
    assert marks_on(ax, "unstable") == planted(adata10, "unstable")
    # a large absence part that does not outweigh presence, and a stability of exactly 0.5, are not marked
    assert not marks_on(ax, "absence") & planted(adata10, "mixed")
    assert not marks_on(ax, "unstable") & planted(adata10, "borderline")
    texts = [t.get_text().replace("\n", " ") for t in axes["marks_legend_ax"].get_legend().get_texts()]
    assert texts == ["score mostly from absence (gene below the reference)",
                     "unstable: in top 5 in < 50% of bootstraps"]
    # the hatch is drawn in a colour that contrasts with the cell beneath
    hatch = next(c for c in ax.collections if c.get_label() == "absence_marks")
    assert hatch.get_hatch() == "////"


def test_marks_only_on_a_groups_top_genes(adata10, planted, marks_on):
    (group, gene), = planted(adata10, "far")  # absence-driven, but far below the group's top N_TOP
    shown = {group: [gene, *_top_markers(adata10, 5)[:2]]}
    ax = _axes(adata10, genes=shown)[1]["mainplot_ax"]
    assert gene in _labels(ax.xaxis)
    assert (group, gene) not in marks_on(ax, "absence")


def test_marks_follow_dendrogram_and_swap_axes(adata10, planted, marks_on):
    axes = _axes(adata10, n_genes=5, dendrogram=True, swap_axes=True)[1]
    ax = axes["mainplot_ax"]
    # genes are rows, groups columns now: marks read (gene, group)
    assert {(g, gene) for gene, g in marks_on(ax, "absence")} == planted(adata10, "absence")
    assert {(g, gene) for gene, g in marks_on(ax, "unstable")} == planted(adata10, "unstable")
    table = get_result(adata10, "deep_shap").group_table()
    np.testing.assert_allclose(_drawn(ax), table.loc[_labels(ax.yaxis), _labels(ax.xaxis)].to_numpy(), rtol=1e-6)


def test_marks_can_be_turned_off_and_are_absent_without_a_split(adata4, marks_on):
    ax = _axes(adata4, n_genes=3, mark_absence=False)[1]["mainplot_ax"]
    assert marks_on(ax, "absence") == set() and marks_on(ax, "unstable")
    axes = _axes(adata4, n_genes=3, mark_absence=False, mark_unstable=False)[1]
    assert "marks_legend_ax" not in axes and not marks_on(axes["mainplot_ax"], "unstable")
    axes = _axes(adata4, "deep_shap_plain", n_genes=3)[1]  # no split, no bootstrap stored: plain plot
    assert "marks_legend_ax" not in axes and len(axes["mainplot_ax"].collections) == 1
    with pytest.raises(ResultNotFoundError, match=r"no 'presence' table"):
        sx.pl.heatmap(adata4, "deep_shap_plain", mark_absence=True)
    with pytest.raises(ResultNotFoundError, match=r"no 'rank_stability' table.*n_bootstrap"):
        sx.pl.heatmap(adata4, "deep_shap_plain", mark_unstable=True)
    with pytest.raises(ValueError, match="values='mean'"):
        sx.pl.heatmap(adata4, "deep_shap", values="mean_abs", mark_absence=True)
    # mean_abs and latent plots draw no marks: the split describes the signed mean
    assert len(_axes(adata4, values="mean_abs", n_genes=2)[1]["mainplot_ax"].collections) == 1


def test_stability_threshold(adata10, planted, marks_on):
    ax = _axes(adata10, n_genes=5, stability_threshold=0.6)[1]["mainplot_ax"]
    assert marks_on(ax, "unstable") == planted(adata10, "unstable") | planted(adata10, "borderline")
    for bad in (0, 1.5, "half"):
        with pytest.raises(ValueError, match="stability_threshold"):
            sx.pl.heatmap(adata10, "deep_shap", stability_threshold=bad)


def test_scanpy_styling_api(adata4):
    plot = sx.pl.heatmap(adata4, "deep_shap", n_genes=2, return_fig=True)
    plot.style(cmap="PuOr", edge_color="none").legend(title="my title").swap_axes()
    plot.make_figure()
    axes = plot.get_axes()
    ax = axes["mainplot_ax"]
    assert ax.collections[0].get_cmap().name == "PuOr"
    assert axes["color_legend_ax"].get_title() == "my title"
    assert _labels(ax.xaxis) == ["type_0", "type_1", "type_2", "type_3"]  # swapped: groups along x
    lo, hi = ax.collections[0].get_clim()
    assert lo == pytest.approx(-hi)  # still centred at 0


def test_vmin_vmax_overrides_and_mirroring(adata4):
    ax = _axes(adata4, n_genes=2, vmax=0.5)[1]["mainplot_ax"]
    assert ax.collections[0].get_clim() == (-0.5, 0.5)
    ax = _axes(adata4, n_genes=2, vmin=-2, vmax=1)[1]["mainplot_ax"]
    assert ax.collections[0].get_clim() == (-2, 1)


def test_small_values_get_a_common_factor_not_colliding_labels(adata4, overlaps):
    """A colour scale of ±0.005 (latent attributions are often that small) reads ×10⁻³, with short tick labels."""
    plot, axes = _axes(adata4, n_genes=2, vmax=0.005)
    cbar = axes["color_legend_ax"]
    plot.fig.canvas.draw()
    assert cbar.xaxis.get_offset_text().get_text() != ""  # the common factor
    assert not any("0.00" in t.get_text() for t in cbar.get_xticklabels())  # not "−0.005", "0.000", ...
    assert overlaps(plot.fig, inside=False) == []
    assert _axes(adata4, n_genes=2, vmax=0.5)[1]["color_legend_ax"].xaxis.get_offset_text().get_text() == ""


@pytest.mark.parametrize("scale", ["var", "group"])
def test_standard_scale_is_sequential_0_1(adata4, scale):
    axes = _axes(adata4, n_genes=3, standard_scale=scale)[1]
    ax = axes["mainplot_ax"]
    values = _drawn(ax)
    assert ax.collections[0].get_clim() == (0.0, 1.0)
    assert ax.collections[0].get_cmap().name == "Reds"
    axis = 0 if scale == "var" else 1
    np.testing.assert_allclose(values.max(axis=axis), 1.0)
    np.testing.assert_allclose(values.min(axis=axis), 0.0)
    title = axes["color_legend_ax"].get_title().replace("\n", " ")
    assert ("per gene" if scale == "var" else "per group") in title


def test_unsigned_method_gets_sequential_map(adata4):
    axes = _axes(adata4, "vargrad", n_genes=3)[1]
    lo, hi = axes["mainplot_ax"].collections[0].get_clim()
    assert lo == 0 and hi > 0
    assert axes["mainplot_ax"].collections[0].get_cmap().name == "Reds"
    assert axes["color_legend_ax"].get_title().startswith("VarGrad")


def test_mean_abs_values(adata4):
    axes = _axes(adata4, n_genes=2, values="mean_abs")[1]
    ax = axes["mainplot_ax"]
    assert ax.collections[0].get_clim()[0] == 0
    table = get_result(adata4, "deep_shap").group_table(values="mean_abs")
    np.testing.assert_allclose(_drawn(ax), table.loc[_labels(ax.xaxis), _labels(ax.yaxis)].to_numpy().T, rtol=1e-6)
    assert "mean |attribution|" in axes["color_legend_ax"].get_title().replace("\n", " ")


def test_tree_shap_on_embedding(adata4):
    plot, axes = _axes(adata4, "tree_shap_gpu", n_genes=1)
    ax = axes["mainplot_ax"]
    table = get_result(adata4, "tree_shap_gpu").group_table()
    assert _labels(ax.xaxis) == [table[g].idxmax() for g in table.columns]
    assert all(lab.startswith("PC") for lab in _labels(ax.xaxis))
    assert plot.fig_title == "TreeSHAP: top 1 dimensions per cell type"
    lo, hi = ax.collections[0].get_clim()
    assert lo == pytest.approx(-hi)


def test_latent(adata4):
    axes = _axes(adata4, latent=True, n_genes=3)[1]
    ax = axes["mainplot_ax"]
    assert _labels(ax.yaxis) == ["z0", "z1", "z2", "z3"]
    # top genes by |value| per latent dim (z1 and z3 are planted negative)
    assert _labels(ax.xaxis) == [f"gene_{i:03d}" for i in range(12)]
    lo, hi = ax.collections[0].get_clim()
    assert lo == pytest.approx(-hi)
    assert "latent" in axes["color_legend_ax"].get_title()
    assert "marks_legend_ax" not in axes


def test_missing_latent_names_the_call(adata4):
    with pytest.raises(KeyError, match=r"vargrad_latent.*scexplain\.tl\.vargrad.*explain='latent'"):
        sx.pl.heatmap(adata4, "vargrad", latent=True)


def test_other_groupby_is_computed_from_the_layer_without_marks(adata4):
    adata = adata4.copy()
    adata.obs["half"] = np.where(np.arange(adata.n_obs) % 2, "odd", "even")
    axes = _axes(adata, groupby="half", genes=["gene_000"])[1]
    ax = axes["mainplot_ax"]
    assert _labels(ax.yaxis) == ["even", "odd"]
    layer = adata.layers["deep_shap"][:, 0]
    np.testing.assert_allclose(_drawn(ax).ravel(), [layer[::2].mean(), layer[1::2].mean()], rtol=1e-5)
    assert "marks_legend_ax" not in axes


def test_dendrogram_is_scanpys_over_attribution_profiles(adata10, overlaps):
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import squareform

    uns_before = set(adata10.uns)
    plot, axes = _axes(adata10, n_genes=2, dendrogram=True)
    ax = axes["mainplot_ax"]
    assert "group_extra_ax" in axes and axes["group_extra_ax"].lines  # scanpy drew the dendrogram
    groups, genes = _labels(ax.yaxis), _labels(ax.xaxis)
    # oracle: complete linkage of 1 − Pearson correlation between the groups' profiles over the shown genes
    table = get_result(adata10, "deep_shap").group_table()
    cats = list(adata10.obs["cell_type"].cat.categories)
    shown = list(dict.fromkeys(_top_markers(adata10, 2)))
    corr = np.corrcoef(table.loc[shown, cats].to_numpy().T)
    order = dendrogram(linkage(squareform(1 - corr, checks=False), "complete"), no_plot=True)["leaves"]
    assert groups == [cats[i] for i in order]
    # gene blocks follow the clustered group order: the block diagonal is kept
    markers = adata10.uns["toy"]["markers"]
    assert genes == [g for grp in groups for g in list(markers[grp])[:2]]
    assert set(adata10.uns) == uns_before  # nothing written into the user's AnnData
    assert overlaps(plot.fig, inside=False) == []


def test_chosen_genes_and_groups_in_their_order(adata4):
    plot, axes = _axes(adata4, genes=["gene_003", "gene_000"], groups=["type_1", "type_0"])
    ax = axes["mainplot_ax"]
    assert _labels(ax.xaxis) == ["gene_003", "gene_000"] and _labels(ax.yaxis) == ["type_1", "type_0"]
    table = get_result(adata4, "deep_shap").group_table()
    np.testing.assert_allclose(_drawn(ax), table.loc[["gene_003", "gene_000"], ["type_1", "type_0"]].to_numpy().T,
                               rtol=1e-6)
    assert plot.fig_title == "DeepSHAP: genes × cell type" and "gene_group_ax" not in axes  # a list: no blocks


def test_a_gene_in_two_blocks_is_drawn_twice(adata4):
    genes = {"type_0": ["gene_000", "gene_003"], "type_1": ["gene_003"]}
    ax = _axes(adata4, genes=genes)[1]["mainplot_ax"]
    assert _labels(ax.xaxis) == ["gene_000", "gene_003", "gene_003"]
    table = get_result(adata4, "deep_shap").group_table()
    np.testing.assert_allclose(_drawn(ax), table.loc[["gene_000", "gene_003", "gene_003"]].to_numpy().T, rtol=1e-6)


def test_ax_and_show_behave_like_scanpy(adata4, show_calls):
    _, ax = plt.subplots(figsize=(6, 3))
    out = sx.pl.heatmap(adata4, "deep_shap", n_genes=2, ax=ax)
    assert show_calls == [] and out["mainplot_ax"].get_figure() is ax.get_figure()
    assert _labels(out["mainplot_ax"].yaxis) == ["type_0", "type_1", "type_2", "type_3"]
    # no ax, nothing returned: shown, returns None
    assert sx.pl.heatmap(adata4, "deep_shap", n_genes=2) is None
    assert show_calls == [1]
    # show=False: not shown, not closed, axes returned
    out = sx.pl.heatmap(adata4, "deep_shap", n_genes=2, show=False)
    assert show_calls == [1]
    assert out["mainplot_ax"].get_figure().number in plt.get_fignums()
    # return_fig: the plot object, not drawn, not shown
    plot = sx.pl.heatmap(adata4, "deep_shap", n_genes=2, return_fig=True)
    assert isinstance(plot, sc.pl.MatrixPlot) and plot.fig is None and show_calls == [1]
    # explicit show=True with ax: shown, returns None
    _, ax3 = plt.subplots()
    assert sx.pl.heatmap(adata4, "deep_shap", n_genes=2, ax=ax3, show=True) is None
    assert show_calls == [1, 1]


def test_figsize_is_respected(adata4):
    plot, _ = _axes(adata4, n_genes=2, figsize=(7, 3))
    np.testing.assert_allclose(plot.fig.get_size_inches(), (7, 3))


def test_missing_key_names_the_tl_function(adata4):
    with pytest.raises(KeyError, match=r"run scexplain\.tl\.smoothgrad\(adata, model, groupby=\.\.\.\) first") as e:
        sx.pl.heatmap(adata4, "smoothgrad")
    assert "key_added" in str(e.value) and "deep_shap" in str(e.value)  # lists what is there
    assert isinstance(e.value, ResultNotFoundError)
    with pytest.raises(KeyError, match=r"scexplain\.tl\.deep_shap"):
        sx.pl.heatmap(adata4, "my_run")


def test_missing_and_bad_groupby_are_clear_errors(_base4, write_gene):
    adata = _base4.copy()
    write_gene(adata, "deep_shap", groupby=None)
    with pytest.raises(ValueError, match=r"without `groupby`.*pass `groupby=`"):
        sx.pl.heatmap(adata, "deep_shap")
    ax = _axes(adata, groupby="cell_type", n_genes=1)[1]["mainplot_ax"]
    assert _labels(ax.yaxis) == ["type_0", "type_1", "type_2", "type_3"]
    with pytest.raises(ValueError, match=r"not a column of adata\.obs"):
        sx.pl.heatmap(adata, "deep_shap", groupby="nope")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"genes": ["gene_000", "nope"]}, "not among the explained features: nope"),
        ({"genes": {}}, "empty"),
        ({"groups": ["type_9"]}, r"\['type_9'\] not found"),
        ({"standard_scale": "obs"}, "standard_scale"),
        ({"n_genes": 0}, "n_genes"),
        ({"values": "median"}, "values"),
    ],
)
def test_bad_arguments(adata4, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sx.pl.heatmap(adata4, "deep_shap", **kwargs)


def test_bad_dendrogram_and_mark_flags(adata4):
    with pytest.raises(TypeError, match="dendrogram"):
        sx.pl.heatmap(adata4, "deep_shap", dendrogram="genes")
    with pytest.raises(TypeError, match="mark_absence"):
        sx.pl.heatmap(adata4, "deep_shap", mark_absence="yes")


def test_save_heatmap_writes_png_and_closes(adata4, tmp_path):
    n_before = len(plt.get_fignums())
    path = sx.pl.save_heatmap(adata4, tmp_path / "demo.png", "deep_shap", n_genes=2, dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(plt.get_fignums()) == n_before
    with pytest.raises(TypeError, match="ax"):
        sx.pl.save_heatmap(adata4, tmp_path / "x.png", ax=None)


def test_h5ad_round_trip(adata4, tmp_path, marks_on):
    import anndata as ad

    adata4.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    for key in ("deep_shap", "vargrad", "tree_shap_gpu"):
        ax = _axes(back, key, n_genes=2)[1]["mainplot_ax"]
        names = adata4.uns[key]["names"]  # the stored ranking: top 2 of each group
        assert _labels(ax.xaxis) == [str(n) for g in names.dtype.names for n in names[g][:2]]
    before = marks_on(_axes(adata4, n_genes=3)[1]["mainplot_ax"], "absence")
    assert marks_on(_axes(back, n_genes=3)[1]["mainplot_ax"], "absence") == before != set()
