"""``get.ranked_genes_df``: the ranking with its presence/absence split and bootstrap summaries, aligned by gene."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import scexplain as sx
from scexplain import _store
from scexplain._inputs import get_groups, group_means
from scexplain._keys import Key

GROUPS = ["CD4+/CD25 T Reg", "B cell", "NK/T"]
BASE = ["group", "rank", "names", "scores"]
SPLIT = ["presence", "absence"]
BOOT = ["ci_low", "ci_high", "rank_stability"]


def _adata() -> ad.AnnData:
    adata = sx.datasets.toy(n_cells=90, n_genes=15, n_groups=3, n_markers=3, seed=3)
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.rename_categories(GROUPS)
    return adata


def _write(adata, *, split: bool, bootstrap: bool, key: str = "deep_shap", on_rep: bool = False) -> dict:
    """Store a result with random attributions (and split / bootstrap tables); return the tables written."""
    rng = np.random.default_rng(0)
    groups = get_groups(adata, "cell_type")
    n_features = 6 if on_rep else adata.n_vars
    features = [f"PC{i + 1}" for i in range(n_features)] if on_rep else list(adata.var_names)
    phi = rng.normal(size=(adata.n_obs, n_features))
    presence = phi * rng.uniform(-0.5, 1.5, size=phi.shape)
    tables = {Key.table.mean: group_means(phi, groups, features).to_numpy()}
    if split:
        tables[Key.table.presence] = group_means(presence, groups, features).to_numpy()
    if bootstrap:
        tables[Key.table.ci_low] = tables[Key.table.mean] - rng.uniform(0.01, 0.1, size=tables["mean"].shape)
        tables[Key.table.ci_high] = tables[Key.table.mean] + rng.uniform(0.01, 0.1, size=tables["mean"].shape)
        tables[Key.table.rank_stability] = rng.uniform(size=tables["mean"].shape)
    kwargs = {"obsm": phi, "features": features} if on_rep else {"layer": phi.astype(np.float32)}
    if split:
        kwargs["presence"] = presence.astype(np.float32)
    _store.write(adata, _store.Result(
        method="deep_shap", key=key, params={"groupby": "cell_type", "target": "label"}, groups=GROUPS,
        group_tables=tables, ranking=(tables[Key.table.mean], GROUPS), **kwargs,
    ))
    return {name: pd.DataFrame(t, index=features, columns=GROUPS) for name, t in tables.items()}


@pytest.mark.parametrize("on_rep", [False, True])
def test_columns_are_aligned_to_the_ranking(on_rep):
    adata = _adata()
    tables = _write(adata, split=True, bootstrap=True, on_rep=on_rep)
    for g in GROUPS:
        df = sx.get.ranked_genes_df(adata, "deep_shap", group=g)
        assert list(df.columns) == BASE + SPLIT + BOOT
        expected_order = tables["mean"][g].sort_values(ascending=False, kind="stable").index.tolist()
        assert df["names"].tolist() == expected_order and df["rank"].tolist() == list(range(len(df)))
        np.testing.assert_allclose(df["scores"], tables["mean"].loc[expected_order, g], rtol=1e-6)
        for name in ("presence", *BOOT):
            np.testing.assert_allclose(df[name], tables[name].loc[expected_order, g], rtol=1e-12)
        np.testing.assert_allclose(df["absence"], (tables["mean"] - tables["presence"]).loc[expected_order, g],
                                   rtol=1e-9, atol=1e-12)
        # the split sums to the score (the score is stored as float32)
        np.testing.assert_allclose(df["presence"] + df["absence"], df["scores"], rtol=1e-5, atol=1e-7)
        assert (df["ci_low"] <= df["scores"] + 1e-6).all() and (df["scores"] <= df["ci_high"] + 1e-6).all()


def test_all_groups_and_order():
    adata = _adata()
    _write(adata, split=True, bootstrap=True)
    every = sx.get.ranked_genes_df(adata, "deep_shap")
    assert every.shape == (adata.n_vars * 3, 9)
    assert list(every["group"].cat.categories) == GROUPS
    two = sx.get.ranked_genes_df(adata, "deep_shap", group=["NK/T", "B cell"])
    assert two["group"].unique().tolist() == ["NK/T", "B cell"]
    single = sx.get.ranked_genes_df(adata, "deep_shap", group="NK/T")
    pd.testing.assert_frame_equal(two[two["group"] == "NK/T"].reset_index(drop=True).drop(columns="group"),
                                  single.drop(columns="group"))


@pytest.mark.parametrize(("split", "bootstrap", "columns"),
                         [(False, False, BASE), (True, False, BASE + SPLIT), (False, True, BASE + BOOT)])
def test_optional_columns_only_when_stored(split, bootstrap, columns):
    adata = _adata()
    _write(adata, split=split, bootstrap=bootstrap)
    assert list(sx.get.ranked_genes_df(adata, "deep_shap", group="B cell").columns) == columns


def test_reads_back_from_h5ad_without_the_obs_column(tmp_path):
    adata = _adata()
    _write(adata, split=True, bootstrap=True)
    before = sx.get.ranked_genes_df(adata, "deep_shap")
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    del back.obs["cell_type"]  # the stored tables are read without the grouping column
    pd.testing.assert_frame_equal(sx.get.ranked_genes_df(back, "deep_shap"), before)
    # scanpy's reader reads the same ranking
    df = sc.get.rank_genes_groups_df(back, "CD4+/CD25 T Reg", key="deep_shap")
    assert df["names"].tolist() == before[before["group"] == "CD4+/CD25 T Reg"]["names"].tolist()


def test_files_of_scexplain_0_1_0_keep_their_columns():
    v1 = ad.read_h5ad(Path(__file__).parent / "data" / "v1" / "results_v1.h5ad")
    for key in ("deep_shap", "tree_shap"):
        df = sx.get.ranked_genes_df(v1, key, group="CD4+/CD25 T Reg")
        assert list(df.columns) == BASE
        assert df["names"].tolist() == sc.get.rank_genes_groups_df(v1, "CD4+/CD25 T Reg", key=key)["names"].tolist()


def test_errors_name_the_fix():
    adata = _adata()
    with pytest.raises(KeyError, match=r"run a scexplain\.tl function"):
        sx.get.ranked_genes_df(adata, "deep_shap")
    _write(adata, split=True, bootstrap=False)
    with pytest.raises(KeyError, match=r"Groups \['T cell'\].*available"):
        sx.get.ranked_genes_df(adata, "deep_shap", group="T cell")
