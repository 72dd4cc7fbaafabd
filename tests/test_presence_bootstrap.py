"""Presence/absence split and the one-pass bootstrap of group summaries (issue: what a biologist reads).

Oracles: a linear model's per-pair terms are w·(x − b) in closed form, so its presence part is
mean_b w·(x − b)·[x > b]; planted toy markers; pbmc68k's myeloid genes in B cells; bootstrap intervals against
reruns with fresh background cells and against the analytic standard error of a mean.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import scexplain as sx
from scexplain._results import get_result
from scexplain.tl._bootstrap import BootstrapSpec, cell_partials, summarise


def _toy():
    return sx.datasets.toy(n_cells=240, n_genes=40, n_groups=4, n_markers=4, seed=0)


def _linear(n_in, n_out, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(n_in, n_out).double()


def _mlp(n_in, n_out, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n_in, 16), torch.nn.ReLU(), torch.nn.Linear(16, n_out)).double()


# --- the split ---------------------------------------------------------------------------------------------------
def test_linear_model_split_equals_the_closed_form_per_pair():
    adata = _toy()
    model = _linear(adata.n_vars, 4)
    sx.tl.deep_shap(adata, model, groupby="cell_type", layer="lognorm", n_background=30, dtype="float64",
                    progress=False)
    x = np.asarray(adata.layers["lognorm"], dtype=np.float64)
    b = x[adata.uns["deep_shap"]["params"]["background_obs_indices"]]
    w = model.weight.detach().numpy()[adata.obs["cell_type"].cat.codes.to_numpy()]  # own class weights
    diff = x[:, None, :] - b[None]  # cells × B × genes
    presence = (w[:, None, :] * diff * (diff > 0)).mean(1)
    np.testing.assert_allclose(adata.layers["deep_shap_presence"], presence, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(adata.layers["deep_shap"], (w[:, None, :] * diff).mean(1), rtol=1e-5, atol=1e-6)
    assert adata.uns["deep_shap"]["params"]["presence_reference"].startswith("each (cell, background cell) pair")


@pytest.mark.parametrize("method", ["deep_shap", "vargrad", "integrated_gradients", "integrated_gradients_zeros"])
def test_split_is_exact_per_cell_and_in_the_group_summaries(method):
    adata = _toy()
    model = _mlp(adata.n_vars, 4)
    kw = dict(groupby="cell_type", layer="lognorm", dtype="float64", progress=False)
    if method == "deep_shap":
        sx.tl.deep_shap(adata, model, n_background=20, **kw)
    elif method == "vargrad":
        sx.tl.vargrad(adata, model, n_samples=4, **kw)
    else:
        baseline = "zeros" if method.endswith("zeros") else "background"
        sx.tl.integrated_gradients(adata, model, baseline=baseline, n_steps=8, n_background=5, **kw)
    key = method.replace("_zeros", "")
    res = get_result(adata, key)
    phi, presence = res.cell_values(), res.presence_values()
    absence = phi - presence
    np.testing.assert_allclose(presence + absence, phi, rtol=0, atol=1e-6)
    mean, pres, absn = (res.group_table(values=v) for v in ("mean", "presence", "absence"))
    np.testing.assert_allclose((pres + absn).to_numpy(), mean.to_numpy(), rtol=1e-10, atol=1e-12)
    cells = (adata.obs["cell_type"] == "type_2").to_numpy()
    np.testing.assert_allclose(pres["type_2"], presence[cells].mean(0), rtol=1e-5, atol=1e-7)
    x = np.asarray(adata.layers["lognorm"])
    if method != "deep_shap":  # a mask by the reference: presence only where the cell is above it
        rule = res.params["presence_reference"]
        ref = 0.0 if method.endswith("zeros") else x[res.params["background_obs_indices"]].mean(0) \
            if res.params["background_obs_indices"] is not None else None
        assert ("0 (the zero baseline)" in rule) == method.endswith("zeros")
        if ref is not None:
            assert (presence[x <= ref] == 0).all() and (absence[x > ref] == 0).all()


def test_planted_markers_are_presence_for_their_group():
    adata = _toy()
    markers = adata.uns["toy"]["markers"]
    # a model that scores each type by its markers: up-regulated markers should count as presence
    model = _linear(adata.n_vars, 4)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
        for c, g in enumerate(adata.obs["cell_type"].cat.categories):
            model.weight[c, adata.var_names.get_indexer(list(markers[g]))] = 1.0
    sx.tl.deep_shap(adata, model, groupby="cell_type", layer="lognorm", n_background=40, dtype="float64",
                    progress=False)
    res = get_result(adata, "deep_shap")
    pres, absn = res.group_table(values="presence"), res.group_table(values="absence")
    for g in adata.obs["cell_type"].cat.categories:
        genes = list(markers[g])
        assert (pres.loc[genes, g] > 0).all()
        assert (pres.loc[genes, g] > 5 * absn.loc[genes, g].abs()).all()


@pytest.fixture(scope="module")
def pbmc_explained():
    from scexplain._demo import train_mlp

    adata = sx.datasets.pbmc68k_counts()
    labels = adata.obs["bulk_labels"].astype("category")
    model = train_mlp(adata.layers["lognorm"], labels.cat.codes.to_numpy(), epochs=30, seed=0)
    sx.tl.deep_shap(adata, model, groupby="bulk_labels", layer="lognorm", n_background=100, progress=False,
                    n_bootstrap=25)
    return adata, model


def test_pbmc_myeloid_genes_of_b_cells_fall_under_absence(pbmc_explained):
    adata, _ = pbmc_explained
    res = get_result(adata, "deep_shap")
    mean, pres, absn = (res.group_table(values=v)["CD19+ B"] for v in ("mean", "presence", "absence"))
    top = mean.sort_values(ascending=False).index[:10]
    for gene in ("CST3", "LYZ"):
        assert gene in top  # the model uses them for B cells ...
        assert absn[gene] > 0.8 * mean[gene] and absn[gene] > 4 * abs(pres[gene])  # ... because B cells lack them
    assert pres["CD79A"] > absn["CD79A"]  # a B-cell marker B cells express: presence


# --- the bootstrap -----------------------------------------------------------------------------------------------
def test_bootstrap_is_deterministic_for_a_seed(pbmc_explained):
    adata, model = pbmc_explained
    again = sx.tl.deep_shap(adata, model, groupby="bulk_labels", layer="lognorm", n_background=100,
                            progress=False, n_bootstrap=25, copy=True)
    for t in ("ci_low", "ci_high", "rank_stability"):
        np.testing.assert_array_equal(again.varm[f"deep_shap_{t}"], adata.varm[f"deep_shap_{t}"])
    other = sx.tl.deep_shap(adata, model, groupby="bulk_labels", layer="lognorm", n_background=100,
                            progress=False, n_bootstrap=25, random_state=1, copy=True)
    assert not np.array_equal(other.varm["deep_shap_ci_low"], adata.varm["deep_shap_ci_low"])
    params = adata.uns["deep_shap"]["params"]["bootstrap"]
    assert params["n_bootstrap"] == 25 and params["ci_level"] == 0.95


def test_bootstrap_does_not_depend_on_chunking(pbmc_explained):
    import dask.array as da

    adata, model = pbmc_explained
    lazy = adata.copy()
    lazy.layers["lognorm"] = da.from_array(np.asarray(adata.layers["lognorm"]), chunks=(123, -1))
    sx.tl.deep_shap(lazy, model, groupby="bulk_labels", layer="lognorm", n_background=100, progress=False,
                    n_bootstrap=25, batch_size=50)
    for t in ("ci_low", "ci_high"):
        np.testing.assert_allclose(lazy.varm[f"deep_shap_{t}"], adata.varm[f"deep_shap_{t}"], rtol=1e-4, atol=1e-6)
    # rank stability counts replicates: allow one replicate to flip a near-tie at the top-20 border
    assert np.abs(lazy.varm["deep_shap_rank_stability"] - adata.varm["deep_shap_rank_stability"]).max() <= 1 / 25


def test_intervals_cover_reruns_with_fresh_background_cells(pbmc_explained):
    """Reruns that draw other background cells (other random_state) mostly fall inside the intervals."""
    adata, model = pbmc_explained
    res = get_result(adata, "deep_shap")
    low, high = res.group_table(values="ci_low"), res.group_table(values="ci_high")
    top = {g: res.group_table()[g].abs().sort_values(ascending=False).index[:20] for g in low.columns}
    inside = []
    for seed in range(1, 6):
        rerun = sx.tl.deep_shap(adata, model, groupby="bulk_labels", layer="lognorm", n_background=100,
                                random_state=seed, progress=False, copy=True, split=False)
        mean = get_result(rerun, "deep_shap").group_table()
        for g, genes in top.items():
            inside.append(((mean.loc[genes, g] >= low.loc[genes, g]) & (mean.loc[genes, g] <= high.loc[genes, g]))
                          .to_numpy())
    coverage = float(np.concatenate(inside).mean())
    # the intervals also carry the cell resampling, which reruns on the same cells do not vary: ≥ 0.95 nominal
    assert coverage >= 0.9, coverage


def test_summarise_matches_the_analytic_standard_error_of_a_mean():
    """Cells only (no background): the interval of a group mean is ±1.96 σ/√n, as for i.i.d. values."""
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(4000, 6)) * np.array([0.5, 1, 2, 1, 1, 3])
    codes = np.repeat([0, 1], 2000)
    spec = BootstrapSpec(400, 7)
    parts = [cell_partials(spec, np.arange(s, s + 500), codes, 2, phi[s:s + 500]) for s in range(0, 4000, 500)]
    T = sum(p["boot_T"] for p in parts)
    V = sum(p["boot_V"] for p in parts)
    out = summarise(spec, T, V, None, np.bincount(codes), 1)
    se = np.stack([phi[codes == k].std(0) / np.sqrt(2000) for k in (0, 1)], axis=1)
    width = (out["ci_high"] - out["ci_low"]) / (2 * 1.96 * se)
    assert np.abs(width - 1).max() < 0.15, width


def test_background_resampling_shifts_by_the_per_background_sums():
    """With cells fixed, replicate means are the background-weighted means of S: check against direct reweighting."""
    rng = np.random.default_rng(1)
    n, B, F = 50, 8, 3
    phi_ib = rng.normal(size=(n, B, F))
    S = phi_ib.sum(0)[None]  # one group
    phi = phi_ib.mean(1)
    spec = BootstrapSpec(300, 3, level=0.9)
    parts = cell_partials(spec, np.arange(n), np.zeros(n, dtype=int), 1, phi)
    # cells resampled too; the background part alone is the difference to a cells-only summary
    both = summarise(spec, parts["boot_T"], parts["boot_V"], S, np.array([n]), B)
    cells_only = summarise(spec, parts["boot_T"], parts["boot_V"], None, np.array([n]), B)
    assert (both["ci_high"] - both["ci_low"] > cells_only["ci_high"] - cells_only["ci_low"]).all()
    from scexplain.tl._bootstrap import background_weights

    w = background_weights(spec, B)
    direct = np.einsum("rb,nbf->rf", w, phi_ib) / (n * B)  # exact background resampling with all cells
    lin = phi.mean(0) + np.einsum("rb,bf->rf", w - 1, S[0]) / (n * B)
    np.testing.assert_allclose(lin, direct, rtol=1e-12)  # linear in the background weights: exact here


def test_n_bootstrap_needs_groupby_and_valid_options(snapshot):
    adata = _toy()
    before = snapshot(adata)
    model = _mlp(adata.n_vars, 4)
    with pytest.raises(ValueError, match="needs `groupby=`"):
        sx.tl.deep_shap(adata, model, target="predicted", layer="lognorm", n_bootstrap=10, progress=False)
    with pytest.raises(ValueError, match="n_bootstrap"):
        sx.tl.deep_shap(adata, model, groupby="cell_type", layer="lognorm", n_bootstrap=1, progress=False)
    with pytest.raises(ValueError, match="ci_level"):
        sx.tl.deep_shap(adata, model, groupby="cell_type", layer="lognorm", n_bootstrap=5, ci_level=1.5,
                        progress=False)
    from _helpers import assert_adata_equal

    assert_adata_equal(adata, before)


def test_split_off_stores_no_presence():
    adata = _toy()
    sx.tl.deep_shap(adata, _mlp(adata.n_vars, 4), groupby="cell_type", layer="lognorm", split=False,
                    progress=False)
    assert "deep_shap_presence" not in adata.layers and "deep_shap_presence" not in adata.varm
    assert not get_result(adata, "deep_shap").has_table("presence")
    assert isinstance(get_result(adata, "deep_shap").group_table(), pd.DataFrame)
