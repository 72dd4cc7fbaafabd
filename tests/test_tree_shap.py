"""tl.tree_shap_gpu: storage contract, oracles through the public API, targets, NaN, bad input, CLI."""

from __future__ import annotations

import dataclasses

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

import scexplain as sx
from _helpers import assert_adata_equal
from scexplain._results import get_result
from scexplain.cli import main

shap = pytest.importorskip("shap")
xgb = pytest.importorskip("xgboost")


@pytest.fixture(scope="module")
def pbmc():
    adata = sx.datasets.pbmc68k_counts()
    adata.obsm["X_pca"] = adata.obsm["X_pca"][:, :20].astype(np.float64)
    return adata


@pytest.fixture(scope="module")
def forest(pbmc):
    return RandomForestClassifier(n_estimators=15, max_depth=6, random_state=0).fit(
        pbmc.obsm["X_pca"], pbmc.obs["bulk_labels"]
    )


@pytest.fixture(scope="module")
def explained(pbmc, forest):
    adata = pbmc.copy()
    sx.tl.tree_shap_gpu(adata, forest, use_rep="X_pca", groupby="bulk_labels", progress=False)
    return adata


def _own(adata, model):
    return np.searchsorted(model.classes_, adata.obs["bulk_labels"].astype(str))


def test_use_rep_storage_contract(explained, forest):
    adata, key = explained, "tree_shap"
    values = adata.obsm[key]
    assert isinstance(values, np.ndarray) and values.dtype == np.float32 and values.shape == (700, 20)
    uns = adata.uns[key]
    assert list(uns["feature_names"][:3]) == ["PC1", "PC2", "PC3"]
    groups = sorted(adata.obs["bulk_labels"].astype(str).unique())
    assert sorted(uns["groups"]) == groups
    res = get_result(adata, key)
    tables = {t: res.group_table(values=t) for t in ("mean", "mean_abs")}
    for t, table in tables.items():
        assert isinstance(uns["group_tables"][t], np.ndarray) and uns["group_tables"][t].shape == (20, len(groups))
        assert list(table.index) == list(uns["feature_names"]) and sorted(table.columns) == groups
    assert (tables["mean_abs"].to_numpy() >= np.abs(tables["mean"].to_numpy()) - 1e-7).all()
    mono = adata.obs["bulk_labels"] == "CD14+ Monocyte"
    np.testing.assert_allclose(tables["mean"]["CD14+ Monocyte"], values[mono.to_numpy()].mean(0), atol=1e-6)
    df = sc.get.rank_genes_groups_df(adata, "CD14+ Monocyte", key=key)
    assert df["names"].iloc[0] == tables["mean"]["CD14+ Monocyte"].idxmax()
    np.testing.assert_allclose(uns["expected_value"], shap.TreeExplainer(forest).expected_value, atol=1e-12)
    assert uns["additivity"]["max_abs_error"] < 1e-12
    params = uns["params"]
    for k, v in {"method": "tree_shap", "groupby": "bulk_labels", "use_rep": "X_pca", "target": "label",
                 "feature_perturbation": "tree_path_dependent", "device": "cpu"}.items():
        assert params[k] == v
    assert params["model_class"].endswith("RandomForestClassifier")
    # path-dependent: the background is only the presence split's reference
    assert params["n_background"] == 100 and params["presence"] == "x_j > mean(background)"
    assert "tree_shap" not in adata.layers and "tree_shap" not in adata.varm


def test_use_rep_equals_shap_toward_own_label(pbmc, explained, forest):
    expected = shap.TreeExplainer(forest).shap_values(pbmc.obsm["X_pca"])  # cells × dims × classes
    own = _own(pbmc, forest)
    np.testing.assert_allclose(explained.obsm["tree_shap"], expected[np.arange(700), :, own], atol=1e-6)


def test_h5ad_round_trip(explained, tmp_path):
    path = tmp_path / "out.h5ad"
    explained.write_h5ad(path)
    assert_adata_equal(ad.read_h5ad(path), explained)


