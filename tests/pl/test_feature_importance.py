import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes

import scexplain as sx
from scexplain.pl._feature_importance import swarm_offsets


def _labels(axis):
    return [t.get_text() for t in axis.get_ticklabels()]


def test_feature_importance_tree_rep(adata4, overlaps):
    out = sx.pl.feature_importance(adata4, "tree_shap_gpu", group="type_1", n_features=5, show=False)
    hm, bs = out["heatmap_ax"], out["beeswarm_ax"]
    phi = adata4.obsm["tree_shap_gpu"]
    names = [f"PC{i + 1}" for i in range(phi.shape[1])]
    overall = np.abs(phi).mean(axis=0)
    assert _labels(hm.yaxis) == [names[i] for i in np.argsort(-overall, kind="stable")[:5]]
    assert _labels(hm.xaxis) == ["type_0", "type_1", "type_2", "type_3"]
    lo, hi = hm.collections[0].get_clim()
    assert lo == pytest.approx(-hi)
    cells = (adata4.obs["cell_type"] == "type_1").to_numpy()
    own = np.abs(phi[cells]).mean(axis=0)
    assert _labels(bs.yaxis) == [names[i] for i in np.argsort(-own, kind="stable")[:5]]
    assert len(bs.collections) == 5 and all(len(c.get_offsets()) == cells.sum() for c in bs.collections)
    assert bs.get_title() == f"type_1: {cells.sum()} cells"
    fig = hm.get_figure()
    assert fig._suptitle.get_text() == "TreeSHAP: dimension importance per cell type"
    assert overlaps(fig) == []


def test_feature_importance_gene_level_single_panels(adata4, show_calls):
    _, ax = plt.subplots()
    out = sx.pl.feature_importance(adata4, "deep_shap", kind="beeswarm", group="type_0", n_features=3, ax=ax)
    assert out is ax and show_calls == []
    assert _labels(ax.yaxis) == ["gene_000", "gene_001", "gene_002"]
    ax2 = sx.pl.feature_importance(adata4, "vargrad", kind="heatmap", show=False)
    assert isinstance(ax2, Axes) and ax2.collections[0].get_clim()[0] == 0
    with pytest.raises(ValueError, match="one panel"):
        sx.pl.feature_importance(adata4, "deep_shap", ax=ax)
    with pytest.raises(ValueError, match="not a group"):
        sx.pl.feature_importance(adata4, "deep_shap", group="type_7")


def test_swarm_offsets_spread_ties_deterministically():
    x = np.array([0.0, 0.0, 0.0, 1.0, 0.5])
    off = swarm_offsets(x)
    assert np.abs(off).max() <= 0.4
    assert len(set(off[:3].round(6))) == 3  # tied points spread apart
    np.testing.assert_array_equal(off, swarm_offsets(x))


def test_feature_importance_long_names_legible(adata10, overlaps):
    fig = sx.pl.feature_importance(adata10, "deep_shap", group="CD4+/CD45RA+/CD25- Naive T", n_features=8,
                                   return_fig=True)
    assert overlaps(fig) == []
