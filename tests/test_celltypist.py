"""CellTypist models in deep_shap: CellTypist's own scaling, clip at 10 and decision function, explained exactly.

Oracles: celltypist's own ``annotate(...).decision_matrix``, the closed form ``w·(s(x) − mean_b s(b))`` in the
clipped, scaled space (and without the clip where nothing is clipped), shap's LinearExplainer in that space,
brute-force interventional Shapley values through ``celltypist.annotate`` itself, summation to delta.
"""

import itertools
import logging
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch
from anndata import AnnData

import scexplain as sx
from _helpers import assert_adata_equal
from scexplain.engines.deeplift import deeplift_shap
from scexplain.models import CellTypistAdapter, adapt

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # celltypist 1.7.1 reads scanpy.__version__
    celltypist = pytest.importorskip("celltypist")
logging.getLogger("celltypist.logger").setLevel(logging.ERROR)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
LABELS = "bulk_labels"


def _train(adata, labels=LABELS, **kwargs):
    return celltypist.train(adata, labels=labels, use_SGD=True, check_expression=False, random_state=0,
                            date="", **kwargs)


@pytest.fixture(scope="module")
def pbmc():
    """pbmc68k_reduced (``.raw`` is log1p-normalised to 10,000 counts) and a CellTypist model trained on it."""
    adata = sc.datasets.pbmc68k_reduced()
    return adata, _train(adata)


@pytest.fixture
def adata(pbmc):
    return pbmc[0].copy()


def _raw(adata):
    return adata.raw.X.toarray().astype(np.float64)


def _scaled_clipped(model, X, clip=True):
    """CellTypist's preprocessing, written out: (x − mean) / scale, then values above 10 set to 10."""
    mean = model.scaler.mean_ if model.scaler.with_mean else 0
    s = (X - mean) / model.scaler.scale_
    return np.minimum(s, 10) if clip else s


def _weights(model):
    w = model.classifier.coef_
    return np.concatenate([-w, w]) if w.shape[0] == 1 else w


def _decision_matrix(model, adata):
    return celltypist.annotate(adata, model=model).decision_matrix


def _dense(adata):
    """The log-normalised values as a dense AnnData (celltypist 1.7.1 cannot clip a sparse matrix unless centred)."""
    return AnnData(_raw(adata), obs=adata.obs[[LABELS]].copy(), var=pd.DataFrame(index=adata.raw.var_names))


def _forward(adapter, X):
    return adapter.forward(torch.as_tensor(X, dtype=torch.float64)).numpy()


def _explain(adapter, x, bg):
    classes = torch.arange(len(adapter.output_names)).repeat(x.shape[0], 1)
    with adapter.explaining(torch.device("cpu"), torch.float64):
        attr, fx, ref = deeplift_shap(adapter.forward, torch.as_tensor(x), torch.as_tensor(bg), classes)
    return attr.numpy(), fx.numpy(), ref.numpy()


def test_outputs_equal_celltypist_decision_matrix(pbmc):
    adata, model = pbmc
    adapter = adapt(model)
    assert adapter.output_names == [str(c) for c in model.cell_types]
    assert list(adapter.var_names) == list(model.features)
    dm = _decision_matrix(model, adata)
    assert list(dm.columns) == adapter.output_names and list(dm.index) == list(adata.obs_names)
    out = _forward(adapter, _raw(adata))
    np.testing.assert_allclose(out, dm.to_numpy(), rtol=0, atol=1e-10)
    # and the classifier's decision_function on celltypist's scaled and clipped input
    np.testing.assert_allclose(out, model.classifier.decision_function(_scaled_clipped(model, _raw(adata))),
                               rtol=0, atol=1e-10)


