"""scvi-tools adapter (models/_scvi.py) and the latent mode of the driver: tiny scANVI/scVI trained in the test run."""

import logging
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import scexplain as sx
from _helpers import assert_adata_equal
from scexplain._results import get_result

scvi = pytest.importorskip("scvi")

N_BG = 16
TOL = {"float32": 1e-3, "float64": 1e-6}


def _quiet():
    scvi.settings.verbosity = logging.ERROR
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _train(model, epochs=3):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False, check_val_every_n_epoch=None,
                    logger=False, enable_checkpointing=False)
    return model


def _synthetic(seed=0):
    ad = scvi.data.synthetic_iid(batch_size=40, n_genes=30, n_batches=2, n_labels=3)
    rng = np.random.default_rng(seed)
    ad.obs["donor"] = pd.Categorical(rng.choice(["d0", "d1", "d2"], size=ad.n_obs))
    ad.obs["pct_mito"] = rng.normal(size=ad.n_obs)
    labels = ad.obs["labels"].astype(str).to_numpy().copy()
    labels[::7] = "Unknown"
    ad.obs["labels"] = pd.Categorical(labels)
    for key in ("accessibility", "protein_expression"):
        del ad.obsm[key]
    ad.layers["counts"] = ad.X.copy()
    return ad


@pytest.fixture(scope="session")
def syn():
    """scANVI with two batches, a categorical and a continuous covariate, all encoded; and its AnnData."""
    _quiet()
    scvi.settings.seed = 0
    ad = _synthetic()
    train = ad.copy()
    scvi.model.SCANVI.setup_anndata(train, layer="counts", labels_key="labels", unlabeled_category="Unknown",
                                    batch_key="batch", categorical_covariate_keys=["donor"],
                                    continuous_covariate_keys=["pct_mito"])
    model = _train(scvi.model.SCANVI(train, n_latent=4, n_hidden=16, encode_covariates=True))
    return model, ad


@pytest.fixture(scope="session")
def pbmc():
    """scANVI on pbmc68k counts (layer "counts", some cells unlabeled), scvi-tools defaults otherwise."""
    _quiet()
    scvi.settings.seed = 0
    ad = sx.datasets.pbmc68k_counts()
    ad = ad[::5].copy()  # 140 cells: fast
    labels = ad.obs["bulk_labels"].astype(str).to_numpy().copy()
    labels[::6] = "Unknown"
    ad.obs["cell_type"] = pd.Categorical(labels)
    train = ad.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "category with fewer than 3 cells"
        scvi.model.SCANVI.setup_anndata(train, layer="counts", labels_key="cell_type", unlabeled_category="Unknown")
        model = _train(scvi.model.SCANVI(train, n_latent=6, n_hidden=32))
    return model, ad


@pytest.fixture(scope="session")
def syn_scvi():
    """scVI with an encoded batch and categorical covariate, for the latent mode."""
    _quiet()
    scvi.settings.seed = 0
    ad = _synthetic(1)
    train = ad.copy()
    scvi.model.SCVI.setup_anndata(train, layer="counts", batch_key="batch", labels_key="labels",
                                  categorical_covariate_keys=["donor"])
    model = _train(scvi.model.SCVI(train, n_latent=3, n_hidden=16, encode_covariates=True))
    return model, ad


def _registry_tensors(model, ad):
    """What scvi's data loader feeds module.classify / inference, built from a registered AnnData."""
    train = model.adata
    x = torch.as_tensor(np.asarray(train.layers["counts"]), dtype=torch.float32)
    batch = torch.as_tensor(train.obs["_scvi_batch"].to_numpy(), dtype=torch.long)[:, None]
    cat = cont = None
    if "_scvi_extra_categorical_covs" in train.obsm:
        cat = torch.as_tensor(train.obsm["_scvi_extra_categorical_covs"].to_numpy(), dtype=torch.long)
    if "_scvi_extra_continuous_covs" in train.obsm:
        cont = torch.as_tensor(train.obsm["_scvi_extra_continuous_covs"].to_numpy(), dtype=torch.float32)
    return x, batch, cat, cont