def test_genes_layers_and_gene_subset(pbmc, snapshot):
    adata = pbmc.copy()
    genes = list(adata.var_names[::5])
    X = pd.DataFrame(adata[:, genes].layers["lognorm"], columns=genes)
    model = HistGradientBoostingClassifier(max_iter=4, max_depth=3, random_state=0).fit(X, adata.obs["bulk_labels"])
    before = snapshot(adata)
    out = sx.tl.tree_shap_gpu(adata, model, layer="lognorm", groupby="bulk_labels", copy=True, progress=False)
    assert_adata_equal(adata, before)  # copy=True leaves the input alone
    layer = out.layers["tree_shap"]
    assert layer.shape == adata.shape and layer.dtype == np.float32
    other = ~adata.var_names.isin(genes)
    assert (layer[:, other] == 0).all() and np.abs(layer[:, ~other]).sum() > 0
    expected = shap.TreeExplainer(model).shap_values(X)  # raw margins
    np.testing.assert_allclose(layer[:, ~other], expected[np.arange(700), :, _own(adata, model)], atol=1e-5)
    varm = get_result(out, "tree_shap").group_table()
    assert list(varm.index) == list(adata.var_names) and "CD14+ Monocyte" in varm.columns
    np.testing.assert_array_equal(varm.to_numpy(), out.varm["tree_shap"])
    assert out.varm["tree_shap_mean_abs"].shape == out.varm["tree_shap"].shape
    summary = out.obsm["tree_shap"]
    np.testing.assert_allclose(summary["sum_attributions"] + summary["expected_value"], summary["output"], atol=1e-5)
    assert sc.get.rank_genes_groups_df(out, "CD19+ B", key="tree_shap").shape[0] == adata.n_vars


def test_targets_predicted_all_and_keep_all(pbmc, forest):
    adata = pbmc.copy()
    sx.tl.tree_shap_gpu(adata, forest, use_rep="X_pca", target="predicted", progress=False, key_added="pred")
    expected = shap.TreeExplainer(forest).shap_values(pbmc.obsm["X_pca"])
    predicted = forest.predict_proba(pbmc.obsm["X_pca"]).argmax(1)
    np.testing.assert_allclose(adata.obsm["pred"], expected[np.arange(700), :, predicted], atol=1e-6)
    assert "group_tables" not in adata.uns["pred"] and "groups" not in adata.uns["pred"]  # no groupby, no tables
    sx.tl.tree_shap_gpu(adata, forest, use_rep="X_pca", groupby="bulk_labels", target="all", keep_all=True,
                        progress=False, key_added="all")
    uns = adata.uns["all"]
    assert uns["values"].shape == (700, 20, 10) and list(uns["values_outputs"]) == list(range(10))
    assert list(uns["output_names"]) == list(forest.classes_)
    np.testing.assert_allclose(uns["values"], expected, atol=1e-6)
    np.testing.assert_allclose(adata.obsm["all"], expected[np.arange(700), :, _own(pbmc, forest)], atol=1e-6)
    sx.tl.tree_shap_gpu(adata, forest, use_rep="X_pca", target=["CD19+ B"], progress=False, key_added="b")
    assert adata.uns["b"]["params"]["target"].tolist() == ["CD19+ B"]


def test_interventional_and_interactions(pbmc, forest):
    adata = pbmc.copy()
    bg = np.arange(0, 700, 35)
    sx.tl.tree_shap_gpu(adata, forest, use_rep="X_pca", groupby="bulk_labels", progress=False,
                        feature_perturbation="interventional", background=bg)
    explainer = shap.TreeExplainer(forest, pbmc.obsm["X_pca"][bg], feature_perturbation="interventional")
    rows = np.arange(0, 700, 7)
    expected = explainer.shap_values(pbmc.obsm["X_pca"][rows], check_additivity=False)
    own = _own(pbmc, forest)[rows]
    np.testing.assert_allclose(adata.obsm["tree_shap"][rows], expected[np.arange(len(rows)), :, own], atol=1e-6)
    uns = adata.uns["tree_shap"]
    assert uns["params"]["n_background"] == 20 and uns["params"]["background_obs_indices"].tolist() == bg.tolist()
    np.testing.assert_allclose(uns["expected_value"], explainer.expected_value, atol=1e-12)
    small = pbmc[:30].copy()
    sx.tl.tree_shap_gpu(small, forest, use_rep="X_pca", groupby="bulk_labels", interactions=True, progress=False)
    inter = small.uns["tree_shap"]["interactions"]
    expected = shap.TreeExplainer(forest).shap_interaction_values(small.obsm["X_pca"])
    np.testing.assert_allclose(inter, expected[np.arange(30), :, :, _own(small, forest)], atol=1e-6)
    np.testing.assert_allclose(inter.sum(-1), small.obsm["tree_shap"], atol=1e-6)
    assert small.uns["tree_shap"]["interactions_mean_abs"].shape == (20, 20)


