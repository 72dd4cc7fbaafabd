"""tl.vargrad / tl.smoothgrad / tl.integrated_gradients through the driver (the engine has its own oracles)."""

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch

import scexplain as sx
from _helpers import assert_adata_equal
from scexplain._results import get_result
from scexplain.engines import gradients as eng
from scexplain.models import ModelAdapter

KW = dict(groupby="cell_type", layer="lognorm", progress=False)
METHODS = {"vargrad": sx.tl.vargrad, "smoothgrad": sx.tl.smoothgrad, "integrated_gradients": sx.tl.integrated_gradients}
FAST = {"vargrad": {"n_samples": 6}, "smoothgrad": {"n_samples": 6}, "integrated_gradients": {"n_steps": 8}}


def _net(n_genes, n_out=4, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n_genes, 16), torch.nn.Tanh(), torch.nn.Linear(16, n_out)).double()


@pytest.fixture
def adata(toy_adata):
    return toy_adata.copy()


def _x(adata):
    return torch.as_tensor(adata.layers["lognorm"], dtype=torch.float64)


def _all_layers(out, key, names):
    res = get_result(out, key)
    return np.stack([res.output_layer(n) for n in names], axis=1)


@pytest.mark.parametrize("name", ["vargrad", "smoothgrad"])
def test_noise_methods_store_the_engine_numbers(adata, name):
    """The stored layers are the engine's output on the same per-cell noise, for every target and the own one."""
    model = _net(adata.n_vars)
    opts = {"n_samples": 5, "noise_level": 0.2, **({"multiply_by_inputs": True} if name == "smoothgrad" else {})}
    out = METHODS[name](adata, model, target="all", keep_all=True, dtype="float64", random_state=3, copy=True,
                        **opts, **KW)
    x = _x(adata)
    noise = eng.NoiseSampler(5, noise_level=0.2, stdev=None, random_state=3)(x)
    extra = {"multiply_by_inputs": True} if name == "smoothgrad" else {}
    expected = getattr(eng, name)(lambda v, cov=None: model(v), x, torch.arange(4).repeat(len(x), 1), noise,
                                  **extra).numpy()
    names = list(adata.obs["cell_type"].cat.categories)
    np.testing.assert_allclose(_all_layers(out, name, names), expected, rtol=1e-5, atol=1e-8)
    own = adata.obs["cell_type"].cat.codes.to_numpy()
    np.testing.assert_allclose(out.layers[name], expected[np.arange(adata.n_obs), own], rtol=1e-5, atol=1e-8)
    params = out.uns[name]["params"]
    assert params["method"] == name and params["n_samples"] == 5 and params["noise_level"] == 0.2
    assert params["stdev"] is None and params["random_state"] == 3
    assert name not in out.obsm  # no completeness property


def test_vargrad_params_state_the_estimator(adata):
    model = _net(adata.n_vars)
    a = sx.tl.vargrad(adata, model, n_samples=4, stdev=0.5, copy=True, **KW)
    b = sx.tl.vargrad(adata, model, n_samples=4, stdev=0.5, ddof=1, copy=True, **KW)
    p = a.uns["vargrad"]["params"]
    assert p["ddof"] == 0 and "E[g²] − E[g]²" in p["estimator"] and p["stdev"] == 0.5 and p["noise_level"] is None
    np.testing.assert_allclose(b.layers["vargrad"], a.layers["vargrad"] * 4 / 3, rtol=1e-5)
    assert (a.layers["vargrad"] >= 0).all()


