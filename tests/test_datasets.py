import numpy as np
import pytest

import scexplain as sx


def test_toy_shapes_counts_and_markers():
    a = sx.datasets.toy(n_cells=300, n_genes=60, n_groups=3, n_markers=5, seed=3)
    assert a.shape == (300, 60)
    assert list(a.obs["cell_type"].cat.categories) == ["type_0", "type_1", "type_2"]
    X = np.asarray(a.X)
    np.testing.assert_array_equal(X, np.rint(X))
    assert (X >= 0).all()
    np.testing.assert_array_equal(X, a.layers["counts"])
    markers = a.uns["toy"]["markers"]
    for g, genes in markers.items():
        assert len(genes) == 5
        assert (a.var.loc[genes, "marker_of"] == g).all()
        inside = a.obs["cell_type"] == g
        # planted markers are clearly up in their group
        ratio = X[inside.values][:, a.var_names.get_indexer(genes)].mean() / X[~inside.values][
            :, a.var_names.get_indexer(genes)
        ].mean()
        assert ratio > 3
    assert (a.var["marker_of"] == "").sum() == 60 - 15


def test_toy_is_deterministic_and_seeded():
    a, b, c = sx.datasets.toy(seed=1), sx.datasets.toy(seed=1), sx.datasets.toy(seed=2)
    np.testing.assert_array_equal(a.X, b.X)
    assert not np.array_equal(a.X, c.X)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_cells": 0}, "n_cells"), ({"n_genes": 5, "n_groups": 3, "n_markers": 2}, "genes"),
     ({"fold_change": -1.0}, "fold_change")],
)
def test_toy_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sx.datasets.toy(**kwargs)


def test_pbmc68k_counts_reconstruction():
    import scanpy as sc

    a = sx.datasets.pbmc68k_counts()
    src = sc.datasets.pbmc68k_reduced()
    assert a.shape == (700, 765)
    assert "bulk_labels" in a.obs and a.obs["bulk_labels"].nunique() == 10
    assert {"X_pca", "X_umap"} <= set(a.obsm)
    X = np.asarray(a.X)
    np.testing.assert_array_equal(X, np.rint(X))
    np.testing.assert_array_equal(X, a.layers["counts"])
    raw = src.raw.X.toarray().astype(np.float64)
    expected = np.rint(np.expm1(raw) * src.obs["n_counts"].to_numpy()[:, None] / 1e4)
    np.testing.assert_array_equal(X, expected)
    assert list(a.var_names) == list(src.raw.var_names)
    # the lognorm layer is the bundled .raw, unchanged
    np.testing.assert_allclose(a.layers["lognorm"], raw, rtol=0, atol=1e-6)