# --- presence / absence --------------------------------------------------------------------------------------------
def test_interventional_presence_is_each_pairs_term_where_the_cell_is_larger(pbmc, forest):
    """Oracle: shap's interventional TreeExplainer against one background cell at a time gives each pair's terms."""
    adata = pbmc[:60].copy()
    bg = np.arange(0, 60, 6)
    sx.tl.tree_shap_gpu(adata, forest, use_rep="X_pca", groupby="bulk_labels", progress=False,
                        feature_perturbation="interventional", background=bg)
    x = adata.obsm["X_pca"]
    own = _own(adata, forest)
    values, presence = np.zeros(x.shape), np.zeros(x.shape)
    for b in bg:
        explainer = shap.TreeExplainer(forest, x[b : b + 1], feature_perturbation="interventional")
        phi = np.asarray(explainer.shap_values(x, check_additivity=False))[np.arange(60), :, own]
        values += phi
        presence += np.where(x > x[b], phi, 0.0)
    np.testing.assert_allclose(adata.obsm["tree_shap"], values / len(bg), atol=1e-6)
    np.testing.assert_allclose(adata.obsm["tree_shap_presence"], presence / len(bg), atol=1e-6)
    res = get_result(adata, "tree_shap")
    mean, pres, absent = (res.group_table(values=t) for t in ("mean", "presence", "absence"))
    cells = (adata.obs["bulk_labels"] == "CD14+ Monocyte").to_numpy()
    np.testing.assert_allclose(pres["CD14+ Monocyte"], (presence / len(bg))[cells].mean(0), atol=1e-6)
    np.testing.assert_allclose(pres + absent, mean, atol=1e-12)
    assert adata.uns["tree_shap"]["params"]["presence"] == "pairs: x_j > b_j"


def test_path_dependent_presence_uses_the_background_mean(explained):
    adata = explained
    bg = adata.uns["tree_shap"]["params"]["background_obs_indices"]
    assert len(bg) == 100
    reference = adata.obsm["X_pca"][bg].astype(np.float32).astype(np.float64).mean(0)  # as the forest reads it
    values = adata.obsm["tree_shap"]
    np.testing.assert_array_equal(adata.obsm["tree_shap_presence"], np.where(adata.obsm["X_pca"] > reference,
                                                                             values, 0).astype(np.float32))
    table = adata.uns["tree_shap"]["group_tables"]["presence"]
    mono = (adata.obs["bulk_labels"] == "CD14+ Monocyte").to_numpy()
    col = list(adata.uns["tree_shap"]["groups"]).index("CD14+ Monocyte")
    np.testing.assert_allclose(table[:, col], adata.obsm["tree_shap_presence"][mono].mean(0), atol=1e-6)


@pytest.mark.parametrize("mode", ["interventional", "tree_path_dependent"])
def test_planted_markers_are_explained_by_their_presence(mode):
    adata = sx.datasets.toy(n_cells=400, n_genes=30, n_groups=3, n_markers=3, seed=4)
    X = pd.DataFrame(adata.layers["lognorm"], columns=adata.var_names)
    model = RandomForestClassifier(30, max_depth=5, random_state=0).fit(X, adata.obs["cell_type"])
    sx.tl.tree_shap_gpu(adata, model, layer="lognorm", groupby="cell_type", feature_perturbation=mode,
                        n_background=40, progress=False)
    res = get_result(adata, "tree_shap")
    mean, presence = res.group_table(), res.group_table(values="presence")
    np.testing.assert_allclose(np.asarray(adata.layers["tree_shap_presence"]).sum() +
                               (np.asarray(adata.layers["tree_shap"]) - adata.layers["tree_shap_presence"]).sum(),
                               np.asarray(adata.layers["tree_shap"]).sum(), rtol=1e-6)
    for group, markers in adata.uns["toy"]["markers"].items():
        top = mean[group].sort_values(ascending=False).index[:3]
        assert set(top) == set(markers), (group, list(top))
        assert (presence.loc[markers, group] > 0.8 * mean.loc[markers, group]).all()
        # another group's markers push toward this group by their absence
        others = [g for g in adata.uns["toy"]["markers"] if g != group]
        theirs = np.concatenate([adata.uns["toy"]["markers"][g] for g in others])
        helping = mean.loc[theirs, group] > 1e-3
        assert helping.any()
        assert (presence.loc[theirs, group][helping] < 0.4 * mean.loc[theirs, group][helping]).all()


