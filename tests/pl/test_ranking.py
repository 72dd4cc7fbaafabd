import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

import scexplain as sx
from scexplain._results import get_result


def _labels(ax):
    return [t.get_text() for t in ax.get_yticklabels()]


def test_ranking_top_positive_and_negative(adata4, overlaps):
    axs = sx.pl.ranking(adata4, "deep_shap", n_genes=3, show=False)
    assert [a.get_title() for a in axs] == ["type_0", "type_1", "type_2", "type_3"]
    table = get_result(adata4, "deep_shap").group_table()
    for ax, group in zip(axs, table.columns, strict=True):
        col = table[group]
        pos = col[col > 0].sort_values(ascending=False).index[:3].tolist()
        neg = col[col < 0].sort_values().index[:3].tolist()[::-1]
        assert _labels(ax) == pos + neg
        widths = [p.get_width() for p in ax.patches]
        np.testing.assert_allclose(widths, col[pos + neg].to_numpy(), rtol=1e-6)
        assert widths == sorted(widths, reverse=True)  # highest on top
    fig = axs[0].get_figure()
    assert fig._suptitle.get_text() == "DeepSHAP: top genes per cell type"
    assert fig._supxlabel.get_text() == "DeepSHAP: mean attribution toward own cell type"
    assert overlaps(fig) == []


def test_ranking_long_names_legible(adata10, overlaps):
    fig = sx.pl.ranking(adata10, "deep_shap", n_genes=3, return_fig=True)
    assert isinstance(fig, Figure)
    assert len([a for a in fig.axes if a.get_visible()]) == 10
    assert overlaps(fig) == []


def test_ranking_single_group_ax_and_unsigned(adata4, show_calls):
    _, ax = plt.subplots()
    out = sx.pl.ranking(adata4, "vargrad", groups="type_2", n_genes=4, ax=ax)
    assert out is ax and show_calls == []
    assert len(ax.patches) == 4 and all(p.get_width() >= 0 for p in ax.patches)
    assert ax.get_xlabel().startswith("VarGrad")
    with pytest.raises(ValueError, match="one group"):
        sx.pl.ranking(adata4, "deep_shap", ax=ax)


def test_ranking_tree_rep(adata4):
    axs = sx.pl.ranking(adata4, "tree_shap_gpu", n_genes=2, show=False)
    assert all(lab.startswith("PC") for a in axs for lab in _labels(a))
    assert axs[0].get_figure()._suptitle.get_text() == "TreeSHAP: top dimensions per cell type"


def test_ranking_missing_key(adata4):
    adata = adata4.copy()
    del adata.uns["tree_shap_gpu"], adata.obsm["tree_shap_gpu"]
    with pytest.raises(KeyError, match=r"scexplain\.tl\.tree_shap_gpu\(adata, model, groupby=\.\.\., use_rep"):
        sx.pl.ranking(adata, "tree_shap_gpu")
