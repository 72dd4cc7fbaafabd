"""models._trees: every supported ensemble → flat paths whose predictions equal the model's raw output."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import ensemble, tree

from scexplain.engines import treeshap_cpu
from scexplain.models._trees import SUPPORTED_MODELS, tree_paths

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")


def _data(n_classes=3, n=240, n_features=6, seed=0, nan=False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features))
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 - X[:, 2] > 0).astype(int) + (X[:, 3] > 0.5) * (n_classes > 2)
    y = np.minimum(y, n_classes - 1)
    if nan:
        X[rng.random(X.shape) < 0.1] = np.nan
    return X, y


def _raw(model, X):
    """The model's own raw output (what shap.TreeExplainer explains), rows × outputs."""
    if isinstance(model, xgb.Booster):
        return model.predict(xgb.DMatrix(X, missing=np.nan), output_margin=True).reshape(len(X), -1)
    if isinstance(model, xgb.XGBModel):
        return model.predict(X, output_margin=True).reshape(len(X), -1)
    if isinstance(model, lgb.Booster):
        return model.predict(X, raw_score=True).reshape(len(X), -1)
    if isinstance(model, lgb.LGBMModel):
        return model.predict(X, raw_score=True).reshape(len(X), -1)
    if isinstance(model, ensemble.GradientBoostingClassifier | ensemble.HistGradientBoostingClassifier):
        return model.decision_function(X).reshape(len(X), -1)
    if hasattr(model, "predict_proba"):
        return model.predict_proba(X)
    return model.predict(X).reshape(len(X), -1)


def _models():
    """(name, fitted model, X to predict on, tolerance) for every supported type, small and fast."""
    X3, y3 = _data(3)
    X2, y2 = _data(2, seed=1)
    Xn, yn = _data(3, seed=2, nan=True)
    Xr = X3
    yr = X3[:, 0] * 2 + np.sin(X3[:, 1])
    out = [
        ("DecisionTreeClassifier", tree.DecisionTreeClassifier(max_depth=5, random_state=0).fit(X3, y3), X3),
        ("DecisionTreeRegressor", tree.DecisionTreeRegressor(max_depth=5, random_state=0).fit(Xr, yr), Xr),
        ("RandomForestClassifier+NaN",
         ensemble.RandomForestClassifier(8, max_depth=5, random_state=0).fit(Xn, yn), Xn),
        ("RandomForestRegressor", ensemble.RandomForestRegressor(6, max_depth=5, random_state=0).fit(Xr, yr), Xr),
        ("ExtraTreesClassifier", ensemble.ExtraTreesClassifier(6, max_depth=5, random_state=0).fit(X3, y3), X3),
        ("ExtraTreesRegressor", ensemble.ExtraTreesRegressor(6, max_depth=5, random_state=0).fit(Xr, yr), Xr),
        ("GradientBoostingClassifier-binary",
         ensemble.GradientBoostingClassifier(n_estimators=8, max_depth=3, random_state=0).fit(X2, y2), X2),
        ("GradientBoostingClassifier-multi",
         ensemble.GradientBoostingClassifier(n_estimators=5, max_depth=3, random_state=0).fit(X3, y3), X3),
        ("GradientBoostingRegressor",
         ensemble.GradientBoostingRegressor(n_estimators=8, max_depth=3, random_state=0).fit(Xr, yr), Xr),
        ("HistGradientBoostingClassifier-multi+NaN",
         ensemble.HistGradientBoostingClassifier(max_iter=5, max_depth=4, random_state=0).fit(Xn, yn), Xn),
        ("HistGradientBoostingClassifier-binary",
         ensemble.HistGradientBoostingClassifier(max_iter=5, max_depth=4, random_state=0).fit(X2, y2), X2),
        ("HistGradientBoostingRegressor",
         ensemble.HistGradientBoostingRegressor(max_iter=5, max_depth=4, random_state=0).fit(Xr, yr), Xr),
        ("XGBClassifier-multi+NaN", xgb.XGBClassifier(n_estimators=5, max_depth=4, n_jobs=1).fit(Xn, yn), Xn),
        ("XGBClassifier-binary", xgb.XGBClassifier(n_estimators=5, max_depth=4, n_jobs=1).fit(X2, y2), X2),
        ("XGBRegressor", xgb.XGBRegressor(n_estimators=5, max_depth=4, n_jobs=1).fit(Xr, yr), Xr),
        ("xgboost.Booster-dart",
         xgb.train({"booster": "dart", "max_depth": 3, "rate_drop": 0.3, "objective": "binary:logistic",
                    "nthread": 1}, xgb.DMatrix(X2, y2), 5), X2),
        ("LGBMClassifier-multi+NaN",
         lgb.LGBMClassifier(n_estimators=5, num_leaves=8, min_child_samples=5, verbose=-1, n_jobs=1).fit(Xn, yn),
         Xn),
        ("LGBMClassifier-binary",
         lgb.LGBMClassifier(n_estimators=5, num_leaves=8, verbose=-1, n_jobs=1).fit(X2, y2), X2),
        ("LGBMRegressor", lgb.LGBMRegressor(n_estimators=5, num_leaves=8, verbose=-1, n_jobs=1).fit(Xr, yr), Xr),
        ("lightgbm.Booster",
         lgb.train({"objective": "multiclass", "num_class": 3, "num_leaves": 6, "verbose": -1, "num_threads": 1},
                   lgb.Dataset(X3, y3), 4), X3),
    ]
    return out