# --- bootstrap ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bootstrapped(pbmc, forest):
    adata = pbmc.copy()
    sx.tl.tree_shap_gpu(adata, forest, use_rep="X_pca", groupby="bulk_labels", feature_perturbation="interventional",
                        n_background=50, n_bootstrap=30, n_top=5, progress=False)
    return adata


def test_bootstrap_tables_params_and_determinism(pbmc, forest, bootstrapped):
    uns = bootstrapped.uns["tree_shap"]
    tables = uns["group_tables"]
    n_groups = len(uns["groups"])
    for t in ("ci_low", "ci_high", "rank_stability"):
        assert tables[t].shape == (20, n_groups)
    assert (tables["ci_low"] <= tables["ci_high"]).all()
    inside = (tables["ci_low"] <= tables["mean"] + 1e-12) & (tables["mean"] <= tables["ci_high"] + 1e-12)
    assert inside.mean() > 0.95
    assert ((tables["rank_stability"] >= 0) & (tables["rank_stability"] <= 1)).all()
    np.testing.assert_allclose(tables["rank_stability"].sum(0), 5)  # each replicate has 5 top dimensions
    assert dict(uns["params"]["bootstrap"]) == {"n_bootstrap": 30, "ci_level": 0.95, "n_top": 5, "method": (
        "two-way (Poisson over cells, multinomial over background cells), linearised")}
    again = pbmc.copy()
    sx.tl.tree_shap_gpu(again, forest, use_rep="X_pca", groupby="bulk_labels", feature_perturbation="interventional",
                        n_background=50, n_bootstrap=30, n_top=5, batch_size=97, progress=False)
    for t in ("ci_low", "ci_high", "rank_stability"):  # same seed, other blocks: the same numbers
        np.testing.assert_allclose(again.uns["tree_shap"]["group_tables"][t], tables[t], rtol=1e-12, atol=1e-15)


def test_bootstrap_background_sums_equal_the_pairs(pbmc, forest):
    """The engine's per-(group, background cell) sums, against the per-pair values summed by group."""
    from scexplain.engines import treeshap_cpu
    from scexplain.models._trees import tree_paths

    paths = tree_paths(forest)
    x = paths.prepare_input(pbmc.obsm["X_pca"][:200])
    bg = paths.prepare_input(pbmc.obsm["X_pca"][::35])
    own = _own(pbmc, forest)[:200]
    codes = pbmc.obs["bulk_labels"].cat.codes.to_numpy()[:200]
    pairs = treeshap_cpu.pair_values(paths, x, own, background=bg)
    expected = np.stack([pairs[codes == k].sum(0) for k in range(10)])
    np.testing.assert_allclose(treeshap_cpu.group_sums(paths, x, own, codes, 10, background=bg), expected,
                               atol=1e-12)


def test_bootstrap_intervals_cover_reruns_with_fresh_backgrounds(pbmc, forest, bootstrapped):
    """Reruns with other background draws (other random_state) mostly fall inside the intervals."""
    tables = bootstrapped.uns["tree_shap"]["group_tables"]
    low, high = tables["ci_low"], tables["ci_high"]
    important = tables["mean_abs"] > np.quantile(tables["mean_abs"], 0.5)  # the dimensions that matter
    hits = []
    for seed in range(1, 6):
        rerun = pbmc.copy()
        sx.tl.tree_shap_gpu(rerun, forest, use_rep="X_pca", groupby="bulk_labels",
                            feature_perturbation="interventional", n_background=50, random_state=seed,
                            progress=False)
        mean = rerun.uns["tree_shap"]["group_tables"]["mean"]
        hits.append(((mean >= low) & (mean <= high))[important])
    coverage = np.mean(hits)
    assert coverage > 0.85, coverage