# --- adapter ------------------------------------------------------------------------------------------------


def test_output_order_is_predict_columns(syn, pbmc):
    from scexplain.models import adapt

    for model, _ in (syn, pbmc):
        adapter = adapt(model)
        soft = model.predict(soft=True)
        assert adapter.output_names == [str(c) for c in soft.columns]
        assert "Unknown" not in adapter.output_names and adapter.unlabeled_category == "Unknown"
        assert adapter.default_groupby == model.registry_["setup_args"]["labels_key"]
    assert adapt(syn[0]).has_covariates and not adapt(pbmc[0]).has_covariates  # default: covariates not encoded


def test_forward_equals_module_classify_and_latent(syn):
    from scexplain.models import adapt

    model, ad = syn
    adapter = adapt(model)
    X, names = adapter.input_matrix(ad, layer=None, use_raw=False)
    assert list(names) == list(model.adata.var_names)
    cov = adapter.covariates(ad, np.arange(ad.n_obs))
    assert cov.shape == (ad.n_obs, 3)  # batch, donor, pct_mito
    x, batch, cat, cont = _registry_tensors(model, ad)
    with adapter.explaining(torch.device("cpu"), torch.float32), torch.no_grad():
        ours = adapter.forward(torch.as_tensor(np.asarray(X), dtype=torch.float32), cov.float())
        ref = model.module.classify(x, batch_index=batch, cat_covs=cat, cont_covs=cont, use_posterior_mean=True)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    np.testing.assert_allclose(torch.softmax(ours, -1).numpy(), model.predict(soft=True).to_numpy(), rtol=0, atol=0)
    latent = adapt(model, explain="latent")
    assert latent.output_names == [f"latent_{i}" for i in range(4)]
    with latent.explaining(torch.device("cpu"), torch.float32), torch.no_grad():
        z = latent.forward(torch.as_tensor(np.asarray(X), dtype=torch.float32), cov.float()).numpy()
    np.testing.assert_array_equal(z, model.get_latent_representation(give_mean=True))


def test_scvi_latent_forward_equals_get_latent_representation(syn_scvi):
    from scexplain.models import adapt

    model, ad = syn_scvi
    adapter = adapt(model)
    assert adapter.explains_latent and adapter.output_names == ["latent_0", "latent_1", "latent_2"]
    X, _ = adapter.input_matrix(ad, layer=None, use_raw=False)
    with adapter.explaining(torch.device("cpu"), torch.float32), torch.no_grad():
        z = adapter.forward(torch.as_tensor(np.asarray(X), dtype=torch.float32),
                            adapter.covariates(ad, None).float()).numpy()
    np.testing.assert_array_equal(z, model.get_latent_representation(give_mean=True))


def test_query_categories_are_mapped_by_name(syn):
    from scexplain.models import adapt

    model, ad = syn
    adapter = adapt(model)
    query = ad[::3].copy()
    # same categories, other order and an unused extra: codes must follow the model's registry
    query.obs["donor"] = query.obs["donor"].cat.set_categories(["d2", "zz", "d0", "d1"])
    query.obs["batch"] = query.obs["batch"].astype(str)
    got = adapter.covariates(query, None).numpy()
    ref = adapter.covariates(ad, np.arange(0, ad.n_obs, 3)).numpy()
    np.testing.assert_array_equal(got, ref)
    mapping = list(model.registry_["field_registries"]["extra_categorical_covs"]["state_registry"]["mappings"]["donor"])
    np.testing.assert_array_equal(got[:, 1], [mapping.index(d) for d in ad.obs["donor"].astype(str)[::3]])


