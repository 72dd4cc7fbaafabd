"""scikit-learn classifiers on genes (linear, MLPClassifier, StandardScaler pipelines) in deep_shap and gradients.

Oracles: the estimators' own ``decision_function``/``predict_proba``, the closed form ``w·(s(x) − mean_b s(b))`` of a
linear model in its scaled space, shap's LinearExplainer, the same MLP written in torch by hand, summation to delta.
"""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, RidgeClassifier, SGDClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

import scexplain as sx
from _helpers import assert_adata_equal
from scexplain.engines.deeplift import deeplift_shap
from scexplain.models import adapt

LAYER = "lognorm"


@pytest.fixture(scope="module")
def data():
    adata = sx.datasets.toy(n_cells=240, n_genes=40, n_groups=4, n_markers=4, seed=0)
    X = np.asarray(adata.layers[LAYER], dtype=np.float64)
    y = adata.obs["cell_type"].astype(str).to_numpy()
    return adata, X, y


@pytest.fixture
def adata(data):
    return data[0].copy()


def _binary(y):
    return np.where(y == y[0], y[0], "other")


def _mlp(activation, hidden=(12, 7)):
    return MLPClassifier(hidden_layer_sizes=hidden, activation=activation, max_iter=80, random_state=0)


LINEAR = {
    "logreg": lambda: LogisticRegression(max_iter=500),
    "sgd": lambda: SGDClassifier(loss="log_loss", random_state=0),
    "sgd_hinge": lambda: SGDClassifier(random_state=0),
    "linear_svc": lambda: LinearSVC(),
    "ridge": lambda: RidgeClassifier(),
    "scaled_logreg": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
    "scaled_no_mean": lambda: make_pipeline(StandardScaler(with_mean=False), SGDClassifier(random_state=0)),
    "scaled_no_std": lambda: make_pipeline(StandardScaler(with_std=False), LogisticRegression(max_iter=500)),
    "two_scalers": lambda: Pipeline([("a", StandardScaler()), ("skip", "passthrough"),
                                     ("b", StandardScaler(with_mean=False)), ("clf", LogisticRegression())]),
}
MLPS = {
    "mlp_relu": lambda: _mlp("relu"),
    "mlp_tanh": lambda: _mlp("tanh"),
    "mlp_logistic": lambda: _mlp("logistic", (9,)),
    "mlp_identity": lambda: _mlp("identity", (6,)),
    "scaled_mlp": lambda: make_pipeline(StandardScaler(), _mlp("relu")),
}
# fitting warnings (convergence) are not what these tests are about
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


_FITTED: dict = {}


def _fitted(table, name, binary, X, y):
    """Each estimator fitted once per module (the fixtures' data are the same for every test)."""
    key = (name, binary)
    if key not in _FITTED:
        _FITTED[key] = table[name]().fit(X, _binary(y) if binary else y)
    return _FITTED[key]


def _decision(model, X):
    """The model's own decision values, two columns ``[-d, d]`` for a binary classifier."""
    d = model.decision_function(X)
    return np.column_stack([-d, d]) if d.ndim == 1 else d


def _mlp_logits(mlp, X):
    """Logits of an MLPClassifier written out with numpy (no torch)."""
    act = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "logistic": lambda z: 1 / (1 + np.exp(-z)),
           "identity": lambda z: z}[mlp.activation]
    h = X
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_, strict=True)):
        h = h @ w + b
        if i < len(mlp.coefs_) - 1:
            h = act(h)
    return h


def _forward(adapter, X):
    return adapter.forward(torch.as_tensor(X, dtype=torch.float64)).numpy()


def _scaled(model, X):
    """The model's input after its StandardScaler steps (the space where a linear model is linear)."""
    return model[:-1].transform(X) if isinstance(model, Pipeline) else X


def _final(model):
    return model[-1] if isinstance(model, Pipeline) else model


@pytest.mark.parametrize("binary", [False, True], ids=["multiclass", "binary"])
@pytest.mark.parametrize("name", list(LINEAR))
def test_linear_outputs_equal_decision_function(data, name, binary):
    _, X, y = data
    model = _fitted(LINEAR, name, binary, X, y)
    adapter = adapt(model)
    np.testing.assert_allclose(_forward(adapter, X), _decision(model, X), rtol=0, atol=1e-10)
    assert adapter.output_names == [str(c) for c in _final(model).classes_]