@pytest.mark.parametrize("name", list(METHODS))
def test_batch_size_and_dtype_do_not_change_the_numbers(adata, name):
    model = _net(adata.n_vars)
    kw = {**FAST[name], **KW, "copy": True, "target": "all"}
    a = METHODS[name](adata, model, batch_size=7, dtype="float64", **kw)
    b = METHODS[name](adata, model, batch_size=500, dtype="float64", **kw)
    np.testing.assert_allclose(a.layers[name], b.layers[name], rtol=1e-6, atol=1e-9)
    c = METHODS[name](adata, model, batch_size=64, dtype="float32", **kw)
    scale = np.abs(a.layers[name]).max()
    np.testing.assert_allclose(c.layers[name], a.layers[name], rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("name", ["vargrad", "smoothgrad"])
def test_same_seed_same_numbers_other_seed_other_noise(adata, name):
    model = _net(adata.n_vars)
    a, b, c = (METHODS[name](adata, model, random_state=s, copy=True, **FAST[name], **KW) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.layers[name], b.layers[name])
    assert not np.allclose(a.layers[name], c.layers[name])


def test_integrated_gradients_zero_baseline_completeness_and_summary(adata):
    model = _net(adata.n_vars)
    out = sx.tl.integrated_gradients(adata, model, n_steps=64, dtype="float64", copy=True, **KW)
    x = _x(adata)
    own = torch.as_tensor(adata.obs["cell_type"].cat.codes.to_numpy().copy(), dtype=torch.long)[:, None]
    attr, fx, ref = eng.integrated_gradients(lambda v, cov=None: model(v), x, own,
                                             torch.zeros((1, adata.n_vars), dtype=torch.float64), n_steps=64)
    np.testing.assert_allclose(out.layers["integrated_gradients"], attr[:, 0].numpy(), rtol=1e-5, atol=1e-8)
    summary = out.obsm["integrated_gradients"]
    np.testing.assert_allclose(summary["output"], fx[:, 0].numpy(), rtol=1e-10)
    np.testing.assert_allclose(summary["expected_value"], ref[:, 0].numpy(), rtol=1e-10)
    completeness = out.uns["integrated_gradients"]["additivity"]
    assert completeness["max_relative_error"] < 1e-8
    params = out.uns["integrated_gradients"]["params"]
    assert params["baseline"] == "zeros" and params["n_steps"] == 64 and params["n_background"] is None
    assert params["integration_method"] == "gausslegendre"
    coarse = sx.tl.integrated_gradients(adata, model, n_steps=2, method="riemann_trapezoid", dtype="float64",
                                        copy=True, **KW)
    assert coarse.uns["integrated_gradients"]["additivity"]["max_relative_error"] > 100 * completeness[
        "max_relative_error"]


@pytest.mark.parametrize("baseline", ["background_mean", "background"])
def test_integrated_gradients_background_baselines(adata, baseline):
    model = _net(adata.n_vars)
    bg = np.zeros(adata.n_obs, dtype=bool)
    bg[::20] = True
    out = sx.tl.integrated_gradients(adata, model, baseline=baseline, background=bg, n_steps=16, target="all",
                                     keep_all=True, dtype="float64", copy=True, **KW)
    x = _x(adata)
    bases = x[bg].mean(0, keepdim=True) if baseline == "background_mean" else x[bg]
    attr, _, ref = eng.integrated_gradients(lambda v, cov=None: model(v), x, torch.arange(4).repeat(len(x), 1),
                                            bases, n_steps=16)
    names = list(adata.obs["cell_type"].cat.categories)
    np.testing.assert_allclose(_all_layers(out, "integrated_gradients", names), attr.numpy(), rtol=1e-5, atol=1e-8)
    with torch.no_grad():
        expected_value = model(bases).mean(0).numpy()
    np.testing.assert_allclose(out.uns["integrated_gradients"]["expected_value"], expected_value, rtol=1e-10)
    own = adata.obs["cell_type"].cat.codes.to_numpy()
    np.testing.assert_allclose(out.obsm["integrated_gradients"]["expected_value"], ref.numpy()[np.arange(len(x)), own],
                               rtol=1e-10)
    assert out.uns["integrated_gradients"]["params"]["n_background"] == bg.sum()
    assert out.uns["integrated_gradients"]["additivity"]["max_relative_error"] < 1e-4


def test_integrated_gradients_array_baseline(adata):
    model = _net(adata.n_vars)
    base = np.full(adata.n_vars, 0.5)
    a = sx.tl.integrated_gradients(adata, model, baseline=base, n_steps=8, dtype="float64", copy=True, **KW)
    b = sx.tl.integrated_gradients(adata, model, baseline="background", background=base[None], n_steps=8,
                                   dtype="float64", copy=True, **KW)
    np.testing.assert_array_equal(a.layers["integrated_gradients"], b.layers["integrated_gradients"])
    assert a.uns["integrated_gradients"]["params"]["baseline"] == "array"


@pytest.mark.parametrize("name", list(METHODS))
def test_storage_round_trip_and_scanpy_ranking(adata, tmp_path, name):
    METHODS[name](adata, _net(adata.n_vars), **FAST[name], **KW)
    groups = list(adata.obs["cell_type"].cat.categories)
    varm = get_result(adata, name).group_table()
    assert list(varm.columns) == groups and list(varm.index) == list(adata.var_names)
    for g in groups:
        cells = (adata.obs["cell_type"] == g).to_numpy()
        np.testing.assert_allclose(varm[g], adata.layers[name][cells].mean(0), rtol=1e-5, atol=1e-7)
        df = sc.get.rank_genes_groups_df(adata, g, key=name)
        assert df["names"].tolist() == varm[g].sort_values(ascending=False, kind="stable").index.tolist()
    path = tmp_path / "x.h5ad"
    adata.write_h5ad(path)
    assert_adata_equal(adata, sc.read_h5ad(path))


@pytest.fixture(scope="module")
def trained(toy_adata):
    from scexplain._demo import train_mlp

    codes = toy_adata.obs["cell_type"].cat.codes.to_numpy()
    return train_mlp(toy_adata.layers["lognorm"], codes, epochs=30, seed=0)


@pytest.mark.parametrize(
    ("name", "opts"),
    [("integrated_gradients", {"n_steps": 16}), ("smoothgrad", {"multiply_by_inputs": True, "n_samples": 10}),
     ("smoothgrad", {"n_samples": 10})],
)
def test_planted_markers_rank_on_top(toy_adata, trained, name, opts):
    adata = toy_adata.copy()
    METHODS[name](adata, trained, **opts, **KW)
    for group, genes in adata.uns["toy"]["markers"].items():
        top = sx.get.ranked_genes_df(adata, name, group=group)["names"][: len(genes)]
        assert len(set(top) & set(genes)) >= len(genes) - 1, (group, list(top), list(genes))


def test_vargrad_ranks_the_planted_markers_of_all_groups_on_top(toy_adata, trained):
    """VarGrad is unsigned (gradient variability): it finds the genes the model uses, not which group they mark."""
    adata = toy_adata.copy()
    sx.tl.vargrad(adata, trained, n_samples=10, **KW)
    markers = set(np.concatenate(list(adata.uns["toy"]["markers"].values())))
    for group in adata.uns["toy"]["markers"]:
        top = sx.get.ranked_genes_df(adata, "vargrad", group=group)["names"][: len(markers)]
        assert len(set(top) & markers) >= len(markers) - 1, (group, sorted(set(top) - markers))


# --- covariates: an adapter like scvi-tools' (counts in, covariates fixed) -------------------------------------------
class _BatchAdapter(ModelAdapter):
    """Genes plus a one-hot batch covariate that interacts with them."""

    has_covariates = True

    def __init__(self, n_genes):
        torch.manual_seed(0)
        self.module = torch.nn.ModuleDict({"x": torch.nn.Linear(n_genes, 8), "c": torch.nn.Linear(2, 8),
                                           "head": torch.nn.Linear(8, 4)})
        self.n_inputs = n_genes

    def covariates(self, adata, rows=None):
        codes = pd.Categorical(adata.obs["batch"]).codes
        codes = codes if rows is None else codes[rows]
        return torch.nn.functional.one_hot(torch.as_tensor(codes, dtype=torch.long), 2).double()

    def forward(self, x, cov=None):
        m = self.module
        return m["head"](torch.tanh(m["x"](x) * m["c"](cov)))


def test_covariates_are_fixed_per_cell(adata):
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 3 == 0, "b1", "b0")
    adapter = _BatchAdapter(adata.n_vars)
    ig = sx.tl.integrated_gradients(adata, adapter, n_steps=32, dtype="float64", copy=True, **KW)
    assert ig.uns["integrated_gradients"]["additivity"]["max_relative_error"] < 1e-6
    assert "expected_value" not in ig.uns["integrated_gradients"]  # per cell with covariates: see obsm
    vg = sx.tl.vargrad(adata, adapter, n_samples=4, dtype="float64", batch_size=50, copy=True, **KW)
    with adapter.explaining(torch.device("cpu"), torch.float64):
        x, cov = _x(adata), adapter.covariates(adata, np.arange(adata.n_obs))
        noise = eng.NoiseSampler(4, noise_level=0.1, stdev=None, random_state=0)(x)
        own = torch.as_tensor(adata.obs["cell_type"].cat.codes.to_numpy().copy(), dtype=torch.long)[:, None]
        expected = eng.vargrad(adapter.forward, x, own, noise, cov)[:, 0].numpy()
    np.testing.assert_allclose(vg.layers["vargrad"], expected, rtol=1e-5, atol=1e-9)


