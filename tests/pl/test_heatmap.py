import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

import scexplain as sx
from scexplain._results import get_result
from scexplain.pl._utils import ResultNotFoundError


def _labels(axis):
    return [t.get_text() for t in axis.get_ticklabels()]


def _main(fig):
    return next(a for a in fig.axes if a.get_label() == "mainplot")


def _colorbar(ax):
    return next(c for c in ax.child_axes if c.get_label() == "colorbar")


def _top_markers(adata, n):
    markers = adata.uns["toy"]["markers"]
    return [g for grp in adata.obs["cell_type"].cat.categories for g in list(markers[grp])[:n]]


def test_demo_sized_heatmap_content_and_legibility(adata10, overlaps):
    fig = sx.pl.heatmap(adata10, "deep_shap", n_genes=5, show=False, return_fig=True)
    assert isinstance(fig, Figure)
    ax = _main(fig)
    groups = list(adata10.obs["cell_type"].cat.categories)
    # rows: the cell types in category order; columns: top 5 genes of each type in blocks, highest first
    assert _labels(ax.yaxis) == groups
    assert _labels(ax.xaxis) == _top_markers(adata10, 5)
    # signed values: diverging, symmetric colour limits around 0
    mesh = ax.collections[0]
    lo, hi = mesh.get_clim()
    assert lo == pytest.approx(-hi) and hi > 0
    assert hi == pytest.approx(np.abs(get_result(adata10, "deep_shap").group_table().to_numpy()).max(), rel=1e-6)
    assert mesh.get_cmap().name == "RdBu_r"
    # title and colour bar label name the method and the meaning
    assert fig._suptitle.get_text() == "DeepSHAP: top 5 genes per cell type"
    cb_label = _colorbar(ax).get_ylabel().replace("\n", " ")
    assert cb_label == "DeepSHAP: mean attribution toward own cell type"
    # legible at the default size: nothing overlaps or leaves the figure, readable fonts, sensible size
    assert overlaps(fig) == []
    assert min(t.get_fontsize() for t in ax.get_xticklabels() + ax.get_yticklabels()) >= 8
    w, h = fig.get_size_inches()
    assert 6 < w < 20 and 2.5 < h < 8
    assert all(t.get_rotation() == 90 for t in ax.get_xticklabels())


def test_values_are_group_means_of_the_stored_table(adata4):
    fig = sx.pl.heatmap(adata4, "deep_shap", genes=["gene_003", "gene_000"], groups=["type_1", "type_0"],
                        show=False, return_fig=True)
    ax = _main(fig)
    assert _labels(ax.xaxis) == ["gene_003", "gene_000"]
    assert _labels(ax.yaxis) == ["type_1", "type_0"]
    shown = np.asarray(ax.collections[0].get_array()).reshape(2, 2)
    expected = get_result(adata4, "deep_shap").group_table().loc[["gene_003", "gene_000"], ["type_1", "type_0"]].to_numpy().T
    np.testing.assert_allclose(shown, expected, rtol=1e-6)
    assert fig._suptitle.get_text() == "DeepSHAP: genes × cell type"


def test_gene_mapping_blocks_and_swap_axes(adata4):
    genes = {"type_0": ["gene_000", "gene_001"], "type_2": ["gene_006"]}
    out = sx.pl.heatmap(adata4, "deep_shap", genes=genes, swap_axes=True, show=False)
    ax = out["mainplot_ax"]
    assert _labels(ax.yaxis) == ["gene_000", "gene_001", "gene_006"]
    assert _labels(ax.xaxis) == ["type_0", "type_1", "type_2", "type_3"]
    assert len(ax.patches) == 2  # each block outlined on its own group


def test_vmin_vmax_overrides_and_mirroring(adata4):
    ax = sx.pl.heatmap(adata4, "deep_shap", n_genes=2, vmax=0.5, show=False)["mainplot_ax"]
    assert ax.collections[0].get_clim() == (-0.5, 0.5)
    ax = sx.pl.heatmap(adata4, "deep_shap", n_genes=2, vmin=-2, vmax=1, show=False)["mainplot_ax"]
    assert ax.collections[0].get_clim() == (-2, 1)