def test_binary_booster_explains_each_cell_toward_its_class(pbmc):
    adata = pbmc[pbmc.obs["bulk_labels"].isin(["CD14+ Monocyte", "CD56+ NK"])].copy()
    labels = (adata.obs["bulk_labels"] == "CD56+ NK").to_numpy().astype(int)
    model = xgb.XGBClassifier(n_estimators=5, max_depth=3, n_jobs=1).fit(adata.obsm["X_pca"], labels)
    sx.tl.tree_shap_gpu(adata, model, use_rep="X_pca", groupby="bulk_labels", progress=False)
    margin = shap.TreeExplainer(model).shap_values(adata.obsm["X_pca"])
    sign = np.where(labels == 1, 1.0, -1.0)[:, None]  # categories sorted: Monocyte = output 0 = −margin
    np.testing.assert_allclose(adata.obsm["tree_shap"], sign * margin, atol=1e-6)
    assert adata.uns["tree_shap"]["params"]["output_kind"] == "margin"


def test_nan_follows_default_direction(pbmc):
    adata = pbmc.copy()
    rep = adata.obsm["X_pca"].copy()
    rep[np.random.default_rng(0).random(rep.shape) < 0.1] = np.nan
    adata.obsm["X_nan"] = rep
    model = HistGradientBoostingClassifier(max_iter=4, max_depth=3, random_state=0).fit(rep, adata.obs["bulk_labels"])
    sx.tl.tree_shap_gpu(adata, model, use_rep="X_nan", groupby="bulk_labels", progress=False)
    values = adata.obsm["tree_shap"].astype(np.float64)
    own = _own(adata, model)
    margin = model.decision_function(rep)[np.arange(700), own]
    expected_value = adata.uns["tree_shap"]["expected_value"][own]
    np.testing.assert_allclose(values.sum(1) + expected_value, margin, atol=1e-5)
    assert list(adata.uns["tree_shap"]["feature_names"][:2]) == ["X_nan_1", "X_nan_2"]


def _deep_paths():
    from scexplain.models._trees import tree_paths

    rng = np.random.default_rng(0)
    paths = tree_paths(RandomForestClassifier(2, max_depth=2).fit(rng.normal(size=(40, 20)), rng.integers(0, 2, 40)))
    return dataclasses.replace(paths, path_ptr=np.array([0, 70]), feature=np.arange(70), n_features=70,
                        leaf_value=np.zeros((1, 2)))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "not a model"}, TypeError, "supported: sklearn DecisionTreeClassifier"),
        ({"use_rep": "X_umap"}, ValueError, "expects 20 features but adata.obsm\\['X_umap'\\] has 2"),
        ({"use_rep": "X_nope"}, ValueError, "not in adata.obsm; available"),
        ({"use_rep": None}, ValueError, "expects 20 features but the gene matrix has 765"),
        ({"layer": "lognorm"}, ValueError, "either `use_rep`"),
        ({"groupby": None}, ValueError, "needs `groupby="),
        ({"groupby": "nope"}, ValueError, "not a column of adata.obs"),
        ({"feature_perturbation": "exact"}, ValueError, "feature_perturbation"),
        ({"interactions": True, "feature_perturbation": "interventional"}, ValueError, "path_dependent"),
        ({"device": "cuda"}, ValueError, "no CUDA GPU"),
        ({"device": "tpu"}, ValueError, "`device='tpu'` is not supported"),
        ({"target": ["nope"]}, ValueError, "not a model output"),
        ({"model": "deep", "use_rep": None}, ValueError, "at most 62"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"n_bootstrap": 5}, ValueError, "feature_perturbation='interventional'"),
        ({"n_bootstrap": 5, "feature_perturbation": "interventional", "groupby": None, "target": "predicted"},
         ValueError, "pass `groupby=`"),
        ({"n_bootstrap": 1, "feature_perturbation": "interventional"}, ValueError, "integer ≥ 2"),
        ({"n_bootstrap": 5, "feature_perturbation": "interventional", "ci_level": 1.5}, ValueError, "ci_level"),
        ({"feature_perturbation": "interventional", "background": np.zeros((3, 7))}, ValueError, "columns"),
    ],
)
def test_bad_input_leaves_adata_unchanged(pbmc, forest, snapshot, kwargs, error, match):
    from scexplain.engines.treeshap_gpu import cuda_available

    if kwargs.get("device") == "cuda" and cuda_available():
        pytest.skip("a GPU is present")
    adata = pbmc.copy()
    before = snapshot(adata)
    args = {"use_rep": "X_pca", "groupby": "bulk_labels", "progress": False, **kwargs}
    model = args.pop("model", forest)
    model = _deep_paths() if model == "deep" else model
    with pytest.raises(error, match=match):
        sx.tl.tree_shap_gpu(adata, model, **args)
    assert_adata_equal(adata, before)


