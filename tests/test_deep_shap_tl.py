"""tl.deep_shap through the driver: storage, targets, backgrounds, bad input (the engine has its own tests)."""

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch
from scipy import sparse

import scexplain as sx
from _helpers import assert_adata_equal
from scexplain._results import get_result


def _linear(n_genes, n_out, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(n_genes, n_out).double()


@pytest.fixture
def adata(toy_adata):
    return toy_adata.copy()


def test_linear_model_equals_exact_shap(adata):
    model = _linear(adata.n_vars, 4)
    bg = np.zeros(adata.n_obs, dtype=bool)
    bg[::3] = True
    sx.tl.deep_shap(adata, model, groupby="cell_type", layer="lognorm", background=bg, dtype="float64",
                    progress=False)
    X = adata.layers["lognorm"].astype(np.float64)
    w = model.weight.detach().numpy()
    own = pd.Categorical(adata.obs["cell_type"]).codes
    expected = w[own] * (X - X[bg].mean(0))
    # layers are stored as float32
    np.testing.assert_allclose(adata.layers["deep_shap"], expected, rtol=1e-5, atol=1e-6)
    add = adata.uns["deep_shap"]["additivity"]
    assert add["max_relative_error"] < 1e-10
    f_bg = (X[bg] @ w.T + model.bias.detach().numpy()).mean(0)
    np.testing.assert_allclose(adata.uns["deep_shap"]["expected_value"], f_bg, rtol=1e-10)
    summary = adata.obsm["deep_shap"]
    np.testing.assert_allclose(summary["sum_attributions"], summary["output"] - summary["expected_value"],
                               rtol=1e-8, atol=1e-8)


def test_storage_layout_and_round_trip(adata, tmp_path):
    model = _linear(adata.n_vars, 4)
    sx.tl.deep_shap(adata, model, groupby="cell_type", layer="lognorm", n_background=20, progress=False)
    groups = list(adata.obs["cell_type"].cat.categories)
    assert adata.uns["deep_shap"]["groups"].tolist() == groups
    assert isinstance(adata.varm["deep_shap"], np.ndarray) and adata.varm["deep_shap"].shape == (adata.n_vars, 4)
    varm = get_result(adata, "deep_shap").group_table()
    assert list(varm.columns) == groups and list(varm.index) == list(adata.var_names)
    np.testing.assert_array_equal(varm.to_numpy(), adata.varm["deep_shap"])
    for g in groups:
        cells = (adata.obs["cell_type"] == g).to_numpy()
        np.testing.assert_allclose(varm[g], adata.layers["deep_shap"][cells].mean(0), rtol=1e-5, atol=1e-7)
        df = sc.get.rank_genes_groups_df(adata, g, key="deep_shap")
        assert df["names"].tolist() == varm[g].sort_values(ascending=False).index.tolist()
        tidy = sx.get.ranked_genes_df(adata, "deep_shap", group=g)
        assert tidy["names"].tolist() == df["names"].tolist()
    params = adata.uns["deep_shap"]["params"]
    assert params["method"] == "deep_shap" and params["groupby"] == "cell_type" and params["n_background"] == 20
    path = tmp_path / "x.h5ad"
    adata.write_h5ad(path)
    assert_adata_equal(adata, sc.read_h5ad(path))


def test_same_seed_same_numbers_other_seed_other_background(adata):
    model = _linear(adata.n_vars, 4)
    a, b, c = (sx.tl.deep_shap(adata, model, groupby="cell_type", layer="lognorm", n_background=10,
                               random_state=s, copy=True, progress=False) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.layers["deep_shap"], b.layers["deep_shap"])
    assert not np.array_equal(a.layers["deep_shap"], c.layers["deep_shap"])


def test_sparse_dense_and_batch_size_agree(adata):
    model = _linear(adata.n_vars, 4)
    kw = dict(groupby="cell_type", n_background=15, progress=False, dtype="float64")
    dense = adata.copy()
    dense.X = adata.layers["lognorm"].copy()
    sp = adata.copy()
    sp.X = sparse.csr_matrix(adata.layers["lognorm"])
    sx.tl.deep_shap(dense, model, batch_size=7, **kw)
    sx.tl.deep_shap(sp, model, batch_size=100, **kw)
    np.testing.assert_allclose(dense.layers["deep_shap"], sp.layers["deep_shap"], rtol=1e-6, atol=1e-7)


def test_targets_predicted_all_and_list(adata):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(adata.n_vars, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)).double()
    kw = dict(groupby="cell_type", layer="lognorm", n_background=10, dtype="float64", progress=False)
    lab = sx.tl.deep_shap(adata, model, target="label", copy=True, **kw)
    allc = sx.tl.deep_shap(adata, model, target="all", keep_all=True, copy=True, **kw)
    # own-target layer under "all" is the label target (labels match outputs)
    np.testing.assert_allclose(allc.layers["deep_shap"], lab.layers["deep_shap"], rtol=1e-6, atol=1e-8)
    for j, name in enumerate(adata.obs["cell_type"].cat.categories):
        assert f"deep_shap_out{j}" in allc.layers
        np.testing.assert_array_equal(get_result(allc, "deep_shap").output_layer(name), allc.layers[f"deep_shap_out{j}"])
    cells = (adata.obs["cell_type"] == "type_2").to_numpy()
    np.testing.assert_allclose(allc.layers["deep_shap_out2"][cells], lab.layers["deep_shap"][cells], rtol=1e-6,
                               atol=1e-8)
    assert allc.uns["deep_shap"]["additivity"]["max_relative_error"] < 1e-8
    pred = sx.tl.deep_shap(adata, model, target="predicted", copy=True, **kw)
    x = torch.as_tensor(adata.layers["lognorm"], dtype=torch.float64)
    predicted = model(x).argmax(1).numpy()
    layers = np.stack([allc.layers[f"deep_shap_out{k}"] for k in range(4)], axis=1)
    np.testing.assert_allclose(pred.layers["deep_shap"], layers[np.arange(adata.n_obs), predicted], rtol=1e-6,
                               atol=1e-8)
    one = sx.tl.deep_shap(adata, model, target=["type_1"], keep_all=True, copy=True, **kw)
    np.testing.assert_allclose(one.layers["deep_shap_out1"], allc.layers["deep_shap_out1"], rtol=1e-6, atol=1e-8)