# --- bad input ----------------------------------------------------------------------------------------------------
def _generic_bad(adata):
    model = _net(adata.n_vars)
    nan = adata.copy()
    nan.layers["lognorm"][0, 0] = np.nan
    return [
        (adata, _net(adata.n_vars + 1), {}, ValueError, "genes"),
        (nan, model, {}, ValueError, "NaN"),
        (adata, model, {"groupby": None}, ValueError, "groupby"),
        (adata, model, {"target": ["no_such_type"]}, ValueError, "no_such_type"),
        (adata[:0].copy(), model, {}, ValueError, "empty"),
        (adata, model, {"random_state": 1.5}, TypeError, "random_state"),
        (adata, "not a model", {}, TypeError, "supported"),
    ]


_SPECIFIC = {
    "vargrad": [({"n_samples": 0}, ValueError, "n_samples"), ({"n_samples": 1}, ValueError, "at least 2"),
                ({"noise_level": -0.1}, ValueError, "noise_level"), ({"stdev": -1.0}, ValueError, "stdev"),
                ({"noise_level": 0.1, "stdev": 1.0}, ValueError, "not both"), ({"ddof": -1}, ValueError, "ddof"),
                ({"n_samples": 2.0}, TypeError, "n_samples")],
    "smoothgrad": [({"n_samples": 0}, ValueError, "n_samples"), ({"noise_level": -0.1}, ValueError, "noise_level"),
                   ({"stdev": -1.0}, ValueError, "stdev"), ({"noise_level": 0.1, "stdev": 1.0}, ValueError,
                                                            "not both")],
    "integrated_gradients": [({"n_steps": 0}, ValueError, "n_steps"), ({"baseline": "ones"}, ValueError, "baseline"),
                             ({"method": "simpson"}, ValueError, "method"),
                             ({"baseline": "zeros", "background": np.zeros(3, dtype=int)}, ValueError, "background"),
                             ({"baseline": np.zeros(5)}, ValueError, "columns"),
                             ({"baseline": "background", "n_background": 0}, ValueError, "n_background")],
}
_CASES = [(n, "generic", i) for n in METHODS for i in range(7)] + [
    (n, "specific", i) for n, cases in _SPECIFIC.items() for i in range(len(cases))
]