@pytest.mark.parametrize("binary", [False, True], ids=["multiclass", "binary"])
@pytest.mark.parametrize("name", list(MLPS))
def test_mlp_logits_equal_predict_proba_and_manual(data, name, binary):
    _, X, y = data
    model = _fitted(MLPS, name, binary, X, y)
    logits = _forward(adapt(model), X)
    mlp = _final(model)
    manual = _mlp_logits(mlp, _scaled(model, X))
    proba = model.predict_proba(X)
    if binary:  # one logit d for classes_[1]; the adapter gives [-d, d]
        np.testing.assert_allclose(logits, np.column_stack([-manual[:, 0], manual[:, 0]]), rtol=0, atol=1e-10)
        np.testing.assert_allclose(1 / (1 + np.exp(-logits[:, 1])), proba[:, 1], rtol=0, atol=1e-10)
    else:
        np.testing.assert_allclose(logits, manual, rtol=0, atol=1e-10)
        softmax = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(softmax / softmax.sum(1, keepdims=True), proba, rtol=0, atol=1e-10)


def test_multilabel_mlp_keeps_one_logit_per_label(data):
    _, X, y = data
    Y = np.column_stack([y == y[0], X[:, 0] > np.median(X[:, 0])]).astype(int)
    mlp = _mlp("tanh", (5,)).fit(X, Y)
    logits = _forward(adapt(mlp), X)
    np.testing.assert_allclose(logits, _mlp_logits(mlp, X), rtol=0, atol=1e-10)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), mlp.predict_proba(X), rtol=0, atol=1e-10)


def _explain(adapter, x, bg):
    classes = torch.arange(len(adapter.output_names or [])).repeat(x.shape[0], 1)
    with adapter.explaining(torch.device("cpu"), torch.float64):
        attr, fx, ref = deeplift_shap(adapter.forward, torch.as_tensor(x), torch.as_tensor(bg), classes)
    return attr.numpy(), fx.numpy(), ref.numpy()


@pytest.mark.parametrize("binary", [False, True], ids=["multiclass", "binary"])
@pytest.mark.parametrize("name", ["logreg", "sgd", "scaled_logreg", "scaled_no_mean", "scaled_no_std",
                                  "two_scalers"])