def test_deep_shap_end_to_end(adata, pbmc):
    model = pbmc[1]
    bg = np.zeros(adata.n_obs, dtype=bool)
    bg[::7] = True
    sx.tl.deep_shap(adata, model, groupby=LABELS, use_raw=True, background=bg, dtype="float64", progress=False)
    assert adata.uns["deep_shap"]["additivity"]["max_relative_error"] < 1e-6
    dm = _decision_matrix(model, pbmc[0]).to_numpy()
    own = pd.Index(model.cell_types).get_indexer(adata.obs[LABELS].astype(str))
    rows = np.arange(adata.n_obs)
    summary = adata.obsm["deep_shap"]
    np.testing.assert_allclose(summary["output"], dm[rows, own], rtol=0, atol=1e-10)
    np.testing.assert_allclose(summary["expected_value"], dm[bg].mean(0)[own], rtol=0, atol=1e-10)
    S = _scaled_clipped(model, _raw(adata))
    closed = _weights(model)[own] * (S - S[bg].mean(0))
    np.testing.assert_allclose(adata.layers["deep_shap"], closed, rtol=1e-5, atol=1e-5)  # layers are float32
    top = sx.get.ranked_genes_df(adata, "deep_shap", group="CD19+ B")["names"].head(20).tolist()
    assert {"CD79A", "CD79B", "MS4A1"} & set(top)


def test_clip_rescale_rule_and_closed_forms(pbmc):
    import shap

    adata, model = pbmc
    X = _raw(adata)
    x, bg = X[:80], X[300:400]
    attr, fx, ref = _explain(adapt(model), x, bg)
    np.testing.assert_allclose(attr.sum(-1), fx - ref, rtol=0, atol=1e-9)  # summation to delta
    w = _weights(model)
    S_x, S_b = _scaled_clipped(model, x), _scaled_clipped(model, bg)
    clipped = (_scaled_clipped(model, x, clip=False) > 10) | (_scaled_clipped(model, bg, clip=False) > 10).any(0)
    assert clipped.any(), "the test data must exercise the clip"
    # the closed form in the clipped, scaled space holds everywhere
    np.testing.assert_allclose(attr, w[None] * (S_x - S_b.mean(0))[:, None], rtol=0, atol=1e-10)
    # without the clip, the plain scaled closed form holds where nothing (cell or background) was clipped ...
    U_x, U_b = _scaled_clipped(model, x, clip=False), _scaled_clipped(model, bg, clip=False)
    unclipped = w[None] * (U_x - U_b.mean(0))[:, None]
    keep = ~clipped
    np.testing.assert_allclose(attr.transpose(0, 2, 1)[keep], unclipped.transpose(0, 2, 1)[keep], rtol=0, atol=1e-10)
    # ... and not where something was
    assert np.abs(attr.transpose(0, 2, 1)[clipped] - unclipped.transpose(0, 2, 1)[clipped]).max() > 1e-3
    # shap's LinearExplainer (interventional, same background) in the clipped, scaled space
    c = 3
    explainer = shap.LinearExplainer((w[c], model.classifier.intercept_[c]), S_b)
    np.testing.assert_allclose(attr[:, c], explainer.shap_values(S_x), rtol=0, atol=1e-10)


def _small_model():
    """A CellTypist model on 6 genes whose first gene is clipped (one cell expresses it: z ≈ 14 > 10)."""
    rng = np.random.default_rng(1)
    n, genes = 200, [f"G{i}" for i in range(6)]
    X = np.log1p(rng.poisson(rng.uniform(0.5, 4, 6), size=(n, 6)).astype(float))
    X[:, 0] = 0.0
    X[7, 0] = 4.0
    y = np.where(X[:, 1] + X[:, 2] > X[:, 3] + 1, "A", np.where(X[:, 4] > 1, "B", "C"))
    model = celltypist.train(X, labels=y, genes=genes, use_SGD=True, check_expression=False, random_state=0,
                             date="")
    return model, X, genes