def test_training_mode_restored(adata):
    from scexplain._demo import benchmark_mlp

    model = benchmark_mlp(adata.n_vars, 4).double()
    model.train()
    sx.tl.deep_shap(adata, model, groupby="cell_type", layer="lognorm", n_background=10, dtype="float64",
                    progress=False)
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.float64
    # explained in eval mode: dropout off, batch-norm running statistics → additivity exact
    assert adata.uns["deep_shap"]["additivity"]["max_relative_error"] < 1e-6


def test_markers_rank_on_top(toy_adata):
    from scexplain._demo import train_mlp

    adata = toy_adata.copy()
    codes = adata.obs["cell_type"].cat.codes.to_numpy()
    model = train_mlp(adata.layers["lognorm"], codes, epochs=30, seed=0)
    sx.tl.deep_shap(adata, model, groupby="cell_type", layer="lognorm", n_background=40, progress=False)
    markers = adata.uns["toy"]["markers"]
    for group, genes in markers.items():
        top = sx.get.ranked_genes_df(adata, "deep_shap", group=group)["names"][: len(genes)]
        assert len(set(top) & set(genes)) >= len(genes) - 1, (group, list(top), list(genes))


def _bad_inputs(adata):
    model = _linear(adata.n_vars, 4)
    nan = adata.copy()
    nan.layers["lognorm"][0, 0] = np.nan
    inf = adata.copy()
    inf.layers["lognorm"][1, 1] = np.inf
    return [
        (adata, _linear(adata.n_vars + 1, 4), {}, ValueError, "genes"),
        (nan, model, {}, ValueError, "NaN"),
        (inf, model, {}, ValueError, "infinite"),
        (adata, model, {"groupby": "not_a_column"}, ValueError, "not_a_column"),
        (adata, model, {"groupby": None}, ValueError, "groupby"),
        (adata, model, {"target": ["no_such_type"]}, ValueError, "no_such_type"),
        (adata, model, {"background": np.zeros((5, adata.n_vars + 2))}, ValueError, "columns"),
        (adata, model, {"background": np.zeros(3, dtype=bool)}, ValueError, "mask"),
        (adata, model, {"layer": "nope"}, ValueError, "nope"),
        (adata, model, {"n_background": 0}, ValueError, "n_background"),
        (adata, model, {"dtype": "float16"}, ValueError, "dtype"),
        (adata, model, {"batch_size": 0}, ValueError, "batch_size"),
        (adata, model, {"explain": "latent"}, ValueError, "scvi"),
        (adata, model, {"output_names": ["a", "b"]}, ValueError, "output_names"),
        (adata, "not a model", {}, TypeError, "supported"),
        (adata[:0].copy(), model, {}, ValueError, "empty"),
        (adata, model, {"random_state": "seed"}, TypeError, "random_state"),
    ]