@pytest.mark.parametrize(("name", "kind", "i"), _CASES)
def test_bad_input_clear_error_and_adata_untouched(toy_adata, snapshot, name, kind, i):
    if kind == "generic":
        adata, model, kwargs, err, match = _generic_bad(toy_adata.copy())[i]
    else:
        adata, model = toy_adata.copy(), _net(toy_adata.n_vars)
        kwargs, err, match = _SPECIFIC[name][i]
    before = snapshot(adata)
    with pytest.raises(err, match=match):
        METHODS[name](adata, model, **{**KW, **FAST[name], **kwargs})
    assert_adata_equal(before, adata)


# --- scvi-tools: gradients with respect to counts, covariates fixed ------------------------------------------------
@pytest.mark.slow
def test_scanvi_gradients_on_counts_with_encoded_covariates(toy_adata):
    scvi = pytest.importorskip("scvi")
    adata = toy_adata.copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 3 == 0, "b1", "b0")
    scvi.settings.seed = 0
    scvi.model.SCANVI.setup_anndata(adata, layer="counts", labels_key="cell_type", unlabeled_category="unknown",
                                    batch_key="batch")
    model = scvi.model.SCANVI(adata, n_latent=4, n_hidden=16, encode_covariates=True)
    model.train(max_epochs=2, accelerator="cpu", enable_progress_bar=False)
    out = sx.tl.vargrad(adata, model, n_samples=4, dtype="float64", batch_size=100, copy=True, progress=False)
    assert out.uns["vargrad"]["params"]["groupby"] == "cell_type"  # scANVI's labels key by default
    adapter = sx.models.adapt(model)
    rows = np.arange(adata.n_obs)
    with adapter.explaining(torch.device("cpu"), torch.float64):
        x = torch.as_tensor(adata.layers["counts"], dtype=torch.float64)  # the counts, not the log values
        cov = adapter.covariates(adata, rows).double()
        noise = eng.NoiseSampler(4, noise_level=0.1, stdev=None, random_state=0)(x)
        own = torch.as_tensor(adata.obs["cell_type"].cat.codes.to_numpy().copy(), dtype=torch.long)[:, None]
        expected = eng.vargrad(adapter.forward, x, own, noise, cov)[:, 0].numpy()
    np.testing.assert_allclose(out.layers["vargrad"], expected, rtol=1e-5, atol=1e-12)
    errors = [sx.tl.integrated_gradients(adata, model, n_steps=n, method="riemann_trapezoid", dtype="float64",
                                         copy=True, progress=False).uns["integrated_gradients"]["additivity"]
              ["median_relative_error"] for n in (4, 16, 64)]
    assert errors[0] > errors[1] > errors[2], errors
    latent = sx.tl.smoothgrad(adata, model, explain="latent", target="all", n_samples=3, copy=True, progress=False)
    assert latent.varm["smoothgrad_latent"].shape == (adata.n_vars, 4)
    assert latent.uns["smoothgrad"]["params"]["explain"] == "latent"