# --- DeepSHAP on scANVI -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("target", ["label", "all"])
@pytest.mark.parametrize("which", ["syn", "pbmc"])
def test_additivity(which, target, dtype, request):
    model, ad = request.getfixturevalue(which)
    ad = ad[:48].copy()
    sx.tl.deep_shap(ad, model, target=target, n_background=N_BG, dtype=dtype, progress=False)
    add = ad.uns["deep_shap"]["additivity"]
    assert add["max_relative_error"] <= TOL[dtype], add
    summary = ad.obsm["deep_shap"]
    assert (summary["relative_error"] <= TOL[dtype]).all()
    assert ad.layers["deep_shap"].shape == ad.shape


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_layer_norm_models_sum_to_delta(dtype):
    """The scArches-style setup (layer norm instead of batch norm, two hidden layers): LayerNorm has its rule."""
    from scexplain.engines.deeplift import DeepLiftWarning

    _quiet()
    scvi.settings.seed = 0
    ad = _synthetic(2)
    train = ad.copy()
    scvi.model.SCANVI.setup_anndata(train, layer="counts", labels_key="labels", unlabeled_category="Unknown",
                                    batch_key="batch")
    model = _train(scvi.model.SCANVI(train, n_latent=4, n_hidden=16, n_layers=2, use_layer_norm="both",
                                     use_batch_norm="none", encode_covariates=True))
    assert any(isinstance(m, torch.nn.LayerNorm) for m in model.module.modules())
    for explain in ("classifier", "latent"):
        cells = ad[:30].copy()
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeepLiftWarning)
            sx.tl.deep_shap(cells, model, explain=explain, target="all", n_background=N_BG, dtype=dtype,
                            progress=False)
        add = cells.uns["deep_shap"]["additivity"]
        assert add["max_relative_error"] <= TOL[dtype], (explain, add)


def test_covariates_held_at_the_cells_values(syn):
    """Σφ = f(x, c) − mean_b f(x_b, c) with the cell's own covariates for its background pairs."""
    from scexplain.models import adapt

    model, ad = syn
    ad = ad[:30].copy()
    bg = np.arange(0, ad.n_obs, 2)
    sx.tl.deep_shap(ad, model, background=bg, target="label", dtype="float64", progress=False, batch_size=7)
    adapter = adapt(model)
    X = torch.as_tensor(np.asarray(ad.layers["counts"]), dtype=torch.float64)
    cov = adapter.covariates(ad, None)
    summary = ad.obsm["deep_shap"]
    own = pd.Categorical(ad.obs["labels"].astype(str))
    with adapter.explaining(torch.device("cpu"), torch.float64), torch.no_grad():
        fx = adapter.forward(X, cov)
        pred = fx.argmax(1).numpy()
        lookup = {n: i for i, n in enumerate(adapter.output_names)}
        target = np.array([lookup.get(c, p) for c, p in zip(own.astype(str), pred, strict=True)])
        for i in range(ad.n_obs):
            ref = adapter.forward(X[bg], cov[i : i + 1].expand(len(bg), -1)).mean(0)
            np.testing.assert_allclose(summary["output"].iloc[i], fx[i, target[i]].item(), rtol=1e-10)
            np.testing.assert_allclose(summary["expected_value"].iloc[i], ref[target[i]].item(), rtol=1e-10,
                                       atol=1e-12)
            np.testing.assert_allclose(ad.layers["deep_shap"][i].astype(np.float64).sum(),
                                       (fx[i, target[i]] - ref[target[i]]).item(), rtol=1e-4, atol=1e-5)
    # the other batch's covariates give another reference: covariates are not averaged over the background
    other = cov.clone()
    other[:, 0] = 1 - other[:, 0]
    with adapter.explaining(torch.device("cpu"), torch.float64), torch.no_grad():
        ref_other = adapter.forward(X[bg], other[0:1].expand(len(bg), -1)).mean(0)[target[0]].item()
    assert abs(ref_other - summary["expected_value"].iloc[0]) > 1e-6
    assert "expected_value" not in ad.uns["deep_shap"]  # per cell with covariates (obsm)


