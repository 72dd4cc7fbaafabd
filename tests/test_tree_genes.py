"""tl.tree_shap_gpu(..., to_genes=True): tree attributions on an embedding carried back to genes.

Oracles: additivity (Σ_genes = Σ_dims = f(x) − E[f] per cell, against the model's own predictions), shap's
interventional TreeExplainer with one background cell composed with the PCA loadings by hand, the closed form of
a tree that splits on a single PC, independently called DeepLIFT for the scVI encoder, known pbmc markers.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from sklearn.ensemble import RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

import scexplain as sx
from _helpers import assert_adata_equal
from scexplain._results import get_result
from scexplain.tl import _tree_genes

shap = pytest.importorskip("shap")

N_PCS = 20


@pytest.fixture(scope="module")
def pbmc():
    """pbmc68k_reduced with a PCA of its (scaled) X recomputed here: the bundled X_pca is not X·PCs."""
    adata = sc.datasets.pbmc68k_reduced()
    del adata.uns["rank_genes_groups"]
    sc.pp.pca(adata, n_comps=N_PCS)
    return adata


@pytest.fixture(scope="module")
def forest(pbmc):
    return RandomForestClassifier(n_estimators=40, max_depth=6, random_state=0).fit(
        pbmc.obsm["X_pca"], pbmc.obs["bulk_labels"])


@pytest.fixture(scope="module")
def explained(pbmc, forest):
    adata = pbmc.copy()
    for mode in ("interventional", "tree_path_dependent"):
        sx.tl.tree_shap_gpu(adata, forest, use_rep="X_pca", to_genes=True, groupby="bulk_labels",
                            feature_perturbation=mode, n_background=60, key_added=mode, progress=False)
    return adata


def _own(adata, model):
    return np.searchsorted(model.classes_, adata.obs["bulk_labels"].astype(str))


@pytest.mark.parametrize("mode", ["interventional", "tree_path_dependent"])
def test_pca_genes_sum_to_the_dimensions_and_to_the_model_output(explained, forest, mode):
    adata = explained
    genes = np.asarray(adata.layers[mode], dtype=np.float64)
    dims = np.asarray(adata.obsm[mode], dtype=np.float64)
    assert genes.shape == adata.shape and dims.shape == (adata.n_obs, N_PCS)
    additivity = adata.uns[mode]["additivity"]
    assert additivity["genes_max_relative_error"] <= 1e-5  # computed in float64, before storing
    fx = forest.predict_proba(adata.obsm["X_pca"])[np.arange(adata.n_obs), _own(adata, forest)]
    expected = adata.uns[mode]["expected_value"][_own(adata, forest)]
    delta = fx - expected
    # the stored float32 layers sum to the model's own output minus the expected value, cell by cell
    np.testing.assert_allclose(genes.sum(1), delta, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dims.sum(1), delta, rtol=1e-5, atol=1e-6)
    presence = np.asarray(adata.layers[f"{mode}_presence"], dtype=np.float64)
    assert np.abs(presence).sum() > 0 and np.abs(genes - presence).sum() > 0


def test_interventional_genes_equal_shap_pairs_composed_by_hand(pbmc, forest):
    """ψ_i = mean_b Σ_d φ_ib[d] · L[g, d](x_ig − x_bg) / (z_i[d] − z_b[d]), φ_ib from shap with one background."""
    adata = pbmc[:30].copy()
    bg = np.arange(0, 30, 5)
    sx.tl.tree_shap_gpu(adata, forest, use_rep="X_pca", to_genes=True, groupby="bulk_labels",
                        feature_perturbation="interventional", background=bg, progress=False)
    assert adata.uns["tree_shap"]["additivity"]["genes_fallback_pairs"] == 0  # every pair split by itself
    X = np.asarray(adata.X, dtype=np.float64)
    L = adata.varm["PCs"].astype(np.float64)
    Z = X @ L
    own = _own(adata, forest)
    expected, presence = np.zeros(adata.shape), np.zeros(adata.shape)
    for b in bg:
        explainer = shap.TreeExplainer(forest, adata.obsm["X_pca"][b : b + 1], feature_perturbation="interventional")
        phi = np.asarray(explainer.shap_values(adata.obsm["X_pca"], check_additivity=False))[np.arange(30), :, own]
        dz = Z - Z[b]
        m = np.divide(phi, dz, out=np.zeros_like(phi), where=dz != 0)
        pair = (X - X[b]) * (m @ L.T)
        expected += pair
        presence += np.where(X > X[b], pair, 0.0)  # the pair's gene term goes to presence when x_g > b_g
    np.testing.assert_allclose(adata.layers["tree_shap"], expected / len(bg), atol=2e-6)
    np.testing.assert_allclose(adata.layers["tree_shap_presence"], presence / len(bg), atol=2e-6)


@pytest.mark.parametrize("mode", ["interventional", "tree_path_dependent"])
def test_a_tree_on_one_pc_gives_loading_times_difference(pbmc, mode):
    """A stump on PC3: against one background cell b, ψ_i[g] = φ_i · L[g, 3](x_ig − x_bg) / (z_i[3] − z_b[3])."""
    adata = pbmc.copy()
    z = adata.obsm["X_pca"]
    stump = DecisionTreeClassifier(max_depth=1).fit(z, (z[:, 2] > 0).astype(int))
    assert stump.tree_.feature[0] == 2
    b = int(np.argmin(np.abs(z[:, 2] - np.quantile(z[:, 2], 0.2))))  # a background cell below the threshold
    sx.tl.tree_shap_gpu(adata, stump, use_rep="X_pca", to_genes=True, target="all", feature_perturbation=mode,
                        background=np.array([b]), progress=False)
    X = np.asarray(adata.X, dtype=np.float64)
    L3 = adata.varm["PCs"][:, 2].astype(np.float64)
    dz = (X - X[b]) @ L3
    phi = adata.obsm["tree_shap"][:, 2].astype(np.float64)
    assert np.abs(adata.obsm["tree_shap"][:, np.arange(N_PCS) != 2]).max() == 0
    # (cells whose gene differences to b cancel along PC3, the background cell itself among them, get the
    # bounded pooled split instead: tested below and in test_a_pair_whose_difference_cancels_...)
    conditioned = np.abs(dz) > _tree_genes.RTOL * (np.abs(X - X[b]) @ np.abs(L3))
    moved = (np.abs(phi) > 1e-3) & conditioned
    assert moved.sum() > 50
    expected = (phi[moved] / dz[moved])[:, None] * L3[None] * (X[moved] - X[b])
    np.testing.assert_allclose(adata.layers["tree_shap"][moved], expected, rtol=1e-4, atol=1e-7)
    rest = (np.abs(phi) > 1e-3) & ~conditioned
    assert rest.any() == (mode == "tree_path_dependent")  # interventional: φ = 0 unless the threshold separates
    if rest.any():
        genes = adata.layers["tree_shap"][rest].astype(np.float64)
        np.testing.assert_allclose(genes.sum(1), phi[rest], rtol=1e-5, atol=1e-7)
        assert (np.abs(genes).sum(1) <= 10 * np.abs(phi[rest])).all()


def test_forest_on_x_pca_recovers_b_and_nk_markers(explained):
    for mode in ("interventional", "tree_path_dependent"):
        b_cells = sx.get.ranked_genes_df(explained, mode, group="CD19+ B")["names"][:10].tolist()
        nk = sx.get.ranked_genes_df(explained, mode, group="CD56+ NK")["names"][:10].tolist()
        assert {"CD79A", "CD79B", "MS4A1"} <= set(b_cells), b_cells
        assert {"GNLY", "NKG7"} <= set(nk), nk
        res = get_result(explained, mode)
        presence, absence = res.group_table(values="presence"), res.group_table(values="absence")
        # the B cells' markers come from their presence, the myeloid genes B cells lack from their absence
        for gene in ("CD79A", "MS4A1"):
            assert presence.loc[gene, "CD19+ B"] > 0.9 * res.group_table().loc[gene, "CD19+ B"]
        for gene in ("CST3", "LYZ"):
            assert res.group_table().loc[gene, "CD19+ B"] > 0
            assert absence.loc[gene, "CD19+ B"] > 0.9 * res.group_table().loc[gene, "CD19+ B"]


def test_to_genes_storage_and_round_trip(explained, tmp_path):
    adata, key = explained, "interventional"
    uns = adata.uns[key]
    res = get_result(adata, key)
    assert not res.on_rep and res.feature_names == list(adata.var_names)  # read on its genes
    groups = list(uns["groups"])
    for table in ("mean", "mean_abs", "presence"):
        assert adata.varm[key if table == "mean" else f"{key}_{table}"].shape == (adata.n_vars, len(groups))
        assert uns["group_tables"][table].shape == (N_PCS, len(groups))  # the embedding's, beside
    assert list(uns["feature_names"][:2]) == ["PC1", "PC2"]
    assert adata.obsm[f"{key}_presence"].shape == (adata.n_obs, N_PCS)
    assert list(adata.obsm[f"{key}_summary"].columns) == ["output", "expected_value", "sum_attributions",
                                                          "abs_error"]
    assert uns["params"]["to_genes"] == {"map": "pca", "loadings": "varm['PCs']", "gene_matrix": "adata.X"}
    mono = (adata.obs["bulk_labels"] == "CD14+ Monocyte").to_numpy()
    np.testing.assert_allclose(res.group_table()["CD14+ Monocyte"], adata.layers[key][mono].mean(0), atol=1e-6)
    df = sc.get.rank_genes_groups_df(adata, "CD4+/CD25 T Reg", key=key)
    assert df.shape[0] == adata.n_vars
    with ad.settings.override(disallow_forward_slash_in_h5ad=True):
        adata.write_h5ad(tmp_path / "out.h5ad")
        adata.write_zarr(tmp_path / "out.zarr")
    assert_adata_equal(ad.read_h5ad(tmp_path / "out.h5ad"), adata)
    assert_adata_equal(ad.read_zarr(tmp_path / "out.zarr"), adata)


def test_to_genes_bootstrap_on_genes_and_dims_independent_of_blocks(pbmc, forest):
    runs = []
    for batch_size in (None, 123):
        adata = pbmc.copy()
        sx.tl.tree_shap_gpu(adata, forest, use_rep="X_pca", to_genes=True, groupby="bulk_labels",
                            feature_perturbation="interventional", n_background=30, n_bootstrap=10,
                            batch_size=batch_size, progress=False)
        runs.append(adata)
    adata = runs[0]
    n_groups = len(adata.uns["tree_shap"]["groups"])
    for t in ("ci_low", "ci_high", "rank_stability"):
        assert adata.varm[f"tree_shap_{t}"].shape == (adata.n_vars, n_groups)  # genes
        assert adata.uns["tree_shap"]["group_tables"][t].shape == (N_PCS, n_groups)  # dims
        np.testing.assert_allclose(runs[1].varm[f"tree_shap_{t}"], adata.varm[f"tree_shap_{t}"], rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(runs[1].uns["tree_shap"]["group_tables"][t],
                                   adata.uns["tree_shap"]["group_tables"][t], rtol=1e-9, atol=1e-12)
    low, high, mean = (adata.varm[k] for k in ("tree_shap_ci_low", "tree_shap_ci_high", "tree_shap"))
    assert (low <= high).all() and ((low <= mean + 1e-9) & (mean <= high + 1e-9)).mean() > 0.95
    res = get_result(adata, "tree_shap")
    assert res.group_table(values="ci_low").shape == (adata.n_vars, n_groups)


def test_background_anndata_with_genes_equals_background_indices(pbmc, forest):
    bg = np.arange(100, 700, 40)
    by_index = pbmc.copy()
    sx.tl.tree_shap_gpu(by_index, forest, use_rep="X_pca", to_genes=True, groupby="bulk_labels",
                        feature_perturbation="interventional", background=bg, progress=False)
    cells = pbmc[:100].copy()
    sx.tl.tree_shap_gpu(cells, forest, use_rep="X_pca", to_genes=True, groupby="bulk_labels",
                        feature_perturbation="interventional", background=pbmc[bg].copy(), progress=False)
    np.testing.assert_allclose(cells.layers["tree_shap"], by_index.layers["tree_shap"][:100], atol=1e-7)
    np.testing.assert_allclose(cells.layers["tree_shap_presence"], by_index.layers["tree_shap_presence"][:100],
                               atol=1e-7)
    wrong = pbmc[bg].copy()
    wrong.X = wrong.X[::-1].copy()  # its embedding no longer comes from its genes
    with pytest.raises(ValueError, match=r"the background's adata\.X"):
        sx.tl.tree_shap_gpu(cells, forest, use_rep="X_pca", to_genes=True, groupby="bulk_labels",
                            feature_perturbation="interventional", background=wrong, progress=False)


def test_pca_layer_from_the_pca_params_and_a_subset_of_pcs(pbmc):
    adata = pbmc.copy()
    adata.layers["scaled"] = adata.X.copy()
    adata.X = np.zeros_like(adata.X)  # not what the PCA ran on
    sc.pp.pca(adata, n_comps=8, layer="scaled", key_added="pca_scaled")
    rf = RandomForestClassifier(10, max_depth=4, random_state=0).fit(adata.obsm["pca_scaled"],
                                                                       adata.obs["bulk_labels"])
    sx.tl.tree_shap_gpu(adata, rf, use_rep="pca_scaled", to_genes=True, groupby="bulk_labels", progress=False)
    assert adata.uns["tree_shap"]["params"]["to_genes"]["gene_matrix"] == "layers['scaled']"
    assert adata.uns["tree_shap"]["additivity"]["genes_max_relative_error"] <= 1e-5
    assert list(adata.uns["tree_shap"]["feature_names"][:1]) == ["pca_scaled_1"]


# --- near-ties: the pooled split -----------------------------------------------------------------------------------
def test_a_pair_whose_difference_cancels_is_split_by_the_pooled_weights():
    rng = np.random.default_rng(0)
    G, D = 40, 3
    L = np.linalg.qr(rng.normal(size=(G, D)))[0]
    xb = rng.normal(size=(5, G))
    xc = rng.normal(size=(4, G))
    # cell 0 differs from background cell 2 almost orthogonally to component 1: Δz tiny, genes' moves large
    v = rng.normal(size=G)
    v -= L[:, 1] * (L[:, 1] @ v)
    xc[0] = xb[2] + v + 1e-9 * L[:, 1]
    xc[1] = xb[3]  # a cell equal to a background cell: Δz = 0 exactly, and the trees give φ = 0 there
    gmap = _tree_genes.LinearMap(L)
    phi = rng.normal(size=(4, 5, D))
    phi[1, 3] = 0.0
    out = _tree_genes.compose_interventional(gmap, xc, None, xb, phi, np.ones((1, 4)))
    assert out.fallback_pairs >= 1 and np.isfinite(out.genes).all() and np.isfinite(out.S).all()
    np.testing.assert_allclose(out.genes.sum(1), phi.sum(2).mean(1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.S.sum((0, 2)), phi.sum((0, 2)), rtol=1e-12, atol=1e-12)
    # bounded: the tiny pair's φ is not amplified by 1/Δz (≈ 1e9)
    assert np.abs(out.genes[0]).max() < 1e3 * np.abs(phi[0]).max()
    # without the pooled split, that pair alone would give attributions of order |φ| · ‖v‖ / 1e-9
    naive = phi[0, 2, 1] * L[:, 1] * (xc[0] - xb[2]) / ((xc[0] - xb[2]) @ L[:, 1])
    assert np.abs(naive).max() > 1e6
    # a cell equal to all background cells along every dimension: uniform weights, still additive
    same = _tree_genes.compose_path_dependent(gmap, xb[:1], None, xb[:1], np.ones((1, D)))
    np.testing.assert_allclose(same.genes.sum(), D)


# --- scVI latent -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scvi_latent():
    scvi = pytest.importorskip("scvi")
    import logging
    import warnings

    scvi.settings.verbosity = logging.ERROR
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    scvi.settings.seed = 0
    adata = scvi.data.synthetic_iid(batch_size=50, n_genes=30, n_batches=2, n_labels=3)
    for k in ("accessibility", "protein_expression"):
        del adata.obsm[k]
    adata.layers["counts"] = adata.X.copy()
    models = {}
    for encoded in (False, True):
        train = adata.copy()
        scvi.model.SCVI.setup_anndata(train, layer="counts", batch_key="batch")
        model = scvi.model.SCVI(train, n_latent=4, n_hidden=16, encode_covariates=encoded)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.train(max_epochs=3, accelerator="cpu", enable_progress_bar=False, check_val_every_n_epoch=None,
                        logger=False, enable_checkpointing=False)
        models[encoded] = model
    return adata, models


@pytest.mark.parametrize("encoded", [False, True])
@pytest.mark.parametrize("mode", ["interventional", "tree_path_dependent"])
def test_scvi_latent_genes_sum_to_the_dimensions(scvi_latent, encoded, mode):
    adata, models = scvi_latent
    adata = adata.copy()
    model = models[encoded]
    adata.obsm["X_scVI"] = model.get_latent_representation(adata)
    rf = RandomForestClassifier(20, max_depth=4, random_state=0).fit(adata.obsm["X_scVI"], adata.obs["labels"])
    sx.tl.tree_shap_gpu(adata, rf, use_rep="X_scVI", to_genes=True, encoder=model, groupby="labels",
                        feature_perturbation=mode, n_background=15, progress=False)
    uns = adata.uns["tree_shap"]
    assert uns["additivity"]["genes_max_relative_error"] <= 1e-5
    assert uns["params"]["to_genes"]["map"] == "encoder"
    genes = np.asarray(adata.layers["tree_shap"], dtype=np.float64)
    np.testing.assert_allclose(genes.sum(1), adata.obsm["tree_shap"].astype(np.float64).sum(1), rtol=1e-5,
                               atol=1e-6)
    assert list(uns["feature_names"]) == ["X_scVI_1", "X_scVI_2", "X_scVI_3", "X_scVI_4"]


def test_scvi_genes_against_one_background_cell_equal_deeplift_composed_by_hand(scvi_latent):
    import torch

    from scexplain.engines.deeplift import deeplift_shap
    from scexplain.models._scvi import adapt_scvi

    adata, models = scvi_latent
    adata = adata[:40].copy()
    model = models[False]
    adata.obsm["X_scVI"] = model.get_latent_representation(adata)
    rf = RandomForestClassifier(10, max_depth=4, random_state=0).fit(adata.obsm["X_scVI"], adata.obs["labels"])
    b = 7
    sx.tl.tree_shap_gpu(adata, rf, use_rep="X_scVI", to_genes=True, encoder=model, groupby="labels",
                        feature_perturbation="interventional", background=np.array([b]), progress=False)
    own = np.searchsorted(rf.classes_, adata.obs["labels"].astype(str))
    explainer = shap.TreeExplainer(rf, adata.obsm["X_scVI"][b : b + 1], feature_perturbation="interventional")
    phi = np.asarray(explainer.shap_values(adata.obsm["X_scVI"], check_additivity=False))[np.arange(40), :, own]
    adapter = adapt_scvi(model, explain="latent")
    counts = torch.as_tensor(np.asarray(adata.layers["counts"]), dtype=torch.float64)
    with adapter.explaining(torch.device("cpu"), torch.float64):
        C, _, _ = deeplift_shap(adapter.forward, counts, counts[b : b + 1], torch.arange(4).repeat(40, 1))
    C = C.numpy()  # cells × dims × genes, Σ_g C = the encoder's Δz
    dz = C.sum(-1)
    fine = (np.abs(dz) > 1e-3 * np.abs(C).sum(-1)).all(1) & (np.arange(40) != b)
    expected = np.einsum("id,idg->ig", np.divide(phi, dz, out=np.zeros_like(phi), where=dz != 0), C)
    np.testing.assert_allclose(adata.layers["tree_shap"][fine], expected[fine], rtol=1e-4, atol=1e-6)


# --- bad input ---------------------------------------------------------------------------------------------------
def test_bad_input_is_a_clear_error_and_leaves_the_adata_untouched(pbmc, forest, scvi_latent, snapshot):
    adata = pbmc.copy()
    before = snapshot(adata)
    base = {"use_rep": "X_pca", "groupby": "bulk_labels", "progress": False}
    cases = [
        ({"to_genes": True, "use_rep": None}, ValueError, "pass `use_rep="),
        ({"encoder": object()}, ValueError, "pass to_genes=True"),
        ({"to_genes": True, "use_rep": "X_umap"}, ValueError, "no known map"),
        ({"to_genes": True, "encoder": forest}, TypeError, "scvi-tools model"),
        ({"to_genes": True, "encoder": scvi_latent[1][False]}, ValueError, "4 latent dimensions"),
        ({"to_genes": True, "feature_perturbation": "interventional", "background": np.zeros((3, N_PCS))},
         ValueError, "background cells' genes"),
    ]
    model_umap = RandomForestClassifier(3, max_depth=2, random_state=0).fit(adata.obsm["X_umap"],
                                                                            adata.obs["bulk_labels"])
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            sx.tl.tree_shap_gpu(adata, model_umap if kwargs.get("use_rep") == "X_umap" else forest,
                                **{**base, **kwargs})
    assert_adata_equal(adata, before)
    no_pcs = pbmc.copy()
    del no_pcs.varm["PCs"]
    with pytest.raises(ValueError, match=r"varm\['PCs'\], which is missing"):
        sx.tl.tree_shap_gpu(no_pcs, forest, to_genes=True, **base)
    other = pbmc.copy()
    other.X = other.X[::-1].copy()  # the genes of other cells: not what the PCA was computed from
    with pytest.raises(ValueError, match=r"is not the PCA loadings applied to adata.X"):
        sx.tl.tree_shap_gpu(other, forest, to_genes=True, **base)


def test_wrong_encoder_is_a_clear_error(scvi_latent, snapshot):
    adata, models = scvi_latent
    adata = adata.copy()
    adata.obsm["X_scVI"] = models[False].get_latent_representation(adata)
    rf = RandomForestClassifier(5, max_depth=3, random_state=0).fit(adata.obsm["X_scVI"], adata.obs["labels"])
    before = snapshot(adata)
    with pytest.raises(ValueError, match="not the encoder's latent means"):
        sx.tl.tree_shap_gpu(adata, rf, use_rep="X_scVI", to_genes=True, encoder=models[True], groupby="labels",
                            progress=False)
    assert_adata_equal(adata, before)
