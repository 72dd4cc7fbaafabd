"""Image comparison against committed baselines (tests/pl/baseline/*.png).

Regenerate after an intended visual change with::

    SCEXPLAIN_REGENERATE_BASELINES=1 python -m pytest tests/pl/test_images.py

and look at the new PNGs before committing them. Without the variable a differing image fails the test; the
actual image and a diff are left in pytest's ``tmp_path``.
"""

import os
import shutil
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from matplotlib.testing.compare import compare_images

import scexplain as sx

BASELINE = Path(__file__).parent / "baseline"
REGENERATE = os.environ.get("SCEXPLAIN_REGENERATE_BASELINES", "") not in ("", "0")
DPI = 60
TOL = 5.0  # RMS over 0–255 grey levels: absorbs anti-aliasing and FreeType differences, not layout changes

#: name → (fixture, plot); heatmap and dotplot return scanpy plot objects, drawn here
PLOTS = {
    "heatmap": ("adata4", lambda a: sx.pl.heatmap(a, "deep_shap", n_genes=3, return_fig=True)),
    "heatmap_dendrogram": ("adata4", lambda a: sx.pl.heatmap(a, "deep_shap", n_genes=2, dendrogram=True,
                                                             return_fig=True)),
    "heatmap_tree_rep": ("adata4", lambda a: sx.pl.heatmap(a, "tree_shap_gpu", n_genes=2, return_fig=True)),
    "heatmap_long_names": ("adata10", lambda a: sx.pl.heatmap(a, "deep_shap", n_genes=5, return_fig=True)),
    "dotplot": ("adata4", lambda a: sx.pl.dotplot(a, "deep_shap", n_genes=3, return_fig=True)),
    "dotplot_swapped": ("adata4", lambda a: sx.pl.dotplot(a, "deep_shap", n_genes=2, swap_axes=True,
                                                          dendrogram=True, return_fig=True)),
    "ranking": ("adata4", lambda a: sx.pl.ranking(a, "deep_shap", n_genes=3, return_fig=True)),
    "feature_importance": ("adata4", lambda a: sx.pl.feature_importance(a, "tree_shap_gpu", group="type_1",
                                                                        n_features=5, return_fig=True)),
}


@pytest.mark.parametrize("name", list(PLOTS))
def test_matches_baseline(request, tmp_path, name):
    fixture, plot = PLOTS[name]
    fig = plot(request.getfixturevalue(fixture))
    if not isinstance(fig, Figure):  # a scanpy MatrixPlot / DotPlot
        fig.make_figure()
        fig = fig.fig
    fig.set_size_inches(*[round(float(s), 2) for s in fig.get_size_inches()])
    actual = tmp_path / f"{name}.png"
    fig.savefig(actual, dpi=DPI, bbox_inches="tight", pad_inches=0.1)
    expected = BASELINE / f"{name}.png"
    if REGENERATE:
        BASELINE.mkdir(exist_ok=True)
        shutil.copyfile(actual, expected)
    if not expected.exists():
        pytest.fail(f"No baseline {expected}; create it with SCEXPLAIN_REGENERATE_BASELINES=1 (see module docstring).")
    assert expected.stat().st_size < 100_000
    diff = compare_images(str(expected), str(actual), tol=TOL)
    assert diff is None, diff
