import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes

import scexplain as sx


def test_embedding_single_gene(adata4, overlaps):
    ax = sx.pl.embedding(adata4, "deep_shap", "gene_000", basis="pca", show=False)
    assert isinstance(ax, Axes)
    assert ax.get_title() == "gene_000: DeepSHAP attribution"
    assert ax.get_xlabel() == "PC1"
    dots = ax.collections[-1]
    lo, hi = dots.get_clim()
    values = adata4.layers["deep_shap"][:, 0]
    assert lo == pytest.approx(-hi) and hi == pytest.approx(np.abs(values).max(), rel=1e-6)
    assert dots.get_cmap().name == "RdBu_r"
    # every cell drawn, largest |attribution| last (on top)
    drawn = np.asarray(dots.get_array())
    np.testing.assert_allclose(np.sort(drawn), np.sort(values), rtol=1e-6)
    assert abs(drawn[-1]) == pytest.approx(np.abs(values).max())
    assert "DeepSHAP" in dots.colorbar.ax.get_ylabel()
    assert overlaps(ax.get_figure()) == []


def test_embedding_several_genes_and_return_fig(adata4):
    fig = sx.pl.embedding(adata4, "vargrad", ["gene_000", "gene_004"], return_fig=True)  # default basis: PCA
    panels = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in panels] == ["gene_000: VarGrad attribution", "gene_004: VarGrad attribution"]
    assert panels[0].collections[-1].get_clim()[0] == 0  # unsigned: sequential from 0


def test_embedding_tree_rep_and_ax(adata4, show_calls):
    _, ax = plt.subplots()
    out = sx.pl.embedding(adata4, "tree_shap_gpu", "PC2", basis="X_pca", ax=ax)
    assert out is ax and show_calls == []
    v = adata4.obsm["tree_shap_gpu"][:, 1]
    np.testing.assert_allclose(np.sort(np.asarray(ax.collections[-1].get_array())), np.sort(v), rtol=1e-6)


def test_embedding_errors(adata4):
    with pytest.raises(ValueError, match="not among the explained features"):
        sx.pl.embedding(adata4, "deep_shap", "nope")
    with pytest.raises(ValueError, match=r"umap.*not found"):
        sx.pl.embedding(adata4, "deep_shap", "gene_000", basis="umap")
    adata = adata4.copy()
    del adata.obsm["X_pca"]
    with pytest.raises(ValueError, match=r"scanpy\.tl\.umap"):
        sx.pl.embedding(adata, "deep_shap", "gene_000")
    with pytest.raises(KeyError, match=r"scexplain\.tl\.deep_shap"):
        sx.pl.embedding(adata4, "deep_shap_2", "gene_000")