def test_unlabeled_cells_use_the_predicted_class(pbmc):
    model, ad = pbmc
    ad = ad[:36].copy()
    sx.tl.deep_shap(ad, model, target="all", keep_all=True, n_background=N_BG, dtype="float64", progress=False)
    names = list(ad.uns["deep_shap"]["output_names"])
    from scexplain.models import adapt

    adapter = adapt(model)
    X = torch.as_tensor(np.asarray(ad.layers["counts"]), dtype=torch.float64)
    with adapter.explaining(torch.device("cpu"), torch.float64), torch.no_grad():
        pred = adapter.forward(X, None).argmax(1).numpy()
    labels = ad.obs["cell_type"].astype(str).to_numpy()
    unl = labels == "Unknown"
    assert unl.any() and (~unl).any()
    for i in range(ad.n_obs):
        own = names[pred[i]] if unl[i] else labels[i]
        np.testing.assert_array_equal(ad.layers["deep_shap"][i], get_result(ad, "deep_shap").output_layer(own)[i])
    # no covariates encoded: one expected value per output
    assert np.asarray(ad.uns["deep_shap"]["expected_value"]).shape == (len(names),)


def test_query_without_the_labels_column_explains_the_prediction(pbmc, caplog):
    model, ad = pbmc
    query = ad[:24].copy()
    del query.obs["cell_type"]
    bg = ad[60 : 60 + N_BG].copy()
    with caplog.at_level(logging.INFO, logger="scexplain"):
        sx.tl.deep_shap(query, model, background=bg, dtype="float64", progress=False)
    assert "explaining each cell's predicted class" in caplog.text
    predicted = ad[:24].copy()
    sx.tl.deep_shap(predicted, model, background=bg, target="predicted", groupby=None, dtype="float64",
                    progress=False)
    np.testing.assert_array_equal(query.layers["deep_shap"], predicted.layers["deep_shap"])
    params = query.uns["deep_shap"]["params"]
    assert params["target"] == "predicted" and params["groupby"] is None and "deep_shap" not in query.varm
    with pytest.raises(ValueError, match="not a column"):  # a groupby the user names must exist
        sx.tl.deep_shap(query, model, groupby="cell_type", background=bg, progress=False)


@pytest.mark.parametrize("save_anndata", [True, False])
def test_cli_explains_a_saved_model_on_a_query_without_labels(syn, tmp_path, save_anndata):
    from scexplain.cli import main

    model, ad = syn
    folder = tmp_path / "model"
    model.save(str(folder), save_anndata=save_anndata)
    query = ad[10:40].copy()
    del query.obs["labels"]
    path_in, path_out = tmp_path / "query.h5ad", tmp_path / "out.h5ad"
    query.write_h5ad(path_in)
    rc = main(["deep-shap", "-i", str(path_in), "-o", str(path_out), "--model", str(folder), "--n-background", "12",
               "--dtype", "float64"])
    assert rc == 0
    out = anndata.read_h5ad(path_out)
    expected = query.copy()
    sx.tl.deep_shap(expected, model, n_background=12, dtype="float64", progress=False)
    np.testing.assert_array_equal(out.layers["deep_shap"], expected.layers["deep_shap"])
    assert out.uns["deep_shap"]["additivity"]["max_relative_error"] <= TOL["float64"]
    # loading the model registered nothing in the explained data: no _scvi columns, no random UUIDs
    assert not [c for c in out.obs.columns if c.startswith("_scvi")]
    assert not [k for k in out.uns if k.startswith("_scvi")]
    assert_adata_equal(anndata.read_h5ad(path_in), query)