@pytest.mark.parametrize("case", range(17))
def test_bad_input_clear_error_and_adata_untouched(toy_adata, case, snapshot):
    adata, model, kwargs, err, match = _bad_inputs(toy_adata.copy())[case]
    before = snapshot(adata)
    kw = {"groupby": "cell_type", "layer": "lognorm", "progress": False, **kwargs}
    with pytest.raises(err, match=match):
        sx.tl.deep_shap(adata, model, **kw)
    assert_adata_equal(before, adata)


def test_cuda_requested_without_gpu_is_clear(adata):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="CUDA"):
        sx.tl.deep_shap(adata, _linear(adata.n_vars, 4), groupby="cell_type", device="cuda", progress=False)


def test_dask_backed_matrix_gives_same_numbers(adata):
    da = pytest.importorskip("dask.array")
    model = _linear(adata.n_vars, 4)
    kw = dict(groupby="cell_type", n_background=15, progress=False, dtype="float64", batch_size=50)
    dense = adata.copy()
    dense.X = adata.layers["lognorm"].astype(np.float64)
    lazy = adata.copy()
    lazy.X = da.from_array(dense.X, chunks=(60, adata.n_vars))
    sx.tl.deep_shap(dense, model, **kw)
    sx.tl.deep_shap(lazy, model, **kw)
    np.testing.assert_array_equal(dense.layers["deep_shap"], lazy.layers["deep_shap"])


def test_category_order_of_groupby_is_kept(adata):
    """Outputs default to the groupby categories *in their order* (a model trained on the codes)."""
    model = _linear(adata.n_vars, 4)
    order = ["type_3", "type_1", "type_0", "type_2"]
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.reorder_categories(order)
    sx.tl.deep_shap(adata, model, groupby="cell_type", layer="lognorm", n_background=10, dtype="float64",
                    progress=False)
    assert list(adata.uns["deep_shap"]["output_names"]) == order
    assert list(adata.uns["deep_shap"]["groups"]) == order
    assert list(get_result(adata, "deep_shap").group_table().columns) == order
    X = adata.layers["lognorm"].astype(np.float64)
    idx = adata.uns["deep_shap"]["params"]["background_obs_indices"]
    w = model.weight.detach().numpy()
    expected = w[adata.obs["cell_type"].cat.codes.to_numpy()] * (X - X[idx].mean(0))
    np.testing.assert_allclose(adata.layers["deep_shap"], expected, rtol=1e-5, atol=1e-6)