def test_infinite_values_rejected(pbmc, forest, snapshot):
    adata = pbmc.copy()
    adata.obsm["X_pca"][3, 2] = np.inf
    before = snapshot(adata)
    with pytest.raises(ValueError, match="infinite"):
        sx.tl.tree_shap_gpu(adata, forest, use_rep="X_pca", groupby="bulk_labels", progress=False)
    assert_adata_equal(adata, before)


def test_device_auto_logs_the_engine(pbmc, forest, caplog):
    from scexplain.engines.treeshap_gpu import cuda_available

    adata = pbmc[:20].copy()
    with caplog.at_level("INFO", logger="scexplain"):
        sx.tl.tree_shap_gpu(adata, forest, use_rep="X_pca", groupby="bulk_labels", progress=False)
    expected = "GPU (CuPy)" if cuda_available() else "Numba CPU engine"
    assert expected in caplog.text


def test_docstring_example():
    import doctest

    from scexplain.tl import _tree_shap

    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(_tree_shap.tree_shap_gpu, "tree_shap_gpu", globs={}):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0 and runner.summarize(verbose=False).attempted >= 4


def test_cli_joblib_and_xgboost_json(pbmc, forest, tmp_path, capsys):
    import joblib

    path_in = tmp_path / "in.h5ad"
    pbmc.write_h5ad(path_in)
    joblib.dump(forest, tmp_path / "rf.joblib")
    rc = main(["tree-shap", "-i", str(path_in), "-o", str(tmp_path / "out.h5ad"), "--model",
               str(tmp_path / "rf.joblib"), "--use-rep", "X_pca", "--groupby", "bulk_labels", "--allow-pickle"])
    assert rc == 0
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert out.obsm["tree_shap"].shape == (700, 20)
    model = xgb.XGBClassifier(n_estimators=3, max_depth=3, n_jobs=1).fit(
        pbmc.obsm["X_pca"], pbmc.obs["bulk_labels"].cat.codes)
    model.save_model(tmp_path / "m.json")
    rc = main(["tree-shap", "-i", str(path_in), "-o", str(tmp_path / "out2.h5ad"), "--model",
               str(tmp_path / "m.json"), "--use-rep", "X_pca", "--groupby", "bulk_labels", "--target", "all",
               "--key-added", "xgb"])
    assert rc == 0
    out = ad.read_h5ad(tmp_path / "out2.h5ad")
    expected = shap.TreeExplainer(model).shap_values(pbmc.obsm["X_pca"])
    own = pbmc.obs["bulk_labels"].cat.codes.to_numpy()
    np.testing.assert_allclose(out.obsm["xgb"], expected[np.arange(700), :, own], atol=1e-5)
    rc = main(["tree-shap", "-i", str(path_in), "-o", str(tmp_path / "bad.h5ad"), "--model",
               str(tmp_path / "rf.joblib"), "--use-rep", "X_umap", "--groupby", "bulk_labels", "--allow-pickle"])
    assert rc == 1 and "X_umap" in capsys.readouterr().err and not (tmp_path / "bad.h5ad").exists()