def test_cli_latent_of_a_saved_scvi_model_and_a_folder_that_is_not_one(syn_scvi, tmp_path, capsys):
    from scexplain.cli import main

    model, ad = syn_scvi
    folder = tmp_path / "scvi"
    model.save(str(folder), save_anndata=False)
    path_in, path_out = tmp_path / "cells.h5ad", tmp_path / "out.h5ad"
    ad[:24].copy().write_h5ad(path_in)
    rc = main(["deep-shap", "-i", str(path_in), "-o", str(path_out), "--model", str(folder), "--explain", "latent",
               "--n-background", "10", "--dtype", "float64"])
    assert rc == 0
    out = anndata.read_h5ad(path_out)
    assert out.varm["deep_shap_latent"].shape[0] == out.n_vars
    assert out.uns["deep_shap"]["additivity"]["max_relative_error"] <= TOL["float64"]
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    rc = main(["deep-shap", "-i", str(path_in), "-o", str(tmp_path / "o2.h5ad"), "--model", str(empty)])
    assert rc == 1
    assert "not a saved scvi-tools model" in capsys.readouterr().err
    assert not (tmp_path / "o2.h5ad").exists()


def test_query_with_reordered_genes_gives_the_same_attributions(syn):
    model, ad = syn
    ref = ad[:24].copy()
    sx.tl.deep_shap(ref, model, n_background=N_BG, dtype="float64", progress=False)
    # a fresh query AnnData, never registered with scvi: genes reversed, plus an extra gene the model lacks
    order = ad.var_names[::-1]
    query = ad[:24, order].copy()
    query.obs = query.obs[["batch", "labels", "donor", "pct_mito"]].copy()
    extra = pd.DataFrame(index=["not_a_model_gene"])
    counts = np.concatenate([query.layers["counts"], np.ones((query.n_obs, 1), np.float32)], axis=1)
    query = anndata.AnnData(counts, obs=query.obs, var=pd.concat([query.var, extra]))
    query.layers["counts"] = sparse.csr_matrix(counts)
    sx.tl.deep_shap(query, model, n_background=N_BG, dtype="float64", progress=False)
    got = pd.DataFrame(query.layers["deep_shap"], columns=query.var_names)
    np.testing.assert_allclose(got[ref.var_names].to_numpy(), ref.layers["deep_shap"], rtol=1e-6, atol=1e-7)
    assert (got["not_a_model_gene"] == 0).all()
    pd.testing.assert_frame_equal(get_result(query, "deep_shap").group_table().loc[ref.var_names],
                                  get_result(ref, "deep_shap").group_table())
    # counts in adata.X of the query, named explicitly
    in_x = query.copy()
    del in_x.layers["counts"]
    sx.tl.deep_shap(in_x, model, layer="X", n_background=N_BG, dtype="float64", progress=False)
    np.testing.assert_array_equal(in_x.layers["deep_shap"], query.layers["deep_shap"])


