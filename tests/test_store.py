import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import scexplain as sx
from _helpers import assert_adata_equal, assert_value_equal
from scexplain import _store
from scexplain._keys import Key


def _result(adata, key="deep_shap"):
    rng = np.random.default_rng(0)
    groups = [str(g) for g in adata.obs["cell_type"].cat.categories]
    mean = rng.normal(size=(adata.n_vars, len(groups)))
    return _store.Result(
        method="deep_shap",
        key=key,
        params={"groupby": "cell_type", "target": "label", "n_background": 10, "classes": ["a", "b"],
                "background_obs_indices": np.arange(5), "random_state": None, "nested": {"x": 1.5}},
        layer=rng.normal(size=adata.shape),
        obsm=pd.DataFrame({"output": rng.normal(size=adata.n_obs)}, index=adata.obs_names),
        groups=groups,
        group_tables={Key.table.mean: mean, Key.table.mean_abs: np.abs(mean)},
        varm_extra={Key.latent(key): rng.normal(size=(adata.n_vars, 3))},
        ranking=(mean, groups),
        output_layers={1: rng.normal(size=adata.shape)},
        uns={"expected_value": rng.normal(size=4), "additivity": {"max_relative_error": 1e-7},
             "output_names": ["a/b", "c", "d"]},
    )


def test_write_round_trips_through_h5ad(toy_adata, tmp_path):
    adata = toy_adata.copy()
    _store.write(adata, _result(adata))
    path = tmp_path / "r.h5ad"
    adata.write_h5ad(path)
    back = sc.read_h5ad(path)
    assert back.layers["deep_shap"].dtype == np.float32
    np.testing.assert_array_equal(back.layers["deep_shap"], adata.layers["deep_shap"])
    np.testing.assert_array_equal(back.layers[Key.output_layer("deep_shap", 1)], adata.layers["deep_shap_out1"])
    np.testing.assert_array_equal(back.varm["deep_shap"], adata.varm["deep_shap"])
    np.testing.assert_array_equal(back.varm["deep_shap_mean_abs"], np.abs(adata.varm["deep_shap"]))
    pd.testing.assert_frame_equal(back.obsm["deep_shap"], adata.obsm["deep_shap"])
    np.testing.assert_array_equal(back.varm[Key.latent("deep_shap")], adata.varm[Key.latent("deep_shap")])
    assert_value_equal(adata.uns["deep_shap"], back.uns["deep_shap"])
    uns = back.uns["deep_shap"]
    assert uns["params"]["method"] == "deep_shap"
    assert uns["params"]["random_state"] is None
    assert uns["layout"] == 2
    assert uns["groups"].tolist() == list(adata.obs["cell_type"].cat.categories)
    assert uns["kept_outputs"].tolist() == [1]


def test_ranking_recarrays_and_scanpy_reader(toy_adata):
    adata = toy_adata.copy()
    res = _result(adata)
    _store.write(adata, res)
    table = pd.DataFrame(res.ranking[0], index=adata.var_names, columns=res.ranking[1])
    for group in adata.obs["cell_type"].cat.categories:
        expected = table[group].sort_values(ascending=False)
        df = sc.get.rank_genes_groups_df(adata, group, key="deep_shap")
        assert df["names"].tolist() == expected.index.tolist()
        np.testing.assert_allclose(df["scores"], expected.to_numpy(), rtol=1e-6)
        tidy = sx.get.ranked_genes_df(adata, "deep_shap", group=group)
        assert tidy["names"].tolist() == expected.index.tolist()
        assert tidy["rank"].tolist() == list(range(adata.n_vars))
    every = sx.get.ranked_genes_df(adata, "deep_shap")
    assert every.shape[0] == adata.n_vars * 4
    assert list(every["group"].cat.categories) == list(adata.obs["cell_type"].cat.categories)


def test_ranked_genes_df_errors(toy_adata):
    with pytest.raises(KeyError, match="tl"):
        sx.get.ranked_genes_df(toy_adata, "nothing_here")
    adata = toy_adata.copy()
    _store.write(adata, _result(adata))
    with pytest.raises(KeyError, match="available"):
        sx.get.ranked_genes_df(adata, "deep_shap", group="no_such_group")


