"""engines.deeplift: the closed form of models linear after elementwise maps of the genes (CellTypist, sklearn).

The closed form (:mod:`scexplain.engines._deeplift_linear`) is checked against the engine's general paths (the
per-background-cell GEMMs on the distinct rows, ``_LINEAR = False``; the generic path on the pairs), against the
per-pair oracle of the split and background sums, and against ``w · (h(x) − mean_b h(b))`` written in numpy.
"""

import numpy as np
import pytest
import torch
from torch import nn

import scexplain.engines.deeplift as engine
from engines.test_deeplift import F64, G, _counts_like, _data
from engines.test_deeplift_sums import CLASSES, GROUPS, OWN, _check, _signed, oracle
from scexplain.engines.deeplift import BackgroundCache, deeplift_shap
from scexplain.models._network import DenseNetwork

CLIP = 1.2  # low enough that the clip is active on this data


def _celltypist_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(3, G)), rng.normal(size=3), rng.uniform(0.2, 1.5, G), rng.uniform(0.3, 0.9, G)


def _celltypist_net():
    """CellTypist's computation as the adapters build it: ``min((x − mean) / sd, clip)``, then ``W · + b``."""
    w, b, mean, sd = _celltypist_arrays()
    return DenseNetwork(weights=(w,), biases=(b,), scalings=((mean, sd),), clip=CLIP)


def _logreg_pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, _ = _data(n=60, n_bg=1, seed=3, low=0.0, high=3.0)
    y = np.arange(60) % 3
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x.numpy(), y)


def _linear_models(dtype):
    """Forward functions linear after elementwise maps (all with 3 outputs)."""
    from scexplain.models import adapt

    torch.manual_seed(0)
    celltypist = _celltypist_net().module(dtype=dtype)
    logreg = adapt(_logreg_pipeline()).network.module(dtype=dtype)
    two = nn.Sequential(nn.Linear(G, 8), nn.BatchNorm1d(8), nn.Dropout(), nn.Linear(8, 3)).to(dtype).eval()
    with torch.no_grad():
        two[1].running_mean.uniform_(-1, 1)
        two[1].running_var.uniform_(0.5, 2)
    lin = nn.Linear(2 * G, 3).to(dtype)
    return {
        "celltypist": lambda x, c: celltypist(x),
        "logreg": lambda x, c: logreg(x),
        "linear-bn-linear": lambda x, c: two(x),
        "relu-before-linear": lambda x, c: two(torch.relu(x - 1.0)),  # a nonlinearity before the layer is fine
        "two-maps": lambda x, c: lin(torch.cat([torch.log1p(x.abs()), x * 0.5], 1)) * 2.0,
    }


def _explain(forward, x, bg, *, closed: bool, monkeypatch, **kw):
    monkeypatch.setattr(engine, "_LINEAR", closed)
    return deeplift_shap(forward, x, bg, CLASSES, split=True, groups=GROUPS, n_groups=3, own=OWN, **kw)


def _fields(out):
    return out.attributions, out.output, out.reference, out.presence, out.background_sums


@pytest.fixture
def calls(monkeypatch):
    """How many chunks took the closed form."""
    count = []
    original = engine.linear_sums

    def spy(*args, **kwargs):
        count.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "linear_sums", spy)
    return count


