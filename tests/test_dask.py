"""Dask-backed inputs: one pass over the input's own chunks, results equal to the in-memory run, streamed output.

The in-memory run is the oracle (itself tested against shap/captum/brute force elsewhere). Dask results must equal
it to float tolerance whatever the chunking; on a ``distributed.LocalCluster`` they must equal the local dask run
bit for bit; and each block is computed exactly once from ``tl`` to a written zarr store.
"""

from __future__ import annotations

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import torch
from scipy import sparse

import scexplain as sx
from _helpers import assert_adata_equal
from scexplain.tl import _driver

CHUNK = 70  # not a multiple of the batch sizes: blocks and batches do not line up


def _toy():
    adata = sx.datasets.toy(n_cells=300, n_genes=24, n_groups=4, n_markers=3, seed=2)
    adata.X = np.asarray(adata.layers["lognorm"], dtype=np.float32)
    return adata


def _mlp(n_in, n_out, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n_in, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Linear(16, n_out)).eval()


def _lazy(adata, chunks=CHUNK, layer=None, as_sparse=False):
    out = adata.copy()
    x = np.asarray(adata.X if layer is None else adata.layers[layer])
    arr = da.from_array(sparse.csr_matrix(x), chunks=(chunks, -1), asarray=False) if as_sparse else \
        da.from_array(x, chunks=(chunks, -1))
    if layer is None:
        out.X = arr
    else:
        out.layers[layer] = arr
    return out


def _run(kind, adata, **kw):
    if kind == "deep_shap":
        sx.tl.deep_shap(adata, _mlp(adata.n_vars, 4), groupby="cell_type", n_background=20, progress=False, **kw)
    elif kind == "deep_shap_all":
        sx.tl.deep_shap(adata, _mlp(adata.n_vars, 4), groupby="cell_type", n_background=20, target="all",
                        keep_all=True, key_added="deep_shap", progress=False, **kw)
    elif kind == "vargrad":
        sx.tl.vargrad(adata, _mlp(adata.n_vars, 4), groupby="cell_type", n_samples=5, progress=False,
                      key_added="deep_shap", **kw)
    elif kind == "integrated_gradients":
        sx.tl.integrated_gradients(adata, _mlp(adata.n_vars, 4), groupby="cell_type", n_steps=8,
                                   baseline="background", n_background=5, key_added="deep_shap", progress=False, **kw)
    return adata


def _dense(x):
    x = x.compute() if hasattr(x, "compute") else x
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


def _assert_close(a, b, key="deep_shap", rtol=1e-5, atol=1e-6):
    for k in a.layers:
        if k.startswith(key):
            np.testing.assert_allclose(_dense(a.layers[k]), _dense(b.layers[k]), rtol=rtol, atol=atol, err_msg=k)
    for k in a.varm:
        if k.startswith(key):
            np.testing.assert_allclose(a.varm[k], b.varm[k], rtol=rtol, atol=atol, err_msg=k)
    for name in ("names",):
        assert a.uns[key][name].dtype.names == b.uns[key][name].dtype.names


@pytest.mark.parametrize("kind", ["deep_shap", "deep_shap_all", "vargrad", "integrated_gradients"])
@pytest.mark.parametrize("as_sparse", [False, True])
def test_dask_equals_in_memory(kind, as_sparse):
    adata = _toy()
    mem = _run(kind, adata.copy(), dtype="float64", batch_size=32)
    lazy = _run(kind, _lazy(adata, as_sparse=as_sparse), dtype="float64", batch_size=32)
    assert isinstance(lazy.layers["deep_shap"], da.Array)  # streamed, not materialised
    _assert_close(lazy, mem, rtol=1e-9, atol=1e-10)
    bg_lazy = lazy.uns["deep_shap"]["params"]["background_obs_indices"]
    bg_mem = mem.uns["deep_shap"]["params"]["background_obs_indices"]
    assert (bg_lazy is None and bg_mem is None) or bg_lazy.tolist() == bg_mem.tolist()


def test_dask_float32_and_other_chunkings_agree():
    adata = _toy()
    mem = _run("deep_shap", adata.copy(), batch_size=64)
    for chunks in (37, 300):
        lazy = _run("deep_shap", _lazy(adata, chunks=chunks), batch_size=64)
        _assert_close(lazy, mem)