@pytest.mark.parametrize("scale", ["var", "group"])
def test_standard_scale_is_sequential_0_1(adata4, scale):
    ax = sx.pl.heatmap(adata4, "deep_shap", n_genes=3, standard_scale=scale, show=False)["mainplot_ax"]
    values = np.asarray(ax.collections[0].get_array()).reshape(4, 12)
    assert ax.collections[0].get_clim() == (0.0, 1.0)
    assert ax.collections[0].get_cmap().name == "Reds"
    axis = 0 if scale == "var" else 1
    np.testing.assert_allclose(values.max(axis=axis), 1.0)
    np.testing.assert_allclose(values.min(axis=axis), 0.0)
    label = _colorbar(ax).get_ylabel().replace("\n", " ")
    assert ("per gene" if scale == "var" else "per group") in label


def test_unsigned_method_gets_sequential_map(adata4):
    ax = sx.pl.heatmap(adata4, "vargrad", n_genes=3, show=False)["mainplot_ax"]
    lo, hi = ax.collections[0].get_clim()
    assert lo == 0 and hi > 0
    assert ax.collections[0].get_cmap().name == "Reds"
    assert _colorbar(ax).get_ylabel().startswith("VarGrad")


def test_mean_abs_values(adata4):
    ax = sx.pl.heatmap(adata4, "deep_shap", n_genes=2, values="mean_abs", show=False)["mainplot_ax"]
    assert ax.collections[0].get_clim()[0] == 0
    assert "mean |attribution|" in _colorbar(ax).get_ylabel().replace("\n", " ")


def test_tree_shap_on_embedding(adata4):
    fig = sx.pl.heatmap(adata4, "tree_shap_gpu", n_genes=1, show=False, return_fig=True)
    ax = _main(fig)
    table = get_result(adata4, "tree_shap_gpu").group_table()
    assert _labels(ax.xaxis) == [table[g].idxmax() for g in table.columns]
    assert all(lab.startswith("PC") for lab in _labels(ax.xaxis))
    assert fig._suptitle.get_text().replace("\n", " ") == "TreeSHAP: top 1 dimensions per cell type"
    lo, hi = ax.collections[0].get_clim()
    assert lo == pytest.approx(-hi)


def test_latent(adata4):
    fig = sx.pl.heatmap(adata4, "deep_shap", latent=True, n_genes=3, show=False, return_fig=True)
    ax = _main(fig)
    assert _labels(ax.yaxis) == ["z0", "z1", "z2", "z3"]
    # top genes by |value| per latent dim (z1 and z3 are planted negative)
    assert _labels(ax.xaxis) == [f"gene_{i:03d}" for i in range(12)]
    lo, hi = ax.collections[0].get_clim()
    assert lo == pytest.approx(-hi)
    assert "latent" in _colorbar(ax).get_ylabel()


def test_missing_latent_names_the_call(adata4):
    with pytest.raises(KeyError, match=r"vargrad_latent.*scexplain\.tl\.vargrad.*explain='latent'"):
        sx.pl.heatmap(adata4, "vargrad", latent=True)


def test_other_groupby_is_computed_from_the_layer(adata4):
    adata = adata4.copy()
    adata.obs["half"] = np.where(np.arange(adata.n_obs) % 2, "odd", "even")
    ax = sx.pl.heatmap(adata, "deep_shap", groupby="half", genes=["gene_000"], show=False)["mainplot_ax"]
    assert _labels(ax.yaxis) == ["even", "odd"]
    layer = adata.layers["deep_shap"][:, 0]
    expected = [layer[::2].mean(), layer[1::2].mean()]
    np.testing.assert_allclose(np.asarray(ax.collections[0].get_array()).ravel(), expected, rtol=1e-5)


@pytest.mark.parametrize("dendrogram", [True, "groups", "genes"])
def test_dendrogram(adata10, dendrogram, overlaps):
    out = sx.pl.heatmap(adata10, "deep_shap", n_genes=2, dendrogram=dendrogram, show=False)
    ax = out["mainplot_ax"]
    groups, genes = _labels(ax.yaxis), _labels(ax.xaxis)
    assert sorted(groups) == sorted(adata10.obs["cell_type"].cat.categories)
    assert sorted(genes) == sorted(_top_markers(adata10, 2))
    assert ("groups_dendrogram_ax" in out) == (dendrogram in (True, "groups"))
    assert ("genes_dendrogram_ax" in out) == (dendrogram in (True, "genes"))
    if dendrogram in (True, "groups"):
        assert groups != list(adata10.obs["cell_type"].cat.categories)  # clustered, not category order
        assert out["groups_dendrogram_ax"].lines  # drawn
    if dendrogram == "groups":
        # gene blocks follow the clustered group order: the block diagonal is kept
        markers = adata10.uns["toy"]["markers"]
        assert genes == [g for grp in groups for g in list(markers[grp])[:2]]
    assert overlaps(ax.get_figure()) == []


