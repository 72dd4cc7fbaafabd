"""Storage layout 2: every kind of result saves to h5ad and zarr under anndata 0.13's key rules and reads back equal.

Group names, output names and latent dimension names carry '/' here (as pbmc68k's "CD4+/CD25 T Reg" does). Each
result is written with ``disallow_forward_slash_in_h5ad = True`` (0.13's default) and FutureWarnings as errors, the
written store is walked (no node created by a '/' in a key, no '/' in a DataFrame column), read back and compared.
"""

from __future__ import annotations

import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch

import scexplain as sx
from _helpers import assert_adata_equal
from scexplain._keys import Key
from scexplain._results import get_result
from scexplain._store import anndata_013_rules

SLASHED = ["CD4+/CD25 T Reg", "B cell", "NK/T", "Mono/DC"]


def slashed_toy(n_cells: int = 80):
    adata = sx.datasets.toy(n_cells=n_cells, n_genes=16, n_groups=4, n_markers=2, seed=1)
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.rename_categories(SLASHED)
    return adata


def mlp(n_in: int, n_out: int, seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n_in, 8), torch.nn.ReLU(), torch.nn.Linear(8, n_out))


def _all_results():
    """One AnnData holding one result of every kind (name → how it was made)."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    adata = slashed_toy()
    model = mlp(adata.n_vars, 4)
    common = {"groupby": "cell_type", "layer": "lognorm", "progress": False}
    sx.tl.deep_shap(adata, model, n_background=10, **common)
    sx.tl.deep_shap(adata, model, n_background=10, target="all", keep_all=True,
                    output_names=["out/0", "out/1", "out/2", "out/3"], key_added="ds_all", **common)
    sx.tl.vargrad(adata, model, n_samples=3, **common)
    sx.tl.smoothgrad(adata, model, n_samples=3, **common)
    sx.tl.integrated_gradients(adata, model, n_steps=4, baseline="background", n_background=5, **common)
    sx.tl.deep_shap(adata, mlp(adata.n_vars, 1), layer="lognorm", n_background=10, key_added="single",
                    progress=False)
    adata.obsm["X_pca"] = PCA(4, random_state=0).fit_transform(np.asarray(adata.layers["lognorm"]))
    y = adata.obs["cell_type"]
    rf = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(adata.obsm["X_pca"], y)
    sx.tl.tree_shap_gpu(adata, rf, use_rep="X_pca", groupby="cell_type", interactions=True, progress=False)
    sx.tl.tree_shap_gpu(adata, rf, use_rep="X_pca", groupby="cell_type", target="all", keep_all=True,
                        feature_perturbation="interventional", n_background=10, key_added="tree_iv",
                        progress=False)
    genes = np.asarray(adata.layers["lognorm"])
    rf_genes = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(genes, y)
    sx.tl.tree_shap_gpu(adata, rf_genes, layer="lognorm", groupby="cell_type", target="all", keep_all=True,
                        key_added="tree_genes", progress=False)
    reg = RandomForestRegressor(n_estimators=3, max_depth=3, random_state=0).fit(adata.obsm["X_pca"], genes[:, 0])
    sx.tl.tree_shap_gpu(adata, reg, use_rep="X_pca", key_added="tree_reg", progress=False)
    return adata


@pytest.fixture(scope="module")
def results():
    return _all_results()


@pytest.fixture(scope="module")
def latent_result():
    scvi = pytest.importorskip("scvi")
    scvi.settings.seed = 0
    adata = slashed_toy(60)
    adata.layers["counts"] = np.asarray(adata.layers["counts"], dtype=np.float32)
    train = adata.copy()
    scvi.model.SCVI.setup_anndata(train, layer="counts")
    vae = scvi.model.SCVI(train, n_latent=2, n_hidden=8)
    vae.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False, logger=False, enable_checkpointing=False)
    sx.tl.deep_shap(adata, vae, explain="latent", groupby="cell_type", n_background=10, keep_all=True,
                    progress=False)
    return adata


def _walk_h5(path) -> list[str]:
    """Problems in an h5ad file: nodes without an anndata encoding (made by '/' in a key), '/' in columns."""
    problems = []

    def visit(name, node):
        if name.startswith("uns/") and "encoding-type" not in node.attrs:
            problems.append(f"{name}: no encoding-type (a key with '/')")
        if name.split("/")[0] in ("layers", "obsm", "varm", "obsp", "varp") and "encoding-type" not in node.attrs:
            problems.append(f"{name}: no encoding-type (a key with '/')")
        for col in node.attrs.get("column-order", []):
            if "/" in str(col):
                problems.append(f"{name}: column {col!r}")

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return problems


def _walk_zarr(path) -> list[str]:
    import zarr

    problems = []

    def visit(group, prefix):
        for name, node in group.members():
            full = f"{prefix}/{name}"
            if "encoding-type" not in node.attrs:
                problems.append(f"{full}: no encoding-type")
            for col in node.attrs.get("column-order", []):
                if "/" in str(col):
                    problems.append(f"{full}: column {col!r}")
            if isinstance(node, zarr.Group):
                visit(node, full)

    visit(zarr.open_group(str(path), mode="r"), "")
    return problems


FORMATS = ["h5ad", "zarr2", "zarr3"]


def _save_strict(adata, path, fmt: str = "h5ad"):
    """Write with 0.13's key rules and our FutureWarnings as errors (zarr in format 2 or 3: 0.13 writes 3)."""
    with anndata_013_rules(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        if fmt.startswith("zarr"):
            with ad.settings.override(zarr_write_format=int(fmt[-1])):
                warnings.filterwarnings("ignore", "Writing zarr v2 data", UserWarning)
                if fmt == "zarr3":
                    # zarr's own FutureWarning that structured dtypes (the rank_genes_groups-style rankings that
                    # scanpy itself writes) have no zarr v3 specification yet; not about keys
                    from zarr.errors import UnstableSpecificationWarning

                    warnings.simplefilter("ignore", UnstableSpecificationWarning)
                adata.write_zarr(path)
        else:
            adata.write_h5ad(path)


def _read(path, fmt: str):
    return ad.read_h5ad(path) if fmt == "h5ad" else ad.read_zarr(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_result_saves_under_013_rules_and_reads_back_equal(results, tmp_path, fmt):
    path = tmp_path / f"all.{fmt[:4]}"
    _save_strict(results, path, fmt)
    problems = _walk_h5(path) if fmt == "h5ad" else _walk_zarr(path)
    assert problems == []
    back = _read(path, fmt)
    assert_adata_equal(results, back)


@pytest.mark.parametrize("fmt", FORMATS)
def test_latent_result_saves_and_reads_back_equal(latent_result, tmp_path, fmt):
    path = tmp_path / f"latent.{fmt[:4]}"
    _save_strict(latent_result, path, fmt)
    assert (_walk_h5(path) if fmt == "h5ad" else _walk_zarr(path)) == []
    back = _read(path, fmt)
    assert_adata_equal(latent_result, back)
    res = get_result(back, "deep_shap")
    assert res.stored_groups == SLASHED
    assert res.latent_dims == ["latent_0", "latent_1"]
    np.testing.assert_allclose(res.latent_group_table("NK/T").to_numpy(),
                               back.varm[Key.latent_groups("deep_shap")][:, 2, :])


def test_names_live_in_arrays_and_are_mapped_back(results, tmp_path):
    path = tmp_path / "names.h5ad"
    _save_strict(results, path)
    back = sc.read_h5ad(path)
    res = get_result(back, "deep_shap")
    assert res.layout == 2
    assert back.uns["deep_shap"]["groups"].tolist() == SLASHED
    table = res.group_table()
    assert list(table.columns) == SLASHED
    np.testing.assert_array_equal(table.to_numpy(), back.varm["deep_shap"])
    # scanpy's own reader, with a group name holding '/'
    df = sc.get.rank_genes_groups_df(back, "CD4+/CD25 T Reg", key="deep_shap")
    top = table["CD4+/CD25 T Reg"].sort_values(ascending=False, kind="stable")
    assert df["names"].tolist() == top.index.tolist()
    ranked = sx.get.ranked_genes_df(back, "deep_shap", group="NK/T")
    assert ranked["names"].tolist() == table["NK/T"].sort_values(ascending=False, kind="stable").index.tolist()
    # keep_all layers by output position, names mapped back
    all_res = get_result(back, "ds_all")
    assert all_res.output_names == ["out/0", "out/1", "out/2", "out/3"]
    assert back.uns["ds_all"]["kept_outputs"].tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(all_res.output_layer("out/2"), back.layers["ds_all_out2"])
    # embedding features: tables in uns, names in arrays
    tree = get_result(back, "tree_shap")
    assert tree.feature_names == ["PC1", "PC2", "PC3", "PC4"]
    assert list(tree.group_table().columns) == SLASHED
    assert isinstance(back.uns["tree_shap"]["interactions_mean_abs"], np.ndarray)
    assert back.obsm["tree_shap_summary"].columns.tolist() == ["output", "expected_value", "sum_attributions",
                                                                "abs_error"]


def test_every_storage_key_is_a_fixed_name_around_the_result_key(results):
    keys = [k for attr in ("layers", "obsm", "varm") for k in getattr(results, attr).keys()]
    ours = [k for k in keys if k.split("_")[0] in ("deep", "ds", "vargrad", "smoothgrad", "integrated", "single",
                                                   "tree")]
    assert all("/" not in k for k in keys)
    assert "ds_all_out3" in ours and not any("out/" in k for k in ours)


def test_info_maps_names_back(results, tmp_path, capsys):
    from scexplain.cli import main

    path = tmp_path / "r.h5ad"
    _save_strict(results, path)
    assert main(["info", "--input", str(path)]) == 0
    out = capsys.readouterr().out
    assert "deep_shap: method=deep_shap" in out
    assert "CD4+/CD25 T Reg" in out and "NK/T" in out
    assert "outputs=4 (out/0, out/1" in out


def test_declared_categories_name_outputs_and_empty_groups_have_no_summary():
    """Explaining only the cells of some types of a 4-class model, with all 4 categories declared."""
    adata = slashed_toy()
    model = mlp(adata.n_vars, 4)
    subset = adata[adata.obs["cell_type"].isin(["B cell", "NK/T"])].copy()
    subset.obs["cell_type"] = subset.obs["cell_type"].cat.set_categories(SLASHED)  # declared, two unused
    sx.tl.deep_shap(subset, model, groupby="cell_type", layer="lognorm", n_background=10, progress=False)
    uns = subset.uns["deep_shap"]
    assert uns["output_names"].tolist() == SLASHED
    assert uns["groups"].tolist() == ["B cell", "NK/T"]
    assert subset.varm["deep_shap"].shape == (subset.n_vars, 2)
    assert list(uns["names"].dtype.names) == ["B cell", "NK/T"]
    # each cell explained toward its own declared category = the same as explaining the full data
    sx.tl.deep_shap(adata, model, groupby="cell_type", layer="lognorm", n_background=10, progress=False,
                    background=subset.layers["lognorm"][:10])
    full = pd.DataFrame(adata.layers["deep_shap"], index=adata.obs_names).loc[subset.obs_names]
    sx.tl.deep_shap(subset, model, groupby="cell_type", layer="lognorm", progress=False,
                    background=subset.layers["lognorm"][:10], key_added="again")
    np.testing.assert_allclose(subset.layers["again"], full.to_numpy(), rtol=1e-5, atol=1e-6)


def test_declared_categories_for_trees_too():
    from sklearn.ensemble import RandomForestClassifier

    adata = slashed_toy()
    x = np.asarray(adata.layers["lognorm"])
    rf = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(x, adata.obs["cell_type"])
    subset = adata[adata.obs["cell_type"] == "NK/T"].copy()
    subset.obs["cell_type"] = subset.obs["cell_type"].cat.set_categories(SLASHED)
    sx.tl.tree_shap_gpu(subset, rf, layer="lognorm", groupby="cell_type", progress=False)
    assert subset.uns["tree_shap"]["groups"].tolist() == ["NK/T"]
    assert subset.uns["tree_shap"]["output_names"].tolist() == [str(c) for c in rf.classes_]
    own = list(rf.classes_).index("NK/T")
    np.testing.assert_allclose(subset.obsm["tree_shap"]["output"], rf.predict_proba(
        np.asarray(subset.layers["lognorm"]))[:, own], atol=1e-12)


@pytest.mark.parametrize("kind", ["torch", "tree_regressor"])
def test_single_output_models_explain_their_output_with_default_arguments(kind):
    from sklearn.decomposition import PCA
    from sklearn.tree import DecisionTreeRegressor

    adata = slashed_toy()
    if kind == "torch":
        model = mlp(adata.n_vars, 1)
        sx.tl.deep_shap(adata, model, layer="lognorm", n_background=10, progress=False)
        key = "deep_shap"
        x = torch.as_tensor(np.asarray(adata.layers["lognorm"]), dtype=torch.float32)
        with torch.no_grad():
            fx = model(x)[:, 0].numpy()
        np.testing.assert_allclose(adata.obsm[key]["output"], fx, rtol=1e-5, atol=1e-6)
        sums = adata.layers[key].sum(1)
    else:
        adata.obsm["X_pca"] = PCA(3, random_state=0).fit_transform(np.asarray(adata.layers["lognorm"]))
        model = DecisionTreeRegressor(max_depth=3, random_state=0).fit(adata.obsm["X_pca"], adata.obs_vector("gene_000"))
        sx.tl.tree_shap_gpu(adata, model, use_rep="X_pca", progress=False)
        key = "tree_shap"
        fx = model.predict(adata.obsm["X_pca"])
        sums = adata.obsm[key].sum(1)
        np.testing.assert_allclose(sums + adata.uns[key]["expected_value"][0], fx, atol=1e-5)
    params = adata.uns[key]["params"]
    assert params["single_output"] is True and params["target"] == "label"
    assert len(adata.uns[key]["output_names"]) == 1
    assert np.isfinite(sums).all()
    # with groupby too: the single output, summarised per group
    if kind == "torch":
        sx.tl.deep_shap(adata, model, layer="lognorm", groupby="cell_type", n_background=10, key_added="g",
                        progress=False)
        assert adata.uns["g"]["groups"].tolist() == SLASHED


def test_device_is_validated_up_front(snapshot):
    adata = slashed_toy()
    before = snapshot(adata)
    model = mlp(adata.n_vars, 4)
    for bad in ("tpu", "cuda:x", "gpu"):
        with pytest.raises(ValueError, match=r"'auto', 'cpu', 'cuda'.*(torch|CuPy) sees"):
            sx.tl.deep_shap(adata, model, groupby="cell_type", layer="lognorm", device=bad, progress=False)
    with pytest.raises(TypeError, match="device"):
        sx.tl.vargrad(adata, model, groupby="cell_type", layer="lognorm", device=3, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA device"):
            sx.tl.deep_shap(adata, model, groupby="cell_type", layer="lognorm", device="cuda", progress=False)
    from sklearn.ensemble import RandomForestClassifier

    rf = RandomForestClassifier(n_estimators=2, max_depth=2, random_state=0).fit(
        np.asarray(adata.layers["lognorm"]), adata.obs["cell_type"])
    with pytest.raises(ValueError, match=r"'auto', 'cpu' or 'cuda' \(CuPy sees"):
        sx.tl.tree_shap_gpu(adata, rf, layer="lognorm", groupby="cell_type", device="tpu", progress=False)
    assert_adata_equal(adata, before)


def test_key_added_with_a_slash_is_refused_before_anything_runs(snapshot):
    adata = slashed_toy()
    before = snapshot(adata)
    with pytest.raises(ValueError, match="'/'"):
        sx.tl.deep_shap(adata, mlp(adata.n_vars, 4), groupby="cell_type", layer="lognorm", key_added="a/b",
                        progress=False)
    assert_adata_equal(adata, before)