def test_latent_mode_on_dask(scvi_model):
    model, adata = scvi_model
    mem = adata.copy()
    sx.tl.deep_shap(mem, model, explain="latent", n_background=10, dtype="float64", keep_all=True, progress=False)
    lazy = adata.copy()
    lazy.layers["counts"] = da.from_array(np.asarray(adata.layers["counts"]), chunks=(23, -1))
    sx.tl.deep_shap(lazy, model, explain="latent", n_background=10, dtype="float64", keep_all=True, progress=False)
    _assert_close(lazy, mem, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(lazy.obsm["deep_shap_expected_value"], mem.obsm["deep_shap_expected_value"],
                               rtol=1e-10)


@pytest.fixture(scope="module")
def scvi_model():
    scvi = pytest.importorskip("scvi")
    scvi.settings.seed = 0
    adata = scvi.data.synthetic_iid(batch_size=40, n_genes=30, n_batches=2, n_labels=3)
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi.model.SCVI(adata, n_latent=3, n_hidden=16, encode_covariates=True)
    model.train(max_epochs=2, accelerator="cpu", enable_progress_bar=False, logger=False, enable_checkpointing=False)
    adata.layers["counts"] = adata.X.copy()
    plain = ad.AnnData(adata.X.copy(), obs=adata.obs[["batch", "labels"]].copy(), var=adata.var.copy())
    plain.layers["counts"] = np.asarray(adata.X, dtype=np.float32)
    return model, plain


def _forest(adata, rep=True):
    from sklearn.ensemble import RandomForestClassifier

    x = adata.obsm["X_pca"] if rep else np.asarray(adata.X)
    return RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x, adata.obs["cell_type"])


@pytest.mark.parametrize("perturbation", ["tree_path_dependent", "interventional"])
def test_tree_shap_on_dask_genes_equals_in_memory(perturbation):
    adata = _toy()
    forest = _forest(adata, rep=False)
    kw = dict(groupby="cell_type", feature_perturbation=perturbation, n_background=20, target="all", keep_all=True,
              progress=False, n_bootstrap=8 if perturbation == "interventional" else None)
    mem = adata.copy()
    sx.tl.tree_shap_gpu(mem, forest, **kw)
    lazy = _lazy(adata)
    sx.tl.tree_shap_gpu(lazy, forest, **kw)
    assert isinstance(lazy.layers["tree_shap"], da.Array)
    assert isinstance(lazy.layers["tree_shap_presence"], da.Array)
    expected = {"tree_shap", "tree_shap_mean_abs", "tree_shap_presence"}
    if perturbation == "interventional":
        expected |= {"tree_shap_ci_low", "tree_shap_ci_high", "tree_shap_rank_stability"}
    assert expected <= set(lazy.varm)
    _assert_close(lazy, mem, key="tree_shap", rtol=1e-12, atol=1e-12)


def _toy_pca():
    import scanpy as sc

    adata = _toy()
    sc.pp.pca(adata, n_comps=6)
    return adata


@pytest.mark.parametrize("perturbation", ["tree_path_dependent", "interventional"])
def test_tree_shap_to_genes_on_dask_equals_in_memory(perturbation):
    adata = _toy_pca()
    forest = _forest(adata)
    kw = dict(use_rep="X_pca", to_genes=True, groupby="cell_type", feature_perturbation=perturbation,
              n_background=20, progress=False, n_bootstrap=8 if perturbation == "interventional" else None)
    mem = adata.copy()
    sx.tl.tree_shap_gpu(mem, forest, **kw)
    lazy = _lazy(adata)  # the genes on dask (the embedding stays in memory)
    sx.tl.tree_shap_gpu(lazy, forest, **kw)
    assert isinstance(lazy.layers["tree_shap"], da.Array)
    _assert_close(lazy, mem, key="tree_shap", rtol=1e-9, atol=1e-12)
    for k in ("tree_shap", "tree_shap_presence"):
        np.testing.assert_allclose(_dense(lazy.obsm[k]), _dense(mem.obsm[k]), rtol=1e-9, atol=1e-12)
    for t, table in mem.uns["tree_shap"]["group_tables"].items():
        np.testing.assert_allclose(lazy.uns["tree_shap"]["group_tables"][t], table, rtol=1e-9, atol=1e-12)