@pytest.mark.parametrize("data", ["counts", "signed"])
@pytest.mark.parametrize("name", list(_linear_models(F64)))
def test_closed_form_equals_the_general_paths_and_the_pair_oracle(name, data, calls, monkeypatch):
    forward = _linear_models(F64)[name]
    x, bg = _counts_like() if data == "counts" else _signed()
    fast = _explain(forward, x, bg, closed=True, monkeypatch=monkeypatch)
    assert calls  # the closed form was taken
    n_calls = len(calls)
    general = _explain(forward, x, bg, closed=False, monkeypatch=monkeypatch)
    generic = _explain(forward, x, bg, closed=True, monkeypatch=monkeypatch, shortcut=False)
    assert len(calls) == n_calls  # neither of those took it
    for ref in (general, generic):
        for a, b in zip(_fields(fast), _fields(ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    _check(fast, oracle(forward, x, bg))
    np.testing.assert_allclose(fast.output, forward(x, None).gather(1, CLASSES).detach(), rtol=1e-12)


@pytest.mark.parametrize("name", list(_linear_models(F64)))
def test_float32_closed_form_follows_the_general_path(name, calls, monkeypatch):
    forward = _linear_models(torch.float32)[name]
    x, bg = (t.float() for t in _counts_like(n=6, n_bg=40))
    fast = _explain(forward, x, bg, closed=True, monkeypatch=monkeypatch)
    assert calls
    general = _explain(forward, x, bg, closed=False, monkeypatch=monkeypatch)
    for a, b in zip(_fields(fast), _fields(general), strict=True):
        assert a.dtype == torch.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6 * float(b.abs().max()))


def test_closed_form_equals_numpy():
    """CellTypist: ``φ = w · (clip(s(x)) − mean_b clip(s(b)))``; presence over ``b_g < x_g`` only."""
    w, b, mean, sd = _celltypist_arrays()
    x, bg = _signed()
    forward = _celltypist_net().module()
    classes = torch.tensor([[0, 1, 2]] * x.shape[0])
    out = deeplift_shap(lambda x, c: forward(x), x, bg, classes, split=True)
    xs, bs = x.numpy(), bg.numpy()

    def h(v):
        return np.minimum((v - mean) / sd, CLIP)

    assert (h(xs) == CLIP).any() and (h(bs) == CLIP).any()  # the clip matters
    np.testing.assert_allclose(out.attributions, w[None] * (h(xs) - h(bs).mean(0))[:, None, :], rtol=1e-12,
                               atol=1e-13)
    above = xs[:, None, :] > bs[None, :, :]  # n × B × G
    part = ((h(xs)[:, None, :] - h(bs)[None]) * above).mean(1)
    np.testing.assert_allclose(out.presence, w[None] * part[:, None, :], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(out.output, h(xs) @ w.T + b, rtol=1e-12)
    np.testing.assert_allclose(out.reference, np.broadcast_to((h(bs) @ w.T + b).mean(0), (x.shape[0], 3)),
                               rtol=1e-12)


def test_a_nonlinearity_after_the_first_layer_is_not_linear(calls, monkeypatch):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(G, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x, bg = _counts_like()
    cache = BackgroundCache()
    out = _explain(lambda x, c: net(x), x, bg, closed=True, monkeypatch=monkeypatch, cache=cache)
    assert cache.distinct is True and not calls  # distinct rows, but the general sums
    _check(out, oracle(lambda x, c: net(x), x, bg))
    _explain(lambda x, c: torch.sigmoid(net(x)), x, bg, closed=True, monkeypatch=monkeypatch)
    assert not calls


def test_a_linear_model_with_covariates(monkeypatch):
    """Covariates joined before the layer are held at the cell's values: they enter f(x) and f(b), not φ."""
    torch.manual_seed(2)
    lin = nn.Linear(G + 1, 3).double()
    cov = torch.tensor([[0.0], [1.0], [2.0], [1.0], [0.0], [2.0]], dtype=F64)

    def forward(x, c):
        return lin(torch.cat([torch.log1p(x), c], 1))

    x, bg = _counts_like()
    fast = _explain(forward, x, bg, closed=True, monkeypatch=monkeypatch, cov=cov)
    generic = _explain(forward, x, bg, closed=True, monkeypatch=monkeypatch, cov=cov, shortcut=False)
    for a, b in zip(_fields(fast), _fields(generic), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fast.output, forward(x, cov).gather(1, CLASSES).detach(), rtol=1e-12)


@pytest.mark.parametrize("budget", [1, 5, 13])
def test_chunks_of_cells_and_background_cells(budget, monkeypatch):
    forward = _linear_models(F64)["celltypist"]
    x, bg = _signed()
    ref = _explain(forward, x, bg, closed=True, monkeypatch=monkeypatch)
    out = _explain(forward, x, bg, closed=True, monkeypatch=monkeypatch, pair_budget=budget)
    for a, b in zip(_fields(out), _fields(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_shared_outputs_of_all_cells():
    """Every cell explaining the same outputs (one row of multipliers for all cells)."""
    forward = _linear_models(F64)["logreg"]
    x, bg = _counts_like()
    classes = torch.tensor([[2, 0]] * x.shape[0])
    kw = {"split": True, "groups": GROUPS, "n_groups": 3, "own": OWN}
    fast = deeplift_shap(forward, x, bg, classes, **kw)
    generic = deeplift_shap(forward, x, bg, classes, shortcut=False, **kw)
    for a, b in zip(_fields(fast), _fields(generic), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)