# --- latent mode ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_latent_additivity_and_storage(syn_scvi, dtype):
    model, ad = syn_scvi
    ad = ad[:40].copy()
    sx.tl.deep_shap(ad, model, n_background=N_BG, dtype=dtype, keep_all=True, progress=False)
    res = ad.uns["deep_shap"]
    dims = ["latent_0", "latent_1", "latent_2"]
    assert res["additivity"]["max_relative_error"] <= TOL[dtype]
    assert "deep_shap" not in ad.layers  # no own target for latent dimensions
    stored = get_result(ad, "deep_shap")
    lat, lat_abs = stored.latent_table(), stored.latent_table("mean_abs")
    np.testing.assert_array_equal(lat.to_numpy(), ad.varm["deep_shap_latent"])
    assert list(lat.columns) == dims and list(lat.index) == list(ad.var_names)
    for d in dims:
        layer = stored.output_layer(d)
        np.testing.assert_allclose(lat[d], layer.mean(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(lat_abs[d], np.abs(layer).mean(0), rtol=1e-4, atol=1e-6)
    # per cell and dim: Σφ = μ(x, c) − mean_b μ(x_b, c)
    from scexplain.models import adapt

    adapter = adapt(model)
    bg = res["params"]["background_obs_indices"]
    X = torch.as_tensor(np.asarray(ad.layers["counts"]), dtype=torch.float64)
    cov = adapter.covariates(ad, None)
    with adapter.explaining(torch.device("cpu"), torch.float64), torch.no_grad():
        mu = adapter.forward(X, cov).numpy()
        ref = np.stack([adapter.forward(X[bg], cov[i : i + 1].expand(len(bg), -1)).mean(0).numpy()
                        for i in range(ad.n_obs)])
    sums = np.stack([stored.output_layer(d).astype(np.float64).sum(1) for d in dims], axis=1)
    np.testing.assert_allclose(sums, mu - ref, rtol=1e-3, atol=1e-4)  # layers are float32
    expected = ad.obsm["deep_shap_expected_value"]
    np.testing.assert_allclose(expected, ref, rtol=1e-5 if dtype == "float32" else 1e-10, atol=1e-6)
    # per-group summaries and rankings per dimension
    groups = ad.obs["labels"].astype(str)
    for g in groups.unique():
        cells = (groups == g).to_numpy()
        np.testing.assert_allclose(stored.latent_group_table(g)["latent_1"],
                                   np.abs(stored.output_layer("latent_1")[cells]).mean(0), rtol=1e-4, atol=1e-6)
    import scanpy as sc

    df = sc.get.rank_genes_groups_df(ad, "latent_2", key="deep_shap")
    assert df["names"].tolist() == lat_abs["latent_2"].sort_values(ascending=False).index.tolist()


def test_latent_on_scanvi_and_target_list(syn):
    model, ad = syn
    ad = ad[:30].copy()
    sx.tl.deep_shap(ad, model, explain="latent", target=["latent_3", "latent_1"], n_background=N_BG,
                    dtype="float64", progress=False)
    res = ad.uns["deep_shap"]
    assert res["additivity"]["max_relative_error"] <= 1e-6
    assert list(get_result(ad, "deep_shap").latent_table().columns) == ["latent_3", "latent_1"]
    assert res["params"]["explain"] == "latent"
    with pytest.raises(ValueError, match="no predicted class"):
        sx.tl.deep_shap(ad, model, explain="latent", target="predicted", progress=False)


def test_h5ad_round_trip(syn, syn_scvi, tmp_path):
    model, ad = syn
    ad = ad[:20].copy()
    sx.tl.deep_shap(ad, model, n_background=8, progress=False)
    sx.tl.deep_shap(ad, syn_scvi[0], n_background=8, key_added="lat", progress=False)
    path = tmp_path / "x.h5ad"
    ad.write_h5ad(path)
    assert_adata_equal(ad, anndata.read_h5ad(path))


# --- bad input --------------------------------------------------------------------------------------------


def test_bad_input_leaves_adata_unchanged(syn, syn_scvi, snapshot):
    model, ad = syn
    ad = ad[:20].copy()

    def check(adata, model_, match, err=ValueError, **kw):
        before = snapshot(adata)
        with pytest.raises(err, match=match):
            sx.tl.deep_shap(adata, model_, progress=False, n_background=8, **kw)
        assert_adata_equal(adata, before)

    # not trained
    untrained_ad = ad.copy()
    scvi.model.SCANVI.setup_anndata(untrained_ad, layer="counts", labels_key="labels", unlabeled_category="Unknown")
    check(ad, scvi.model.SCANVI(untrained_ad, n_latent=2, n_hidden=8), "not trained")
    # genes missing
    check(ad[:, 3:].copy(), model, "missing from")
    # the counts layer missing
    no_layer = ad.copy()
    del no_layer.layers["counts"]
    check(no_layer, model, r"layers\['counts'\]")
    # non-integer counts (e.g. normalised), explicit layer honoured but still checked
    lognorm = ad.copy()
    lognorm.layers["lognorm"] = np.log1p(lognorm.layers["counts"])
    check(lognorm, model, "non-integer", layer="lognorm")
    lognorm.layers["counts"] = lognorm.layers["lognorm"]
    check(lognorm, model, "non-integer")
    # negative counts
    neg = ad.copy()
    neg.layers["counts"][0, 0] = -1
    check(neg, model, "negative")
    # unknown batch category, missing covariate column
    other = ad.copy()
    other.obs["batch"] = pd.Categorical(["batch_9"] * other.n_obs)
    check(other, model, "unknown to the model")
    no_cov = ad.copy()
    del no_cov.obs["donor"]
    check(no_cov, model, "lacks 'donor'")
    # explain='classifier' on scVI; explain='latent' on a plain torch model
    check(ad, syn_scvi[0], "needs a model with a classifier", explain="classifier")
    check(ad, torch.nn.Linear(ad.n_vars, 3), "scvi-tools models", layer="counts", explain="latent")
    check(ad, model, "'classifier' or 'latent'", explain="decoder")
    # output names that are not the model's
    check(ad, model, "label categories", output_names=["a", "b", "c"])


# --- oracle: shap's DeepExplainer with log1p as a module under its rescale rule -----------------------------


class _Log1p(torch.nn.Module):
    def forward(self, x):
        return torch.log1p(x)


class _FixedCovariates(torch.nn.Module):
    """The adapter's classifier path with log1p as a module and the covariates of one cell held fixed."""

    def __init__(self, adapter, cov):
        super().__init__()
        self.log1p = _Log1p()
        self.module = adapter.module
        self.adapter = adapter
        self.cov = cov

    def forward(self, x):
        cov = None if self.cov is None else self.cov.expand(x.shape[0], -1)
        batch, cats, cont = self.adapter._unpack(cov, x.shape[0], x.device)
        h = self.log1p(x)
        if cont is not None:
            h = torch.cat((h, cont), dim=-1)
        enc = self.module.z_encoder
        return self.module.classifier(enc.mean_encoder(enc.encoder(h, batch, *cats)))


@pytest.mark.parametrize("which", ["syn", "pbmc"])
def test_matches_shap_deep_explainer_with_log1p_rule(which, request):
    from shap.explainers._deep import deep_pytorch

    from scexplain.models import adapt

    model, ad = request.getfixturevalue(which)
    ad = ad[:12].copy()
    bg = np.arange(0, ad.n_obs, 2)
    sx.tl.deep_shap(ad, model, target="all", keep_all=True, background=bg, dtype="float64", progress=False)
    names = list(ad.uns["deep_shap"]["output_names"])
    ours = np.stack([get_result(ad, "deep_shap").output_layer(n) for n in names], axis=-1)  # cells × genes × classes
    adapter = adapt(model)
    X = torch.as_tensor(np.asarray(ad.layers["counts"]), dtype=torch.float64)
    cov = adapter.covariates(ad, None)
    had = deep_pytorch.op_handler.get("_Log1p")
    deep_pytorch.op_handler["_Log1p"] = deep_pytorch.nonlinear_1d
    before = set(model.module.state_dict())
    try:
        with adapter.explaining(torch.device("cpu"), torch.float64), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in (1, 4, 7):
                net = _FixedCovariates(adapter, None if cov is None else cov[i : i + 1]).eval()
                import shap

                ref = shap.DeepExplainer(net, X[bg]).shap_values(X[i : i + 1], check_additivity=True)[0]
                np.testing.assert_allclose(ours[i], ref, rtol=1e-4, atol=1e-6)  # ours stored as float32
    finally:
        if had is None:
            deep_pytorch.op_handler.pop("_Log1p", None)
        else:
            deep_pytorch.op_handler["_Log1p"] = had
        for prefix, module in model.module.named_modules():  # shap leaves x / y parameters on the modules
            for key in ("x", "y"):
                if key in module._parameters and f"{prefix}.{key}".lstrip(".") not in before:
                    del module._parameters[key]
        assert set(model.module.state_dict()) == before


def test_gpu_checkpoint_is_explained_on_cpu(syn, tmp_path, monkeypatch):
    """A model saved on a GPU (its tensors tagged ``cuda:0`` in the checkpoint) loads and is explained on a CPU."""
    model, ad = syn
    model.save(str(tmp_path / "model"), overwrite=True, save_anndata=False)
    path = tmp_path / "model" / "model.pt"
    state = torch.load(path, weights_only=False)
    with monkeypatch.context() as patch:  # what torch.save writes for tensors that live on a GPU
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=False)  # the file really places its tensors on a GPU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = scvi.model.SCANVI.load(str(tmp_path / "model"), adata=ad.copy(), accelerator="cpu")
    assert next(loaded.module.parameters()).device.type == "cpu"
    cells = ad[:20].copy()
    sx.tl.deep_shap(cells, loaded, background=ad[20 : 20 + N_BG].copy(), device="cpu", dtype="float64",
                    progress=False)
    assert cells.uns["deep_shap"]["additivity"]["max_relative_error"] <= TOL["float64"]
    same = ad[:20].copy()
    sx.tl.deep_shap(same, model, background=ad[20 : 20 + N_BG].copy(), device="cpu", dtype="float64",
                    progress=False)
    np.testing.assert_allclose(cells.layers["deep_shap"], same.layers["deep_shap"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("explain", ["classifier", "latent"])
@pytest.mark.parametrize("which", ["syn", "pbmc"])
def test_scanvi_is_explained_along_the_chain(which, explain, request, monkeypatch):
    """From its first hidden layer to the logits (or latent means) scANVI is a chain of layers: multipliers are
    propagated without the backward pass, and equal the backward pass's."""
    import scexplain.engines.deeplift as engine
    from scexplain.models import adapt

    model, ad = request.getfixturevalue(which)
    adapter = adapt(model, explain=explain)
    X = np.asarray(adapter.input_matrix(ad, layer=None, use_raw=False)[0], dtype=np.float64)
    cells = np.arange(10)
    cov = adapter.covariates(ad, cells)
    calls = []
    real = engine._backward
    with adapter.explaining(torch.device("cpu"), torch.float64):
        x, bg = torch.as_tensor(X[cells]), torch.as_tensor(X[10 : 10 + N_BG])
        n_out = adapter.forward(x, None if cov is None else cov.double()).shape[1]
        classes = torch.arange(n_out).repeat(len(cells), 1)
        slow = engine.deeplift_shap(adapter.forward, x, bg, classes, cov=cov, chain=False)
        monkeypatch.setattr(engine, "_backward", lambda *args: calls.append(1) or real(*args))
        fast = engine.deeplift_shap(adapter.forward, x, bg, classes, cov=cov)
    assert not calls
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trained_on_gpu_explained_on_cpu():
    _quiet()
    scvi.settings.seed = 0
    ad = _synthetic()
    train = ad.copy()
    scvi.model.SCANVI.setup_anndata(train, layer="counts", labels_key="labels", unlabeled_category="Unknown",
                                    batch_key="batch", categorical_covariate_keys=["donor"])
    model = scvi.model.SCANVI(train, n_latent=4, n_hidden=16, encode_covariates=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=2, accelerator="gpu", enable_progress_bar=False, logger=False)
    assert next(model.module.parameters()).device.type == "cuda"
    cpu = ad[:20].copy()
    sx.tl.deep_shap(cpu, model, n_background=8, device="cpu", dtype="float64", progress=False)
    assert next(model.module.parameters()).device.type == "cuda"  # restored
    assert cpu.uns["deep_shap"]["additivity"]["max_relative_error"] <= 1e-6
    gpu = ad[:20].copy()
    sx.tl.deep_shap(gpu, model, n_background=8, device="cuda", dtype="float64", progress=False)
    np.testing.assert_allclose(gpu.layers["deep_shap"], cpu.layers["deep_shap"], rtol=1e-5, atol=1e-6)