def test_ax_and_show_behave_like_scanpy(adata4, show_calls):
    _, ax = plt.subplots(figsize=(6, 3))
    out = sx.pl.heatmap(adata4, "deep_shap", n_genes=2, ax=ax)
    assert out["mainplot_ax"] is ax and show_calls == []
    assert _labels(ax.yaxis) == ["type_0", "type_1", "type_2", "type_3"]
    assert out["color_legend_ax"] in ax.child_axes
    assert ax.get_title().startswith("DeepSHAP")
    # no ax, nothing returned: shown, returns None
    assert sx.pl.heatmap(adata4, "deep_shap", n_genes=2) is None
    assert show_calls == [1]
    # show=False: not shown, not closed, axes returned
    out = sx.pl.heatmap(adata4, "deep_shap", n_genes=2, show=False)
    assert show_calls == [1]
    assert out["mainplot_ax"].get_figure().number in plt.get_fignums()
    # return_fig: the figure, not shown
    fig2 = sx.pl.heatmap(adata4, "deep_shap", n_genes=2, return_fig=True)
    assert isinstance(fig2, Figure) and show_calls == [1]
    # explicit show=True with ax: shown, returns None
    _, ax3 = plt.subplots()
    assert sx.pl.heatmap(adata4, "deep_shap", n_genes=2, ax=ax3, show=True) is None
    assert show_calls == [1, 1]


def test_figsize_is_respected(adata4):
    fig = sx.pl.heatmap(adata4, "deep_shap", n_genes=2, figsize=(7, 3), return_fig=True)
    np.testing.assert_allclose(fig.get_size_inches(), (7, 3))


def test_missing_key_names_the_tl_function(adata4):
    with pytest.raises(KeyError, match=r"run scexplain\.tl\.smoothgrad\(adata, model, groupby=\.\.\.\) first") as e:
        sx.pl.heatmap(adata4, "smoothgrad")
    assert "key_added" in str(e.value) and "deep_shap" in str(e.value)  # lists what is there
    assert isinstance(e.value, ResultNotFoundError)
    with pytest.raises(KeyError, match=r"scexplain\.tl\.deep_shap"):
        sx.pl.heatmap(adata4, "my_run")


def test_missing_groupby_is_a_clear_error(_base4, write_gene):
    adata = _base4.copy()
    write_gene(adata, "deep_shap", groupby=None)
    with pytest.raises(ValueError, match=r"without `groupby`.*pass `groupby=`"):
        sx.pl.heatmap(adata, "deep_shap")
    ax = sx.pl.heatmap(adata, "deep_shap", groupby="cell_type", n_genes=1, show=False)["mainplot_ax"]
    assert _labels(ax.yaxis) == ["type_0", "type_1", "type_2", "type_3"]
    with pytest.raises(ValueError, match=r"not a column of adata\.obs"):
        sx.pl.heatmap(adata, "deep_shap", groupby="nope")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"genes": ["gene_000", "nope"]}, "not among the explained features: nope"),
        ({"groups": ["type_9"]}, r"\['type_9'\] not found"),
        ({"standard_scale": "obs"}, "standard_scale"),
        ({"n_genes": 0}, "n_genes"),
        ({"dendrogram": "rows"}, "dendrogram"),
        ({"values": "median"}, "values"),
    ],
)
def test_bad_arguments(adata4, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sx.pl.heatmap(adata4, "deep_shap", **kwargs)


def test_save_heatmap_writes_png_and_closes(adata4, tmp_path):
    n_before = len(plt.get_fignums())
    path = sx.pl.save_heatmap(adata4, tmp_path / "demo.png", "deep_shap", n_genes=2, dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(plt.get_fignums()) == n_before
    with pytest.raises(TypeError, match="ax"):
        sx.pl.save_heatmap(adata4, tmp_path / "x.png", ax=None)


def test_h5ad_round_trip(adata4, tmp_path):
    import anndata as ad

    adata4.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    for key in ("deep_shap", "vargrad", "tree_shap_gpu"):
        ax = sx.pl.heatmap(back, key, n_genes=2, show=False)["mainplot_ax"]
        names = adata4.uns[key]["names"]  # the stored ranking: top 2 of each group
        assert _labels(ax.xaxis) == [str(n) for g in names.dtype.names for n in names[g][:2]]