def _brute_force_shapley(model, x, bg, genes):
    """Interventional Shapley values averaged over the background, every coalition run through celltypist."""
    G = len(genes)
    masks = np.array(list(itertools.product([0, 1], repeat=G)), dtype=bool)  # 2**G coalitions
    hybrids = np.where(masks[None, None], x[:, None, None], bg[None, :, None])  # n × B × 2**G × G
    query = AnnData(hybrids.reshape(-1, G), var=pd.DataFrame(index=genes))  # float64, like x and bg
    f = _decision_matrix(model, query).to_numpy().reshape(len(x), len(bg), len(masks), -1)
    index = {tuple(m): i for i, m in enumerate(masks)}
    phi = np.zeros((len(x), f.shape[-1], G))
    for g in range(G):
        for m in masks[~masks[:, g]]:
            k = int(m.sum())
            weight = math.factorial(k) * math.factorial(G - k - 1) / math.factorial(G)
            with_g = m.copy()
            with_g[g] = True
            diff = f[:, :, index[tuple(with_g)]] - f[:, :, index[tuple(m)]]  # n × B × outputs
            phi[:, :, g] += weight * diff.mean(1)
    return phi


def test_brute_force_shapley_through_celltypist_with_clip():
    model, X, genes = _small_model()
    x, bg = X[[7, 0, 1]], X[[2, 3, 4, 5]]  # cell 7 is clipped on G0
    assert (_scaled_clipped(model, x, clip=False) > 10).any()
    attr, fx, ref = _explain(adapt(model), x, bg)
    phi = _brute_force_shapley(model, x, bg, genes)
    np.testing.assert_allclose(attr, phi, rtol=0, atol=1e-9)
    np.testing.assert_allclose(attr.sum(-1), fx - ref, rtol=0, atol=1e-10)


def test_binary_model_gets_two_outputs(pbmc):
    adata = pbmc[0].copy()
    adata.obs["is_b"] = pd.Categorical(np.where(adata.obs[LABELS] == "CD19+ B", "B", "not B"))
    model = _train(adata, labels="is_b")
    assert model.classifier.coef_.shape[0] == 1
    dm = _decision_matrix(model, adata)
    np.testing.assert_allclose(_forward(adapt(model), _raw(adata)), dm.to_numpy(), rtol=0, atol=1e-10)
    sx.tl.deep_shap(adata, model, groupby="is_b", use_raw=True, n_background=50, dtype="float64", progress=False)
    assert adata.uns["deep_shap"]["additivity"]["max_relative_error"] < 1e-6
    own = pd.Index(model.cell_types).get_indexer(adata.obs["is_b"].astype(str))
    np.testing.assert_allclose(adata.obsm["deep_shap"]["output"], dm.to_numpy()[np.arange(adata.n_obs), own],
                               rtol=0, atol=1e-10)


def test_model_without_centring(pbmc):
    adata = pbmc[0]
    model = _train(adata, with_mean=False)
    assert not model.scaler.with_mean
    dm = _decision_matrix(model, _dense(adata)).to_numpy()
    np.testing.assert_allclose(_forward(adapt(model), _raw(adata)), dm, rtol=0, atol=1e-10)


def test_model_built_from_scaler_and_logistic_regression(pbmc):
    from celltypist.models import Model
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    adata = pbmc[0]
    X = _raw(adata)
    scaler = StandardScaler().fit(X)
    clf = LogisticRegression(max_iter=200).fit(np.minimum(scaler.transform(X), 10), adata.obs[LABELS])
    clf.features = adata.raw.var_names.to_numpy()
    model = Model(clf, scaler, {"date": "", "details": "", "source": "", "version": ""})
    np.testing.assert_allclose(_forward(adapt(model), X), _decision_matrix(model, adata).to_numpy(),
                               rtol=0, atol=1e-10)


def test_lognorm_layer_and_genes_in_another_order(pbmc):
    counts = sx.datasets.pbmc68k_counts()  # the same cells, log1p-normalised in layers["lognorm"]
    model = pbmc[1]
    order = np.random.default_rng(0).permutation(counts.n_vars)
    shuffled = counts[:, order].copy()
    out = sx.tl.deep_shap(shuffled, model, groupby=LABELS, layer="lognorm", n_background=30, copy=True,
                          progress=False)
    ref = sx.tl.deep_shap(counts, model, groupby=LABELS, layer="lognorm", n_background=30, copy=True,
                          progress=False)
    got = pd.DataFrame(out.layers["deep_shap"], columns=shuffled.var_names)[counts.var_names].to_numpy()
    np.testing.assert_allclose(got, ref.layers["deep_shap"], rtol=1e-5, atol=1e-6)