MODELS = _models()


@pytest.mark.parametrize(("name", "model", "X"), MODELS, ids=[m[0] for m in MODELS])
def test_paths_predict_like_the_model(name, model, X):
    paths = tree_paths(model)
    X = X.copy()
    X[:5, :] = np.nan  # rows of only missing values: each split's default direction
    try:
        theirs = _raw(model, X)
    except ValueError:  # models that reject NaN (e.g. GradientBoosting): finite rows only
        X = X[5:]
        theirs = _raw(model, X)
    ours = treeshap_cpu.predict(paths, paths.prepare_input(X))
    tol = 2e-6 if "XGB" in name or "xgboost" in name else 1e-12
    np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol)
    # merged duplicate features: each path names a feature once, within bounds
    for p in range(0, paths.n_paths, max(1, paths.n_paths // 20)):
        f = paths.feature[paths.path_ptr[p] : paths.path_ptr[p + 1]]
        assert len(set(f.tolist())) == len(f)
    assert ((paths.zero_fraction >= 0) & (paths.zero_fraction <= 1 + 1e-12)).all()
    # expected value: the cover-weighted mean of the leaves
    np.testing.assert_allclose(paths.path_weights().sum(), paths.n_trees, rtol=1e-6)


def test_duplicate_splits_merge_into_one_interval():
    X = np.linspace(0, 1, 64)[:, None]
    y = ((X[:, 0] > 0.3) & (X[:, 0] < 0.7)).astype(int) + (X[:, 0] > 0.9)
    model = tree.DecisionTreeClassifier(random_state=0).fit(X, y)
    paths = tree_paths(model)
    assert paths.max_unique_features == 1 < model.get_depth()
    # the intervals partition the line
    lo, hi = paths.lower, paths.upper
    order = np.argsort(lo)
    assert lo[order][0] == -np.inf and hi[order][-1] == np.inf
    np.testing.assert_array_equal(hi[order][:-1], lo[order][1:])


def test_xgboost_strict_less_than_threshold():
    X = np.repeat(np.arange(10, dtype=np.float32), 10)[:, None]
    y = (X[:, 0] >= 5).astype(int)
    model = xgb.XGBClassifier(n_estimators=2, max_depth=2, n_jobs=1).fit(X, y)
    paths = tree_paths(model)
    thresholds = np.asarray(model.get_booster().trees_to_dataframe()["Split"].dropna(), dtype=np.float32)
    at = thresholds[:, None]  # exactly on a threshold: XGBoost goes right (x < thr is false)
    np.testing.assert_allclose(treeshap_cpu.predict(paths, paths.prepare_input(at)), _raw(model, at), atol=1e-6)


def test_binary_margin_two_sided():
    X, y = _data(2, seed=1)
    model = ensemble.GradientBoostingClassifier(n_estimators=3, random_state=0).fit(X, np.array(["a", "b"])[y])
    paths = tree_paths(model)
    assert paths.binary_margin and paths.n_outputs == 1 and paths.output_names == ["b"]
    two = paths.two_sided()
    assert two.output_names == ["a", "b"] and two.n_outputs == 2
    f = treeshap_cpu.predict(two, two.prepare_input(X))
    np.testing.assert_allclose(f[:, 0], -f[:, 1])


def test_class_names_and_feature_names():
    import pandas as pd

    X, y = _data(3)
    df = pd.DataFrame(X, columns=[f"g{i}" for i in range(X.shape[1])])
    named = tree_paths(tree.DecisionTreeClassifier(max_depth=2).fit(df, np.array(["x", "y", "z"])[y]))
    assert named.output_names == ["x", "y", "z"] and named.feature_names == list(df.columns)
    coded = tree_paths(tree.DecisionTreeClassifier(max_depth=2).fit(X, y))
    assert coded.output_names is None and coded.feature_names is None  # codes 0..K-1: unnamed


def test_unsupported_model_lists_supported_types():
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(TypeError, match="supported:") as err:
        tree_paths(LogisticRegression())
    for name in SUPPORTED_MODELS:
        assert name in str(err.value)
    with pytest.raises(TypeError, match="supported"):
        tree_paths(object())


@pytest.mark.parametrize(
    "model",
    [
        tree.DecisionTreeClassifier(),
        ensemble.RandomForestClassifier(),
        ensemble.GradientBoostingRegressor(),
        ensemble.HistGradientBoostingClassifier(),
        xgb.XGBClassifier(),
        lgb.LGBMClassifier(),
    ],
    ids=lambda m: type(m).__name__,
)
def test_unfitted_model(model):
    with pytest.raises(ValueError, match="not fitted"):
        tree_paths(model)


def test_categorical_and_zero_missing_splits_raise():
    import pandas as pd

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=200), "c": pd.Categorical(rng.choice(list("pqrs"), 200))})
    y = (X["a"] > 0).astype(int) ^ (X["c"] == "p").astype(int)
    cat_lgb = lgb.LGBMClassifier(
        n_estimators=3, min_child_samples=5, min_data_per_group=5, cat_smooth=1, verbose=-1, n_jobs=1
    ).fit(X, y)
    with pytest.raises(ValueError, match="categorical"):
        tree_paths(cat_lgb)
    cat_xgb = xgb.XGBClassifier(n_estimators=3, enable_categorical=True, tree_method="hist", n_jobs=1).fit(X, y)
    with pytest.raises(ValueError, match="categorical"):
        tree_paths(cat_xgb)
    Xc = np.column_stack([X["a"].to_numpy(), X["c"].cat.codes.to_numpy()])
    cat_hgb = ensemble.HistGradientBoostingClassifier(max_iter=3, categorical_features=[1]).fit(Xc, y)
    with pytest.raises(ValueError, match="categorical"):
        tree_paths(cat_hgb)
    Xz = rng.normal(size=(200, 2))
    Xz[rng.random(Xz.shape) < 0.3] = 0.0
    zero = lgb.LGBMRegressor(n_estimators=3, zero_as_missing=True, verbose=-1, n_jobs=1).fit(Xz, Xz[:, 0])
    with pytest.raises(ValueError, match="zero"):
        tree_paths(zero)