def test_copy_leaves_original_untouched(toy_adata):
    adata = toy_adata.copy()
    before = adata.copy()
    out = _store.write(adata, _result(adata), copy=True)
    assert "deep_shap" in out.layers and "deep_shap" not in adata.layers
    assert set(adata.uns) == set(before.uns)


def test_shape_mismatch_writes_nothing(toy_adata):
    adata = toy_adata.copy()
    before = adata.copy()
    res = _result(adata)
    res.varm_extra = {"bad": np.zeros((adata.n_vars + 1, 2))}
    with pytest.raises(ValueError, match="rows"):
        _store.write(adata, res)
    res = _result(adata)
    res.layer = np.zeros((2, 2))
    with pytest.raises(ValueError, match="shape"):
        _store.write(adata, res)
    res = _result(adata)
    res.group_tables = {Key.table.mean: np.zeros((adata.n_vars, 2))}
    with pytest.raises(ValueError, match="features × groups"):
        _store.write(adata, res)
    res = _result(adata)
    res.output_layers = {0: np.zeros((3, 3))}
    with pytest.raises(ValueError, match="out0"):
        _store.write(adata, res)
    assert_adata_equal(adata, before)


def test_bad_keys_write_nothing(toy_adata):
    adata = toy_adata.copy()
    before = adata.copy()
    for key in ("a/b", "/"):
        with pytest.raises(ValueError, match="'/'"):
            _store.write(adata, _result(adata, key=key))
    for extra in ({"uns": {"nested": {"CD4+/CD25": 1}}}, {"varm_extra": {"x/y": np.zeros((adata.n_vars, 1))}},
                  {"obsm": pd.DataFrame({"a/b": np.zeros(adata.n_obs)})}):
        res = _result(adata)
        for field_name, value in extra.items():
            setattr(res, field_name, value)
        with pytest.raises(ValueError, match=r"'/'|reject"):
            _store.write(adata, res)
    assert_adata_equal(adata, before)


def test_check_storable_names_every_bad_key(toy_adata):
    adata = toy_adata.copy()
    _store.check_storable(adata)
    adata.uns["mine"] = {"ok": {"a/b": 1}}
    adata.varm["df"] = pd.DataFrame(np.zeros((adata.n_vars, 1)), index=adata.var_names, columns=["x/y"])
    _store.check_storable(adata, "h5ad")  # anndata 0.12's default: h5ad only warns
    with _store.anndata_013_rules(), pytest.raises(ValueError, match="to h5ad"):
        _store.check_storable(adata, "h5ad")
    with pytest.raises(ValueError, match=r"varm\['df'\] column 'x/y', uns\['mine'\]\['ok'\]\['a/b'\]"):
        _store.check_storable(adata)


def test_h5ad_safe_rejects_objects():
    with pytest.raises(TypeError, match="h5ad"):
        _store.h5ad_safe({"x": object()})
    assert _store.h5ad_safe((1, 2)).tolist() == [1, 2]
    assert _store.h5ad_safe(np.float32(1.5)) == 1.5


def test_keys():
    assert Key.default("deep_shap") == "deep_shap"
    assert Key.default("deep_shap", "mine") == "mine"
    assert Key.latent("k") == "k_latent"
    assert Key.group_table("k", "mean") == "k" and Key.group_table("k", "mean_abs") == "k_mean_abs"
    assert Key.output_layer("k", 3) == "k_out3"
    with pytest.raises(TypeError):
        Key.default("deep_shap", "")
    with pytest.raises(ValueError, match="'/'"):
        Key.default("deep_shap", "CD4+/CD25")


def test_is_result_tells_ours_from_scanpy(toy_adata):
    adata = toy_adata.copy()
    _store.write(adata, _result(adata))
    adata.uns["neighbors"] = {"params": {"method": "umap", "n_neighbors": 15}}
    assert _store.is_result(adata.uns["deep_shap"])
    assert adata.uns["deep_shap"]["params"]["versions"]["scexplain"] == sx.__version__
    assert not _store.is_result(adata.uns["neighbors"])
    assert not _store.is_result("x")