def test_linear_attributions_equal_closed_form_and_shap(data, name, binary):
    import shap

    _, X, y = data
    model = _fitted(LINEAR, name, binary, X, y)
    adapter = adapt(model)
    x, bg = X[:30], X[100:160]
    attr, fx, ref = _explain(adapter, x, bg)  # cells × outputs × genes
    s_x, s_b = _scaled(model, x), _scaled(model, bg)
    w = np.atleast_2d(_final(model).coef_)
    if binary:
        w = np.concatenate([-w, w])
    closed = w[None, :, :] * (s_x - s_b.mean(0))[:, None, :]
    np.testing.assert_allclose(attr, closed, rtol=0, atol=1e-10)
    # summation to delta per cell, and the reference is the background's mean decision value
    np.testing.assert_allclose(attr.sum(-1), fx - ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ref, np.broadcast_to(_decision(model, bg).mean(0), ref.shape), rtol=0, atol=1e-10)
    # shap's LinearExplainer (interventional, the same background) in the scaled space
    b = np.atleast_1d(_final(model).intercept_)
    explainer = shap.LinearExplainer((w[-1], b[-1] if not binary else b[0]), s_b)
    np.testing.assert_allclose(attr[:, -1], explainer.shap_values(s_x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(MLPS))
def test_mlp_additivity(data, name):
    _, X, y = data
    model = _fitted(MLPS, name, False, X, y)
    attr, fx, ref = _explain(adapt(model), X[:40], X[150:190])
    delta = fx - ref
    rel = np.linalg.norm(attr.sum(-1) - delta, axis=1) / np.linalg.norm(delta, axis=1)
    assert rel.max() < 1e-6
    np.testing.assert_allclose(fx, _forward(adapt(model), X[:40]), rtol=0, atol=1e-10)


def _hand_written(mlp):
    """The same MLP written in torch by hand (weights copied from coefs_/intercepts_)."""
    act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "logistic": torch.nn.Sigmoid,
           "identity": torch.nn.Identity}[mlp.activation]
    layers = []
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_, strict=True)):
        lin = torch.nn.Linear(*w.shape).double()
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(w.T))
            lin.bias.copy_(torch.as_tensor(b))
        layers.append(lin)
        if i < len(mlp.coefs_) - 1:
            layers.append(act())
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
def test_mlp_equals_the_same_network_in_torch(adata, data, activation):
    _, X, y = data
    mlp = _fitted(MLPS, f"mlp_{activation}", False, X, y)
    bg = np.zeros(adata.n_obs, dtype=bool)
    bg[::4] = True
    common = dict(groupby="cell_type", layer=LAYER, background=bg, dtype="float64", progress=False)
    sx.tl.deep_shap(adata, mlp, key_added="sk", **common)
    sx.tl.deep_shap(adata, _hand_written(mlp), key_added="torch", **common)
    np.testing.assert_allclose(adata.layers["sk"], adata.layers["torch"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(adata.obsm["sk"]["output"], adata.obsm["torch"]["output"], rtol=0, atol=1e-10)
    assert adata.uns["sk"]["additivity"]["max_relative_error"] < 1e-6


@pytest.mark.parametrize("binary", [False, True], ids=["multiclass", "binary"])
def test_deep_shap_end_to_end_on_a_pipeline(adata, data, binary):
    _, X, y = data
    if binary:
        y = _binary(y)
        adata.obs["label"] = pd.Categorical(y)
    groupby = "label" if binary else "cell_type"
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    bg = np.zeros(adata.n_obs, dtype=bool)
    bg[1::5] = True
    sx.tl.deep_shap(adata, model, groupby=groupby, layer=LAYER, background=bg, dtype="float64", progress=False)
    classes = [str(c) for c in model.classes_]
    own = pd.Index(classes).get_indexer(adata.obs[groupby].astype(str))
    w = np.atleast_2d(model[-1].coef_)
    if binary:  # each cell toward its own class: class 0 gets the negated decision value
        w = np.concatenate([-w, w])
    S = model[0].transform(X)
    closed = w[own] * (S - S[bg].mean(0))
    np.testing.assert_allclose(adata.layers["deep_shap"], closed, rtol=1e-5, atol=1e-6)  # layers are float32
    assert adata.uns["deep_shap"]["additivity"]["max_relative_error"] < 1e-6
    np.testing.assert_allclose(adata.obsm["deep_shap"]["output"], _decision(model, X)[np.arange(len(own)), own],
                               rtol=0, atol=1e-10)
    tidy = sx.get.ranked_genes_df(adata, "deep_shap", group=classes[-1])
    assert len(tidy) == adata.n_vars


def test_genes_matched_by_name(adata, data):
    _, X, y = data
    df = pd.DataFrame(X, columns=adata.var_names)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(df, y)
    bg = np.arange(0, adata.n_obs, 6)
    common = dict(groupby="cell_type", layer=LAYER, background=bg, dtype="float64", progress=False)
    sx.tl.deep_shap(adata, model, **common)
    expected = adata.layers["deep_shap"].copy()
    # the same cells with genes shuffled and extra genes: attributions land on the right genes, extras get 0
    rng = np.random.default_rng(0)
    order = rng.permutation(adata.n_vars)
    shuffled = np.asarray(adata.layers[LAYER])[:, order]
    names = [*adata.var_names[order], *(f"extra{i}" for i in range(5))]
    values = np.concatenate([shuffled, rng.random((adata.n_obs, 5))], axis=1)
    merged = ad.AnnData(X=np.zeros_like(values), obs=adata.obs.copy(), var=pd.DataFrame(index=names),
                        layers={LAYER: values})
    sx.tl.deep_shap(merged, model, **common)
    got = pd.DataFrame(merged.layers["deep_shap"], columns=merged.var_names)
    np.testing.assert_allclose(got[adata.var_names].to_numpy(), expected, rtol=1e-6, atol=1e-7)
    assert (got[[f"extra{i}" for i in range(5)]].to_numpy() == 0).all()


def test_missing_genes_are_an_error(adata, data, snapshot):
    _, X, y = data
    model = LogisticRegression(max_iter=500).fit(pd.DataFrame(X, columns=adata.var_names), y)
    sub = adata[:, 3:].copy()
    before = snapshot(sub)
    with pytest.raises(ValueError, match=r"3 of the model's 40 genes are missing from layers\['lognorm'\]"):
        sx.tl.deep_shap(sub, model, groupby="cell_type", layer=LAYER, progress=False)
    assert_adata_equal(sub, before)
    # without gene names: positional, the width must match
    model = LogisticRegression(max_iter=500).fit(X, y)
    with pytest.raises(ValueError, match="takes 40 genes"):
        sx.tl.deep_shap(sub, model, groupby="cell_type", layer=LAYER, progress=False)
    assert_adata_equal(sub, before)


def test_gradient_methods_share_the_adapter(adata, data):
    _, X, y = data
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    own = pd.Index(model.classes_).get_indexer(adata.obs["cell_type"].astype(str))
    grad = (model[-1].coef_ / model[0].scale_)[own]  # d decision / d x of each cell's own class
    sx.tl.integrated_gradients(adata, model, groupby="cell_type", layer=LAYER, dtype="float64", progress=False)
    # a linear model: IG from the zero baseline is grad · x exactly (any number of steps)
    np.testing.assert_allclose(adata.layers["integrated_gradients"], grad * X, rtol=1e-5, atol=1e-6)
    sx.tl.smoothgrad(adata, model, groupby="cell_type", layer=LAYER, dtype="float64", n_samples=3, progress=False)
    np.testing.assert_allclose(adata.layers["smoothgrad"], grad, rtol=1e-5, atol=1e-6)
    sx.tl.vargrad(adata, model, groupby="cell_type", layer=LAYER, dtype="float64", n_samples=3, progress=False)
    assert np.abs(adata.layers["vargrad"]).max() < 1e-8  # the gradient of a linear model does not vary


def test_explaining_in_float32_keeps_the_float64_weights(adata, data):
    _, X, y = data
    model = LogisticRegression(max_iter=500).fit(X, y)
    adapter = adapt(model)
    sx.tl.deep_shap(adata, adapter, groupby="cell_type", layer=LAYER, dtype="float32", progress=False)
    assert adapter.module[0].weight.dtype == torch.float64
    np.testing.assert_allclose(_forward(adapter, X), model.decision_function(X), rtol=0, atol=1e-10)


def test_integer_classes_take_names_from_groupby_or_output_names(adata, data):
    _, X, y = data
    codes = pd.Categorical(y).codes
    model = LogisticRegression(max_iter=500).fit(X, codes)
    assert adapt(model).output_names is None  # classes 0 … K-1: named by the driver (groupby categories)
    sx.tl.deep_shap(adata, model, groupby="cell_type", layer=LAYER, n_background=20, dtype="float64",
                    progress=False)
    # each cell explained toward its own category, i.e. the class with that category's code
    own = adata.obs["cell_type"].cat.codes.to_numpy()
    np.testing.assert_allclose(adata.obsm["deep_shap"]["output"], model.decision_function(X)[np.arange(len(own)), own],
                               rtol=0, atol=1e-10)
    assert adapt(model, output_names=list("abcd")).output_names == list("abcd")
    named = LogisticRegression(max_iter=500).fit(X, y)
    with pytest.raises(ValueError, match="outputs are its classes"):
        adapt(named, output_names=list("abcd"))


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda X, y: SVC().fit(X, y), TypeError, "supported scikit-learn models: linear classifiers"),
        (lambda X, y: RandomForestClassifier(n_estimators=3).fit(X, y), TypeError, "tree_shap_gpu"),
        (lambda X, y: KNeighborsClassifier().fit(X, y), TypeError, "MLPClassifier"),
        (lambda X, y: LogisticRegression(), ValueError, "LogisticRegression is not fitted"),
        (lambda X, y: _mlp("relu"), ValueError, "MLPClassifier is not fitted"),
        (lambda X, y: make_pipeline(PCA(3), LogisticRegression()).fit(X, y), TypeError,
         "only StandardScaler steps may precede"),
        (lambda X, y: Pipeline([("s", StandardScaler()), ("c", clone(LogisticRegression().fit(X, y)))]),
         ValueError, "not fitted"),
        (lambda X, y: make_pipeline(StandardScaler(), SVC()).fit(X, y), TypeError, "supported scikit-learn"),
    ],
    ids=["svc", "forest", "knn", "unfitted", "unfitted_mlp", "pca_pipeline", "unfitted_pipeline", "svc_pipeline"],
)
def test_unsupported_estimators(adata, data, snapshot, make, error, match):
    _, X, y = data
    model = make(X, y)
    before = snapshot(adata)
    with pytest.raises(error, match=match):
        sx.tl.deep_shap(adata, model, groupby="cell_type", layer=LAYER, progress=False)
    assert_adata_equal(adata, before)


def test_unsupported_types_listed_and_explain_rejected(adata, data, snapshot):
    _, X, y = data
    before = snapshot(adata)
    with pytest.raises(TypeError, match=r"supported: torch\.nn\.Module.*celltypist\.models\.Model.*MLPClassifier"):
        sx.tl.deep_shap(adata, object(), groupby="cell_type", layer=LAYER, progress=False)
    xgboost = pytest.importorskip("xgboost")
    booster = xgboost.XGBClassifier(n_estimators=2, max_depth=2).fit(X, pd.Categorical(y).codes)
    with pytest.raises(TypeError, match="tree_shap_gpu"):
        sx.tl.deep_shap(adata, booster, groupby="cell_type", layer=LAYER, progress=False)
    model = LogisticRegression(max_iter=500).fit(X, y)
    with pytest.raises(ValueError, match="scikit-learn model is explained through its outputs"):
        sx.tl.deep_shap(adata, model, groupby="cell_type", layer=LAYER, explain="latent", progress=False)
    assert_adata_equal(adata, before)