def test_nan_in_a_dask_block_is_a_clear_error_and_leaves_the_adata_untouched(snapshot):
    adata = _toy()
    x = np.asarray(adata.X).copy()
    x[250, 3] = np.nan  # in the fourth block: found during the pass, before anything is written
    lazy = adata.copy()
    lazy.X = da.from_array(x, chunks=(CHUNK, -1))
    before = snapshot(lazy)
    with pytest.raises(ValueError, match="NaN or infinite"):
        sx.tl.deep_shap(lazy, _mlp(adata.n_vars, 4), groupby="cell_type", n_background=20, progress=False)
    assert_adata_equal(lazy, before)


# --- one pass: each block computed once, from tl to a written zarr store ---------------------------------------
def test_each_block_is_computed_once_from_tl_to_a_written_zarr_store(tmp_path, monkeypatch):
    adata = _toy()
    calls: list[tuple[int, int]] = []
    reads: list[tuple[int, int]] = []
    original = _driver.CellBlocks.__call__

    def counting(self, x_block, rows):
        calls.append((int(rows[0]), int(rows[-1]) + 1))
        return original(self, x_block, rows)

    monkeypatch.setattr(_driver.CellBlocks, "__call__", counting)
    x = np.asarray(adata.X)

    def read_block(block, block_info=None):
        loc = block_info[0]["array-location"][0]
        reads.append(loc)
        return block

    lazy = adata.copy()
    lazy.X = da.from_array(x, chunks=(CHUNK, -1)).map_blocks(read_block, dtype=x.dtype)
    model = _mlp(adata.n_vars, 4)
    sx.tl.deep_shap(lazy, model, groupby="cell_type", n_background=20, progress=False)
    blocks = [(s, min(s + CHUNK, adata.n_obs)) for s in range(0, adata.n_obs, CHUNK)]
    assert sorted(calls) == blocks  # every block explained exactly once
    bg = lazy.uns["deep_shap"]["params"]["background_obs_indices"]
    bg_chunks = len({int(i) // CHUNK for i in bg})
    # the pass reads each block once; drawing the background read the chunks holding its rows, once, before
    assert len(reads) == len(blocks) + bg_chunks
    lazy.X = x  # the input itself is not what we stream: only the spilled result is left to write
    explain_reads = len(reads)
    lazy.write_zarr(tmp_path / "out.zarr")
    lazy.write_h5ad(tmp_path / "out.h5ad")
    assert sorted(calls) == blocks  # writing streamed the spilled attributions: no block explained again
    assert len(reads) == explain_reads  # ... and the input was not read again
    back = ad.read_zarr(tmp_path / "out.zarr")
    np.testing.assert_array_equal(back.layers["deep_shap"], np.asarray(lazy.layers["deep_shap"]))
    mem = adata.copy()
    sx.tl.deep_shap(mem, model, groupby="cell_type", n_background=20, progress=False)
    np.testing.assert_allclose(back.layers["deep_shap"], mem.layers["deep_shap"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ad.read_h5ad(tmp_path / "out.h5ad").layers["deep_shap"], back.layers["deep_shap"])


# --- dask.distributed ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cl:
        yield cl


@pytest.mark.parametrize("kind", ["deep_shap", "vargrad"])
def test_local_cluster_is_bit_identical_to_the_local_run(cluster, kind):
    from distributed import Client

    adata = _toy()
    local = _run(kind, _lazy(adata))
    with Client(cluster):
        remote = _run(kind, _lazy(adata))
    for k in ("deep_shap",):
        np.testing.assert_array_equal(_dense(remote.layers[k]), _dense(local.layers[k]))
        np.testing.assert_array_equal(remote.varm[k], local.varm[k])
    np.testing.assert_array_equal(remote.uns["deep_shap"]["scores"]["type_1"], local.uns["deep_shap"]["scores"]["type_1"])


def test_local_cluster_latent_and_trees(cluster, scvi_model):
    from distributed import Client

    model, adata = scvi_model
    adata = adata.copy()
    local = adata.copy()
    local.layers["counts"] = da.from_array(np.asarray(adata.layers["counts"]), chunks=(23, -1))
    remote = local.copy()
    toy = _toy_pca()
    forest, on_pcs = _forest(toy, rep=False), _forest(toy)
    t_local, t_remote = _lazy(toy), _lazy(toy)
    kw = dict(groupby="cell_type", feature_perturbation="interventional", n_background=15, progress=False,
              n_bootstrap=5)
    genes_kw = dict(kw, use_rep="X_pca", to_genes=True, key_added="genes")
    sx.tl.deep_shap(local, model, explain="latent", n_background=10, progress=False)
    sx.tl.tree_shap_gpu(t_local, forest, **kw)
    sx.tl.tree_shap_gpu(t_local, on_pcs, **genes_kw)
    with Client(cluster):
        sx.tl.deep_shap(remote, model, explain="latent", n_background=10, progress=False)
        sx.tl.tree_shap_gpu(t_remote, forest, **kw)
        sx.tl.tree_shap_gpu(t_remote, on_pcs, **genes_kw)
    np.testing.assert_array_equal(remote.varm["deep_shap_latent"], local.varm["deep_shap_latent"])
    for key in ("tree_shap", "genes"):
        for k in (key, f"{key}_presence"):
            np.testing.assert_array_equal(_dense(t_remote.layers[k]), _dense(t_local.layers[k]))
        for k in (key, f"{key}_presence", f"{key}_ci_low", f"{key}_rank_stability"):
            np.testing.assert_array_equal(t_remote.varm[k], t_local.varm[k])
    np.testing.assert_array_equal(t_remote.obsm["genes"], t_local.obsm["genes"])


def test_the_block_function_travels_once_per_worker_and_threads_are_set(cluster):
    from distributed import Client

    adata = _toy()
    lazy = _lazy(adata, chunks=30)  # 10 blocks on 2 workers
    with Client(cluster) as client:
        before = client.run(lambda: _driver._Blocks.unpickled)
        _run("deep_shap", lazy)
        after = client.run(lambda: _driver._Blocks.unpickled)
        threads = client.run(lambda: torch.get_num_threads())
    assert set(threads.values()) == {1}  # torch threads = the worker's threads
    copies = [after[w] - before.get(w, 0) for w in after]
    assert sum(copies) <= len(after) and max(copies) == 1  # one copy per worker, not one per block
    assert isinstance(lazy.layers["deep_shap"], da.Array) and lazy.layers["deep_shap"].shape == adata.shape


def test_cli_runs_on_the_cluster_named_by_dask_scheduler_address(cluster, tmp_path):
    from distributed import Client

    from _cli_helpers import export, run_cli

    adata = _toy()
    adata.write_zarr(tmp_path / "in.zarr")
    export(_mlp(adata.n_vars, 4).float(), adata.n_vars, tmp_path / "model.pt2")
    args = ["deep-shap", "-i", tmp_path / "in.zarr", "--model", tmp_path / "model.pt2", "--groupby", "cell_type",
            "--n-background", "20"]
    local = run_cli(*args, "-o", tmp_path / "local.zarr", env={"DASK_SCHEDULER_ADDRESS": ""})
    assert local.returncode == 0, local.stderr
    with Client(cluster) as client:
        before = sum(client.run(lambda: _driver._Blocks.unpickled).values())
        remote = run_cli(*args, "-o", tmp_path / "remote.zarr",
                         env={"DASK_SCHEDULER_ADDRESS": cluster.scheduler_address})
        after = sum(client.run(lambda: _driver._Blocks.unpickled).values())
    assert remote.returncode == 0, remote.stderr
    assert after > before  # the blocks ran on the cluster's workers
    a, b = ad.read_zarr(tmp_path / "local.zarr"), ad.read_zarr(tmp_path / "remote.zarr")
    np.testing.assert_array_equal(a.layers["deep_shap"], b.layers["deep_shap"])
    np.testing.assert_array_equal(a.varm["deep_shap"], b.varm["deep_shap"])