def test_multi_output_forest_raises():
    X, y = _data(2)
    model = ensemble.RandomForestRegressor(3, max_depth=3).fit(X, np.column_stack([y, y]))
    with pytest.raises(ValueError, match="Multi-output"):
        tree_paths(model)


def test_xgboost_early_stopping_uses_best_iteration():
    X, y = _data(3)
    model = xgb.XGBClassifier(n_estimators=50, max_depth=3, early_stopping_rounds=2, learning_rate=1.0, n_jobs=1)
    model.fit(X[:160], y[:160], eval_set=[(X[160:], y[160:])], verbose=False)
    assert model.best_iteration < 49
    paths = tree_paths(model)
    assert paths.n_trees == (model.best_iteration + 1) * 3
    ours = treeshap_cpu.predict(paths, paths.prepare_input(X))
    np.testing.assert_allclose(ours, _raw(model, X), atol=2e-6)


# ----------------------------------------------------------------------------------------------------------------------
# shap.TreeExplainer as the oracle (model_output="raw"), through the CPU engine

shap = pytest.importorskip("shap")

#: shap has no GradientBoostingClassifier with more than two classes
_NO_SHAP = {"GradientBoostingClassifier-multi"}
#: shap's own tree parser (interventional mode) ignores DART weights and reads a multiclass lightgbm.Booster as
#: one output
_NO_SHAP_INTERVENTIONAL = {"xgboost.Booster-dart", "lightgbm.Booster"}


