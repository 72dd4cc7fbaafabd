import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

import scexplain as sx
from scexplain._results import get_result


def _labels(ax):
    return [t.get_text() for t in ax.get_yticklabels()]


def _bars(ax):
    return [p for p in ax.patches if p.get_height() == pytest.approx(0.75)]


def _hatched(ax) -> set[str]:
    labels = _labels(ax)
    return {labels[round(p.get_y() + p.get_height() / 2)] for p in _bars(ax) if p.get_hatch()}


def _intervals(ax) -> np.ndarray:
    lines = next(c for c in ax.collections if c.get_label() == "intervals")
    return np.array([[seg[0, 0], seg[1, 0]] for seg in lines.get_segments()])


def test_ranking_top_positive_and_negative(adata4, overlaps):
    axs = sx.pl.ranking(adata4, "deep_shap", n_genes=3, show=False)
    assert [a.get_title() for a in axs] == ["type_0", "type_1", "type_2", "type_3"]
    table = get_result(adata4, "deep_shap").group_table()
    for ax, group in zip(axs, table.columns, strict=True):
        col = table[group]
        pos = col[col > 0].sort_values(ascending=False).index[:3].tolist()
        neg = col[col < 0].sort_values().index[:3].tolist()[::-1]
        assert _labels(ax) == pos + neg
        widths = [p.get_width() for p in _bars(ax)]
        np.testing.assert_allclose(widths, col[pos + neg].to_numpy(), rtol=1e-6)
        assert widths == sorted(widths, reverse=True)  # highest on top
    fig = axs[0].get_figure()
    assert fig._suptitle.get_text() == "DeepSHAP: top genes per cell type"
    assert fig._supxlabel.get_text() == "DeepSHAP: mean attribution toward own cell type"
    assert overlaps(fig) == []


def test_ranking_draws_the_stored_intervals(adata4):
    axs = sx.pl.ranking(adata4, "deep_shap", n_genes=3, show=False)
    res = get_result(adata4, "deep_shap")
    lo, hi = res.group_table(values="ci_low"), res.group_table(values="ci_high")
    for ax in axs:
        genes, group = _labels(ax), ax.get_title()
        np.testing.assert_allclose(_intervals(ax), np.c_[lo.loc[genes, group], hi.loc[genes, group]], rtol=1e-6)
    texts = [t.get_text().replace("\n", " ") for t in axs[0].get_figure().legends[0].get_texts()]
    assert texts == ["score mostly from absence (gene below the reference)", "90% bootstrap interval"]


def test_ranking_hatches_exactly_the_absence_driven_bars(adata10, planted):
    axs = sx.pl.ranking(adata10, "deep_shap", n_genes=5, show=False)
    hatched = {(ax.get_title(), gene) for ax in axs for gene in _hatched(ax)}
    shown = {(ax.get_title(), gene) for ax in axs for gene in _labels(ax)}
    # every bar of a planted absence-driven pair (the far one too, when it is among the bars), and no other
    assert hatched == (planted(adata10, "absence") | planted(adata10, "far")) & shown
    assert planted(adata10, "absence") <= hatched
    assert not hatched & planted(adata10, "mixed")
    bar = next(p for ax in axs for p in _bars(ax) if p.get_hatch())
    assert bar.get_hatch() == "////"


def test_ranking_without_split_or_bootstrap_and_switches(adata4):
    axs = sx.pl.ranking(adata4, "deep_shap_plain", n_genes=3, show=False)
    fig = axs[0].get_figure()
    assert not fig.legends and not any(_hatched(a) for a in axs)
    assert not any(c.get_label() == "intervals" for a in axs for c in a.collections)
    axs = sx.pl.ranking(adata4, "deep_shap", n_genes=3, intervals=False, mark_absence=False, show=False)
    assert not axs[0].get_figure().legends
    with pytest.raises(KeyError, match="no 'ci_low' table"):
        sx.pl.ranking(adata4, "deep_shap_plain", intervals=True)
    with pytest.raises(ValueError, match="values='mean'"):
        sx.pl.ranking(adata4, "deep_shap", values="mean_abs", intervals=True)
    with pytest.raises(TypeError, match="intervals"):
        sx.pl.ranking(adata4, "deep_shap", intervals="yes")


def test_ranking_long_names_legible(adata10, overlaps):
    fig = sx.pl.ranking(adata10, "deep_shap", n_genes=3, return_fig=True)
    assert isinstance(fig, Figure)
    assert len([a for a in fig.axes if a.get_visible()]) == 10
    assert overlaps(fig) == []


def test_ranking_single_group_ax_and_unsigned(adata4, show_calls):
    _, ax = plt.subplots()
    out = sx.pl.ranking(adata4, "vargrad", groups="type_2", n_genes=4, ax=ax)
    assert out is ax and show_calls == []
    assert len(_bars(ax)) == 4 and all(p.get_width() >= 0 for p in _bars(ax))
    assert ax.get_xlabel().startswith("VarGrad")
    with pytest.raises(ValueError, match="one group"):
        sx.pl.ranking(adata4, "deep_shap", ax=ax)
    _, ax2 = plt.subplots()
    sx.pl.ranking(adata4, "deep_shap", groups="type_1", n_genes=3, ax=ax2)
    assert ax2.get_legend() is not None  # intervals and marks explained in the panel's own legend


def test_ranking_tree_rep(adata4):
    axs = sx.pl.ranking(adata4, "tree_shap_gpu", n_genes=2, show=False)
    assert all(lab.startswith("PC") for a in axs for lab in _labels(a))
    assert axs[0].get_figure()._suptitle.get_text() == "TreeSHAP: top dimensions per cell type"


def test_ranking_missing_key_and_bad_groupby(adata4):
    adata = adata4.copy()
    del adata.uns["tree_shap_gpu"], adata.obsm["tree_shap_gpu"]
    with pytest.raises(KeyError, match=r"scexplain\.tl\.tree_shap_gpu\(adata, model, groupby=\.\.\., use_rep"):
        sx.pl.ranking(adata, "tree_shap_gpu")
    with pytest.raises(ValueError, match=r"not a column of adata\.obs"):
        sx.pl.ranking(adata4, "deep_shap", groupby="nope")