def test_missing_genes_error_and_restricted_model(pbmc, snapshot):
    adata, model = pbmc
    sub = AnnData(adata.raw.X[:, 10:].copy(), obs=adata.obs.copy(), var=pd.DataFrame(index=adata.raw.var_names[10:]))
    before = snapshot(sub)
    with pytest.raises(ValueError, match=r"10 of the model's 765 genes are missing from adata\.X \(e\.g\. "
                                         r"\['HES4'.*CellTypistAdapter\(model, genes="):
        sx.tl.deep_shap(sub, model, groupby=LABELS, progress=False)
    assert_adata_equal(sub, before)
    # restricted to the genes present, the model is exactly what celltypist.annotate runs on this query
    restricted = CellTypistAdapter(model, genes=sub.var_names)
    assert restricted.n_inputs == 755
    np.testing.assert_allclose(_forward(restricted, sub.X.toarray()), _decision_matrix(model, sub).to_numpy(),
                               rtol=0, atol=1e-10)
    sx.tl.deep_shap(sub, restricted, groupby=LABELS, n_background=40, dtype="float64", progress=False)
    assert sub.uns["deep_shap"]["additivity"]["max_relative_error"] < 1e-6
    with pytest.raises(ValueError, match="None of the CellTypist model's 765 genes"):
        CellTypistAdapter(model, genes=["not_a_gene"])


def test_scaled_input_is_an_error(adata, pbmc, snapshot):
    before = snapshot(adata)
    with pytest.raises(ValueError, match=r"adata\.X holds values in \[-.*log1p-normalised.*use_raw=True"):
        sx.tl.deep_shap(adata, pbmc[1], groupby=LABELS, progress=False)
    assert_adata_equal(adata, before)
    counts = sx.datasets.pbmc68k_counts()
    before = snapshot(counts)
    with pytest.raises(ValueError, match=r"layers\['counts'\] holds values in \[0, .*normalize_total"):
        sx.tl.deep_shap(counts, pbmc[1], groupby=LABELS, layer="counts", progress=False)
    assert_adata_equal(counts, before)


def test_bad_models_and_options(adata, pbmc, snapshot):
    from celltypist.models import Model

    model = pbmc[1]
    before = snapshot(adata)
    with pytest.raises(ValueError, match="CellTypist model is explained through its outputs"):
        sx.tl.deep_shap(adata, model, groupby=LABELS, use_raw=True, explain="classifier", progress=False)
    with pytest.raises(ValueError, match="outputs are its classes"):
        sx.tl.deep_shap(adata, model, groupby=LABELS, use_raw=True, output_names=list("abcdefghij"), progress=False)
    from sklearn.linear_model import SGDClassifier

    with pytest.raises(ValueError, match="not fitted"):
        sx.tl.deep_shap(adata, Model(SGDClassifier(), model.scaler, {}), groupby=LABELS, use_raw=True,
                        progress=False)
    from sklearn.base import clone

    clf = clone(model.classifier).fit(_scaled_clipped(model, _raw(adata)), adata.obs[LABELS])  # no `features`
    with pytest.raises(ValueError, match="no `features`"):
        sx.tl.deep_shap(adata, Model(clf, model.scaler, {}), groupby=LABELS, use_raw=True, progress=False)
    assert_adata_equal(adata, before)


def test_smoothgrad_on_a_celltypist_model(adata, pbmc):
    model = pbmc[1]
    sx.tl.smoothgrad(adata, model, groupby=LABELS, use_raw=True, stdev=1e-7, n_samples=2, dtype="float64",
                     progress=False)
    X = _raw(adata)
    own = pd.Index(model.cell_types).get_indexer(adata.obs[LABELS].astype(str))
    inside = _scaled_clipped(model, X, clip=False) < 10  # the clip's derivative is 0 above 10
    expected = (_weights(model) / model.scaler.scale_)[own] * inside
    np.testing.assert_allclose(adata.layers["smoothgrad"], expected, rtol=1e-5, atol=1e-6)