def _shap_as_ours(values, n_outputs):
    """shap's rows × features [× outputs] → rows × outputs × features."""
    values = np.asarray(values)
    return values[:, None, :] if values.ndim == 2 else values.transpose(0, 2, 1)


def _finite_rows(X, n=25):
    return X[np.isfinite(X).all(axis=1)][:n]


@pytest.mark.parametrize(("name", "model", "X"), MODELS, ids=[m[0] for m in MODELS])
def test_matches_shap_path_dependent(name, model, X):
    paths = tree_paths(model)
    rows = X[:25]  # NaN rows included where the model has them
    outputs = np.tile(np.arange(paths.n_outputs), (len(rows), 1))
    ours = treeshap_cpu.shap_values(paths, paths.prepare_input(rows), outputs)
    # XGBoost computes its (native) SHAP values in float32
    tol = 1e-6 if "XGB" in name or "xgboost" in name else 1e-9
    np.testing.assert_allclose(ours.sum(-1), _raw(model, rows) - paths.expected_value(), atol=max(tol, 1e-12))
    if name in _NO_SHAP:
        return
    explainer = shap.TreeExplainer(model)
    expected = _shap_as_ours(explainer.shap_values(rows, check_additivity=False), paths.n_outputs)
    np.testing.assert_allclose(ours, expected, atol=tol, rtol=0)
    np.testing.assert_allclose(paths.expected_value(), np.ravel(explainer.expected_value), atol=tol)


@pytest.mark.parametrize(("name", "model", "X"), MODELS, ids=[m[0] for m in MODELS])
def test_matches_shap_interventional(name, model, X):
    paths = tree_paths(model)
    finite = _finite_rows(X, 45)
    rows, bg = finite[:25], finite[25:]
    outputs = np.tile(np.arange(paths.n_outputs), (len(rows), 1))
    ours = treeshap_cpu.shap_values(paths, paths.prepare_input(rows), outputs, background=paths.prepare_input(bg))
    # additivity: Σφ = f(x) − mean_b f(b), with f the model's own raw output
    np.testing.assert_allclose(ours.sum(-1), _raw(model, rows) - _raw(model, bg).mean(axis=0), atol=2e-6)
    if name in _NO_SHAP | _NO_SHAP_INTERVENTIONAL:
        return
    explainer = shap.TreeExplainer(model, bg, feature_perturbation="interventional")
    expected = _shap_as_ours(explainer.shap_values(rows, check_additivity=False), paths.n_outputs)
    np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("name", "model", "X"), [m for m in MODELS if m[0] in (
        "RandomForestClassifier+NaN", "XGBClassifier-multi+NaN", "LGBMClassifier-binary", "GradientBoostingRegressor"
    )], ids=lambda v: v if isinstance(v, str) else "",
)
def test_interactions_match_shap(name, model, X):
    paths = tree_paths(model)
    rows = X[:8]
    expected = np.asarray(shap.TreeExplainer(model).shap_interaction_values(rows))
    expected = expected[:, None] if expected.ndim == 3 else expected.transpose(0, 3, 1, 2)
    outputs = np.tile(np.arange(paths.n_outputs), (len(rows), 1))
    ours = treeshap_cpu.interaction_values(paths, paths.prepare_input(rows), outputs)
    tol = 1e-6 if "XGB" in name else 1e-9
    np.testing.assert_allclose(ours, expected, atol=tol, rtol=0)


@pytest.mark.parametrize(
    ("left", "right", "feature", "match"),
    [
        ([1, -1, -1], [5, -1, -1], [0, 0, 0], "outside its 3 nodes"),  # a child index past the table
        ([1, 1, -1], [2, 2, -1], [0, 0, 0], "reached twice"),  # a node that is its own child
        ([1, -1, -1], [2, -1, -1], [7, 0, 0], "feature 7"),  # a feature the model does not have
    ],
)
def test_malformed_trees_are_refused_before_the_engines_see_them(left, right, feature, match):
    from scexplain.models._trees import _Builder, _Tree

    tree = _Tree(left=np.array(left), right=np.array(right), feature=np.array(feature),
                 threshold=np.zeros(3), nan_left=np.zeros(3, dtype=bool), cover=np.ones(3), value=np.ones((3, 1)))
    with pytest.raises(ValueError, match=match):
        _Builder(n_features=2, n_outputs=1).add(tree)
