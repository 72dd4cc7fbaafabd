"""Results written by scexplain 0.1.0 (storage layout 1, tests/data/v1) still plot: drawn values, no marks."""

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import scexplain as sx
from scexplain._results import get_result

V1 = Path(__file__).parents[1] / "data" / "v1" / "results_v1.h5ad"
GROUPS = ["CD4+/CD25 T Reg", "B cell", "NK/T"]


@pytest.fixture(scope="module")
def v1():
    if not V1.exists():
        pytest.fail(f"{V1} is missing: the 0.1.0 files are made by tests/data/v1/make_v1_files.py")
    return ad.read_h5ad(V1)


def _labels(axis):
    return [t.get_text() for t in axis.get_ticklabels()]


@pytest.mark.parametrize("key", ["deep_shap", "vargrad", "tree_genes", "tree_shap"])
def test_heatmap_of_an_old_file(v1, key):
    plot = sx.pl.heatmap(v1, key, n_genes=2, return_fig=True)
    plot.make_figure()
    axes = plot.get_axes()
    ax = axes["mainplot_ax"]
    assert _labels(ax.yaxis) == GROUPS and plot.var_groups.labels == GROUPS
    table = get_result(v1, key).group_table()
    genes = _labels(ax.xaxis)
    np.testing.assert_allclose(np.asarray(ax.collections[0].get_array()), table.loc[genes, GROUPS].to_numpy().T,
                               rtol=1e-6)
    assert "marks_legend_ax" not in axes and len(ax.collections) == 1  # 0.1.0 stored no split, no bootstrap


def test_dotplot_and_ranking_of_an_old_file(v1):
    axes = sx.pl.dotplot(v1, "deep_shap", n_genes=2, dendrogram=True, show=False)
    assert sorted(_labels(axes["mainplot_ax"].yaxis)) == sorted(GROUPS)
    assert "marks_legend_ax" not in axes
    axs = sx.pl.ranking(v1, "deep_shap", n_genes=2, show=False)
    assert [a.get_title() for a in axs] == GROUPS
    assert not axs[0].get_figure().legends
    with pytest.raises(KeyError, match="no 'presence' table"):
        sx.pl.ranking(v1, "deep_shap", mark_absence=True)
