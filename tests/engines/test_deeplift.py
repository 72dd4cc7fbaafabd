"""engines.deeplift: summation to delta for every rule, linear models, shap and captum as oracles, the shortcut."""

import logging
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scexplain.engines.deeplift import DeepLiftWarning, deeplift_shap

G, H = 10, 12
F64 = torch.float64


def _data(n=5, n_bg=7, seed=0, low=0.1, high=2.0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand((n, G), generator=gen, dtype=dtype)
    bg = low + (high - low) * torch.rand((n_bg, G), generator=gen, dtype=dtype)
    return x, bg


def _classes(n, cols=(0, 2)):
    return torch.tensor([list(cols)] * n)


def _rel_additivity(phi, fx, fb):
    delta = fx - fb
    return ((phi.sum(-1) - delta).norm() / delta.norm()).item()


def _explain(net, x, bg, classes, **kw):
    """deeplift_shap of a module, any DeepLiftWarning turned into an error (every op must have its rule)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeepLiftWarning)
        return deeplift_shap(lambda x, cov: net(x), x, bg, classes, **kw)


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, h):
        return self.fn(h)


def _sandwich(op: nn.Module, positive=False, n_out=3, seed=0):
    """Linear → op → Linear; with ``positive``, the op sees positive inputs (log, sqrt, ... of positive x)."""
    torch.manual_seed(seed)
    first = nn.Linear(G, H)
    if positive:
        with torch.no_grad():
            first.weight.abs_().mul_(0.3)
            first.bias.fill_(0.1)
    return nn.Sequential(first, op, nn.Linear(H, n_out)).double().eval()


# --- every rule, as a module and as a functional call -------------------------------------------------------------
MODULES = {
    "relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.1), "elu": nn.ELU(), "selu": nn.SELU(), "celu": nn.CELU(0.7),
    "gelu": nn.GELU(), "gelu_tanh": nn.GELU("tanh"), "silu": nn.SiLU(), "mish": nn.Mish(), "sigmoid": nn.Sigmoid(),
    "tanh": nn.Tanh(), "softplus": nn.Softplus(beta=2.0), "hardtanh": nn.Hardtanh(-0.5, 0.5), "relu6": nn.ReLU6(),
    "hardsigmoid": nn.Hardsigmoid(), "hardswish": nn.Hardswish(), "logsigmoid": nn.LogSigmoid(),
    "softsign": nn.Softsign(), "tanhshrink": nn.Tanhshrink(), "softshrink": nn.Softshrink(0.2),
    "hardshrink": nn.Hardshrink(0.2), "threshold": nn.Threshold(0.1, -1.0), "prelu": nn.PReLU(H, 0.2),
    "relu_inplace": nn.ReLU(inplace=True), "leaky_relu_inplace": nn.LeakyReLU(0.2, inplace=True),
    "elu_inplace": nn.ELU(inplace=True),
    "layer_norm": nn.LayerNorm(H), "layer_norm_no_affine": nn.LayerNorm(H, elementwise_affine=False),
    "rms_norm": nn.RMSNorm(H), "layer_norm_2d": nn.Sequential(nn.Unflatten(1, (3, 4)), nn.LayerNorm((3, 4)),
                                                              nn.Flatten()),
}

FUNCTIONAL = {
    "F.relu": F.relu, "torch.relu": torch.relu, "Tensor.relu": lambda h: h.relu(),
    "F.leaky_relu": lambda h: F.leaky_relu(h, 0.1), "F.elu": F.elu, "F.selu": F.selu, "F.celu": F.celu,
    "F.gelu": F.gelu, "F.silu": F.silu, "F.mish": F.mish, "torch.sigmoid": torch.sigmoid, "F.sigmoid": F.sigmoid,
    "Tensor.sigmoid": lambda h: h.sigmoid(), "torch.tanh": torch.tanh, "Tensor.tanh": lambda h: h.tanh(),
    "F.softplus": F.softplus, "F.hardtanh": F.hardtanh, "F.relu6": F.relu6, "F.hardsigmoid": F.hardsigmoid,
    "F.hardswish": F.hardswish, "F.logsigmoid": F.logsigmoid, "F.softsign": F.softsign, "torch.exp": torch.exp,
    "Tensor.exp": lambda h: h.exp(), "torch.expm1": torch.expm1, "torch.sin": torch.sin, "Tensor.cos": lambda h: h.cos(),
    "torch.abs": torch.abs, "abs()": abs, "torch.square": torch.square, "h**2": lambda h: h**2,
    "torch.pow": lambda h: torch.pow(h, 3), "2**h": lambda h: 2**h, "torch.clamp": lambda h: torch.clamp(h, -0.3, 0.4),
    "Tensor.clamp_min": lambda h: h.clamp_min(0.1), "torch.maximum(h, c)": lambda h: torch.maximum(h, torch.zeros(H)),
    "torch.erf": torch.erf, "torch.atan": torch.atan,
    "F.layer_norm": lambda h: F.layer_norm(h, (H,), eps=1e-3), "torch.layer_norm": lambda h: torch.layer_norm(h, [H]),
    "F.rms_norm": lambda h: F.rms_norm(h, (H,), torch.linspace(0.5, 2.0, H, dtype=h.dtype)),
    # in place
    "F.relu(inplace)": lambda h: F.relu(h, inplace=True), "torch.relu_": torch.relu_,
    "Tensor.relu_": lambda h: h.relu_(), "Tensor.exp_": lambda h: h.exp_(), "Tensor.sigmoid_": lambda h: h.sigmoid_(),
    "Tensor.mul_(h)": lambda h: h.mul_(h), "Tensor.clamp_": lambda h: h.clamp_(min=0.0),
}

POSITIVE = {  # defined for positive inputs
    "torch.log": torch.log, "Tensor.log": lambda h: h.log(), "torch.log1p": torch.log1p, "torch.log2": torch.log2,
    "torch.sqrt": torch.sqrt, "Tensor.sqrt": lambda h: h.sqrt(), "torch.rsqrt": torch.rsqrt,
    "torch.reciprocal": torch.reciprocal, "1/h": lambda h: 1 / h, "h**0.5": lambda h: h**0.5,
    "Tensor.log1p_": lambda h: h.log1p_(), "torch.div(c, h)": lambda h: torch.div(torch.full((H,), 2.0), h),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_module_rules_sum_to_delta(name):
    net = _sandwich(MODULES[name])
    x, bg = _data(low=-2.0, high=2.0)
    phi, fx, fb = _explain(net, x, bg, _classes(5))
    assert _rel_additivity(phi, fx, fb) < 1e-6
    np.testing.assert_allclose(fx, net(x)[:, [0, 2]].detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(FUNCTIONAL))
def test_functional_rules_sum_to_delta(name):
    net = _sandwich(Lambda(FUNCTIONAL[name]))
    x, bg = _data(low=-2.0, high=2.0)
    assert _rel_additivity(*_explain(net, x, bg, _classes(5))) < 1e-6


@pytest.mark.parametrize("name", list(POSITIVE))
def test_positive_domain_rules_sum_to_delta(name):
    net = _sandwich(Lambda(POSITIVE[name]), positive=True)
    x, bg = _data()
    assert _rel_additivity(*_explain(net, x, bg, _classes(5))) < 1e-6


# --- composite rules and network shapes ----------------------------------------------------------------------------
class TwoBranches(nn.Module):
    """Two varying branches combined by ``combine`` (product, quotient, max, power, ...)."""

    def __init__(self, combine, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b, self.out = nn.Linear(G, H), nn.Linear(G, H), nn.Linear(H, 3)
        self.combine = combine

    def forward(self, x):
        return self.out(self.combine(torch.tanh(self.a(x)), torch.sigmoid(self.b(x))))


COMBINE = {
    "a*b": lambda a, b: a * b,
    "torch.mul": torch.mul,
    "a/(b+1)": lambda a, b: a / (b + 1.0),
    "torch.div": lambda a, b: torch.div(a, b + 0.5),
    "torch.maximum": torch.maximum,
    "torch.minimum": torch.minimum,
    "torch.max(a, b)": lambda a, b: torch.max(a, b),
    "(b+1)**a": lambda a, b: (b + 1.0) ** a,
    "a*a*b": lambda a, b: a * a * b,
    "bmm": lambda a, b: torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).squeeze(2) * b,
    "in-place mul_": lambda a, b: a.clone().mul_(b),
}


@pytest.mark.parametrize("name", list(COMBINE))
def test_products_of_two_branches_sum_to_delta(name):
    net = TwoBranches(COMBINE[name]).double().eval()
    x, bg = _data(low=-2.0, high=2.0)
    assert _rel_additivity(*_explain(net, x, bg, _classes(5))) < 1e-6


def _relu_head(last: nn.Module | None = None):
    torch.manual_seed(3)
    layers = [nn.Linear(G, H), nn.ReLU(), nn.Linear(H, 4)]
    return nn.Sequential(*layers, *([last] if last is not None else [])).double().eval()


@pytest.mark.parametrize(
    "last",
    [nn.Softmax(dim=1), nn.LogSoftmax(dim=1), nn.Softmin(dim=1), Lambda(lambda h: torch.softmax(h, -1)),
     Lambda(lambda h: F.log_softmax(h, dim=1)), Lambda(lambda h: h.softmax(1)),
     Lambda(lambda h: torch.logsumexp(h, 1, keepdim=True) - h), Lambda(lambda h: F.softmax(h * 3.0, 1) * 2.0)],
    ids=["Softmax", "LogSoftmax", "Softmin", "torch.softmax", "F.log_softmax", "Tensor.softmax", "logsumexp",
         "scaled"],
)
def test_softmax_outputs_sum_to_delta(last):
    x, bg = _data(low=-2.0, high=2.0)
    net = _relu_head(last)
    phi, fx, fb = _explain(net, x, bg, _classes(5, (0, 1, 3)))
    assert _rel_additivity(phi, fx, fb) < 1e-6


class PoolNet(nn.Module):
    def __init__(self, pool):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.pool, self.out = nn.Conv1d(1, 3, 3), pool, nn.LazyLinear(3)

    def forward(self, x):
        return self.out(self.pool(torch.relu(self.conv(x.unsqueeze(1)))).flatten(1))


@pytest.mark.parametrize(
    "pool",
    [nn.MaxPool1d(2), nn.MaxPool1d(3, stride=1), nn.AdaptiveMaxPool1d(2), Lambda(lambda h: h.amax(2, keepdim=True)),
     Lambda(lambda h: torch.max(h, dim=2).values.unsqueeze(2)), Lambda(lambda h: -torch.min(-h, 2, keepdim=True)[0]),
     Lambda(lambda h: F.max_pool2d(h.unsqueeze(1), 2).squeeze(1))],
    ids=["MaxPool1d", "overlapping", "adaptive", "amax", "torch.max", "torch.min", "max_pool2d"],
)
def test_max_rules_sum_to_delta(pool):
    net = PoolNet(pool).double()
    x, bg = _data(low=-2.0, high=2.0)
    net(x)  # materialise the lazy layer
    net.eval()
    assert _rel_additivity(*_explain(net, x, bg, _classes(5))) < 1e-6


@pytest.mark.filterwarnings("ignore:unrecognized nn.Module")
def test_max_pool_matches_shap():
    shap = pytest.importorskip("shap")
    net = nn.Sequential(nn.Unflatten(1, (1, G)), nn.Conv1d(1, 3, 3), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(),
                        nn.Linear(12, 3)).double().eval()
    x, bg = _data(low=-2.0, high=2.0)
    phi, _, _ = _explain(net, x, bg, _classes(5, (0, 1, 2)))
    sv = shap.DeepExplainer(net, bg).shap_values(x, check_additivity=False)
    np.testing.assert_allclose(phi.numpy(), np.asarray(sv).transpose(0, 2, 1), atol=1e-10)


def test_reused_module_and_residual():
    torch.manual_seed(0)
    act, lin1, lin2, out = nn.ReLU(), nn.Linear(G, H), nn.Linear(H, H), nn.Linear(H, 3)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.mods = nn.ModuleList([act, lin1, lin2, out])

        def forward(self, x):
            h = act(lin1(x))
            return out(act(lin2(h)) + h)  # the same ReLU twice, and a skip connection

    x, bg = _data(low=-2.0, high=2.0)
    assert _rel_additivity(*_explain(Net().double().eval(), x, bg, _classes(5))) < 1e-6


def test_batch_norm_and_dropout_in_eval_are_linear():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(G, H), nn.BatchNorm1d(H), nn.ReLU(), nn.Dropout(0.5), nn.Linear(H, 3)).double()
    net.train()
    net(torch.randn(64, G, dtype=F64) * 2 + 1)
    net.eval()
    x, bg = _data(low=-2.0, high=2.0)
    phi, fx, fb = _explain(net, x, bg, _classes(5))
    assert _rel_additivity(phi, fx, fb) < 1e-12


# --- linear models and covariates -----------------------------------------------------------------------------
@pytest.mark.parametrize("shortcut", [True, False])
def test_linear_model_is_weight_times_difference_to_background_mean(shortcut):
    torch.manual_seed(0)
    net = nn.Linear(G, 4).double()
    x, bg = _data(n=6, n_bg=9)
    classes = torch.tensor([[0, 3], [1, 2], [2, 2], [3, 0], [1, 1], [0, 1]])
    phi, _, fb = _explain(net, x, bg, classes, shortcut=shortcut)
    w = net.weight.detach()
    expected = w[classes] * (x - bg.mean(0))[:, None, :]
    np.testing.assert_allclose(phi, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fb, net(bg).mean(0).detach()[classes], rtol=1e-12)


class CovNet(nn.Module):
    """scVI-like: log1p of counts, one-hot covariates joined before the first layer and again later."""

    def __init__(self, n_cov=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.n_cov = n_cov
        self.first, self.bn = nn.Linear(G + n_cov, H), nn.BatchNorm1d(H)
        self.second, self.out = nn.Linear(H + n_cov, H), nn.Linear(H, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x, cov):
        onehot = F.one_hot(cov[:, 0].long(), self.n_cov).to(x.dtype)
        h = F.relu(self.bn(self.first(torch.cat([torch.log1p(x), onehot], dim=-1))))
        return self.out(F.softplus(self.second(torch.cat([h, onehot], dim=-1))))


def test_covariates_are_held_at_the_cells_values():
    net = CovNet().double().eval()
    x, bg = _data(n=4, n_bg=6, low=0.0, high=5.0)
    cov = torch.tensor([[0.0], [2.0], [1.0], [2.0]], dtype=F64)
    classes = _classes(4, (0, 1, 2))
    phi, fx, fb = deeplift_shap(net, x, bg, classes, cov=cov)
    with torch.no_grad():
        for i in range(4):
            f_bg = net(bg, cov[i].expand(len(bg), 1)).mean(0)
            np.testing.assert_allclose(fb[i], f_bg, rtol=1e-12)
            np.testing.assert_allclose(fx[i], net(x[i : i + 1], cov[i : i + 1])[0], rtol=1e-12)
    assert _rel_additivity(phi, fx, fb) < 1e-10


# --- the shortcut equals the generic path ------------------------------------------------------------------------
def _shortcut_models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(G, H), nn.BatchNorm1d(H), nn.ReLU(), nn.Dropout(), nn.Linear(H, 6), nn.ReLU(),
                        nn.Linear(6, 4)).double()
    with torch.no_grad():
        mlp[1].running_mean.uniform_(-1, 1)
        mlp[1].running_var.uniform_(0.5, 2)
        mlp[1].weight.uniform_(0.5, 2)
    mlp.eval()
    inplace = nn.Sequential(nn.Linear(G, H), nn.BatchNorm1d(H), nn.ReLU(inplace=True), nn.Linear(H, 4)).double()
    inplace.eval()
    cov_net = CovNet().double().eval()
    lin_a, lin_b = nn.Linear(G, H).double(), nn.Linear(H, H).double()
    w = torch.randn(G, H, dtype=F64)
    return {
        "mlp": lambda x, c: mlp(x),
        "log1p-mlp": lambda x, c: mlp(torch.log1p(x * 2.0)),
        "inplace-relu": lambda x, c: inplace(x),
        "flatten-view": lambda x, c: nn.Flatten()(lin_b(torch.relu(lin_a(x.view(x.shape[0], -1)).flatten(1)))),
        "covariates": cov_net,
        "linear-linear-scale": lambda x, c: torch.tanh(lin_b(lin_a(x) * 0.5 - 1.0)),
        "matmul": lambda x, c: F.softmax(torch.sigmoid(x @ w) @ w.T, dim=1),
        "two-taps": lambda x, c: torch.tanh(lin_a(x)) * torch.sigmoid(lin_a(torch.sqrt(x))),
        "linear-only": lambda x, c: lin_a(x),
    }


@pytest.mark.parametrize("name", list(_shortcut_models()))
def test_shortcut_equals_generic_path(name, caplog):
    forward = _shortcut_models()[name]
    x, bg = _data(n=5, n_bg=7, low=0.0, high=3.0)
    cov = torch.tensor([[0.0], [1.0], [2.0], [1.0], [0.0]], dtype=F64)
    classes = _classes(5, (0, 1))
    with caplog.at_level(logging.DEBUG, logger="scexplain"):
        fast = deeplift_shap(forward, x, bg, classes, cov=cov)
    assert "generic path" not in caplog.text  # the shortcut was taken
    generic = deeplift_shap(forward, x, bg, classes, cov=cov, shortcut=False)
    for a, b in zip(fast, generic, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert _rel_additivity(*fast) < 1e-10


def test_shortcut_declines_what_it_does_not_cover(caplog):
    torch.manual_seed(0)
    lin = nn.Linear(G, 3).double()
    x, bg = _data()

    def normalised(x, cov):  # the input also goes through a row sum: not a per-gene map
        return lin(x / x.sum(1, keepdim=True))

    with caplog.at_level(logging.DEBUG, logger="scexplain"):
        phi, fx, fb = deeplift_shap(normalised, x, bg, _classes(5))
    assert "generic path" in caplog.text
    assert _rel_additivity(phi, fx, fb) < 1e-10


@pytest.mark.parametrize("budget", [1, 5, 7, 13, 1000])
def test_chunking_does_not_change_results(budget):
    forward = _shortcut_models()["mlp"]
    x, bg = _data(n=6, n_bg=7)
    ref = deeplift_shap(forward, x, bg, _classes(6))
    for shortcut in (True, False):
        out = deeplift_shap(forward, x, bg, _classes(6), pair_budget=budget, shortcut=shortcut)
        for a, b in zip(out, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", ["two-taps", "log1p-mlp"])
def test_background_blocks_and_no_cache(name, monkeypatch):
    import scexplain.engines._deeplift_genes as genes
    import scexplain.engines.deeplift as engine

    forward = _shortcut_models()[name]
    x, bg = _data(n=6, n_bg=7)
    ref = deeplift_shap(forward, x, bg, _classes(6))
    monkeypatch.setattr(genes, "_BLOCK_ELEMENTS", 1)  # multipliers built one background cell at a time
    out = deeplift_shap(forward, x, bg, _classes(6), pair_budget=14, cache=engine.BackgroundCache(max_elements=0))
    for a, b in zip(out, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def _counts_like(n=6, n_bg=7):
    """Cells and background with many zeros (and one all-zero background cell), as counts have."""
    x, bg = _data(n=n, n_bg=n_bg, low=0.0, high=3.0)
    x[x < 1.0] = 0.0
    bg[bg < 1.5] = 0.0
    bg[0] = 0.0
    return x, bg


def test_background_cache_is_shared_between_calls_and_checked(monkeypatch):
    import scexplain.engines._deeplift_genes as genes
    import scexplain.engines.deeplift as engine

    built = []
    real = genes._row_products
    monkeypatch.setattr(genes, "_row_products", lambda *args: built.append(1) or real(*args))
    forward = _shortcut_models()["log1p-mlp"]
    x, bg = _counts_like()
    ref = deeplift_shap(forward, x, bg, _classes(6))
    cache = engine.BackgroundCache()
    built.clear()
    parts = [deeplift_shap(forward, x[i : i + 2], bg, _classes(2), cache=cache) for i in (0, 2, 4)]
    assert len(built) == bg.shape[0]  # the products of each background cell are made once for all calls
    for got, want in zip(zip(*parts, strict=True), ref, strict=True):
        np.testing.assert_allclose(torch.cat(got), want, rtol=1e-12, atol=1e-13)
    other = bg.flip(0)  # the same cache key with other values: recomputed, never served stale
    built.clear()
    out = deeplift_shap(forward, x, other, _classes(6), cache=cache)
    assert len(built) == bg.shape[0]
    for a, b in zip(out, deeplift_shap(forward, x, other, _classes(6)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dense_row", [0.0, 1.0])  # every non-zero background cell as a dense / a sparse row
def test_sparse_and_dense_background_rows_agree(monkeypatch, dense_row):
    import scexplain.engines._deeplift_genes as genes

    monkeypatch.setattr(genes, "_DENSE_ROW", dense_row)
    forward = _shortcut_models()["log1p-mlp"]
    x, bg = _counts_like()
    fast = deeplift_shap(forward, x, bg, _classes(6))
    generic = deeplift_shap(forward, x, bg, _classes(6), shortcut=False)
    for a, b in zip(fast, generic, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# --- multipliers along a chain of layers (no backward pass) --------------------------------------------------------
def _batch_norm(width):
    layer = nn.BatchNorm1d(width)
    with torch.no_grad():
        layer.running_mean.uniform_(-0.5, 0.5)
        layer.running_var.uniform_(0.5, 2.0)
        layer.weight.uniform_(0.5, 2.0)
    return layer


def _chain_models():
    """Models whose path from the first nonlinearity to the output is a chain of single-input layers."""
    torch.manual_seed(2)
    encoder = nn.Sequential(nn.Linear(G, H), _batch_norm(H), nn.ReLU(), nn.Dropout(0.2)).double().eval()
    latent = nn.Linear(H, 3).double()
    classifier = nn.Sequential(nn.Linear(3, H), _batch_norm(H), nn.ReLU(), nn.Dropout(0.2), nn.Linear(H, 4))
    classifier = classifier.double().eval()
    lin_a, lin_b, wide = nn.Linear(G, H).double(), nn.Linear(H, 4).double(), nn.Linear(H + 1, 4).double()
    w1, w2 = torch.randn(G, H, dtype=F64), torch.randn(H, 4, dtype=F64)
    scale = torch.rand(H, dtype=F64) + 0.5
    return {
        # scANVI's classify: log1p, encoder, latent mean, classifier (FCLayers joins no covariates: cat of one)
        "scanvi-like": lambda x, c: classifier(torch.cat((latent(encoder(torch.log1p(x))),), dim=-1)),
        "covariates-at-a-hidden-layer": lambda x, c: wide(torch.cat([torch.tanh(lin_a(x)), c], dim=1)),
        "per-pair-scale": lambda x, c: lin_b(torch.sigmoid(lin_a(x)) * (1.0 + c)),
        "column-scale-and-shift": lambda x, c: lin_b(F.softplus(lin_a(x)) * scale - 0.3) / 2.0,
        "matmul-mm": lambda x, c: torch.mm(torch.relu(x @ w1), w2),
        "two-nonlinearities": lambda x, c: lin_b(torch.tanh(torch.relu(lin_a(x)) * 2.0)),
        "linear-only": lambda x, c: lin_b(lin_a(x)),
    }


_CHAIN_CLASSES = {
    "shared": _classes(5, (0, 3, 1)),
    "per-cell": torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0], [1, 1]]),
    "one": torch.tensor([[0], [1], [2], [3], [2]]),
}


def _count_backward(monkeypatch) -> list:
    import scexplain.engines.deeplift as engine

    calls = []
    real = engine._backward
    monkeypatch.setattr(engine, "_backward", lambda *args: calls.append(1) or real(*args))
    return calls


@pytest.mark.parametrize("classes", list(_CHAIN_CLASSES))
@pytest.mark.parametrize("shortcut", [True, False])
@pytest.mark.parametrize("name", list(_chain_models()))
def test_chain_equals_backward_pass(name, shortcut, classes, monkeypatch):
    forward = _chain_models()[name]
    x, bg = _data(n=5, n_bg=7, low=0.0, high=3.0)
    cov = torch.tensor([[0.0], [1.0], [2.0], [1.0], [0.5]], dtype=F64)
    cls = _CHAIN_CLASSES[classes]
    slow = deeplift_shap(forward, x, bg, cls, cov=cov, shortcut=shortcut, chain=False)
    calls = _count_backward(monkeypatch)
    fast = deeplift_shap(forward, x, bg, cls, cov=cov, shortcut=shortcut)
    assert not calls  # along the chain, no backward pass
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert _rel_additivity(*fast) < 1e-10


@pytest.mark.parametrize("shortcut", [True, False])
@pytest.mark.parametrize("name", list(_shortcut_models()))
def test_chain_or_fallback_equals_backward_pass_on_every_shortcut_model(name, shortcut):
    forward = _shortcut_models()[name]
    x, bg = _data(n=5, n_bg=7, low=0.0, high=3.0)
    cov = torch.tensor([[0.0], [1.0], [2.0], [1.0], [0.0]], dtype=F64)
    classes = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 0], [1, 2]])
    fast = deeplift_shap(forward, x, bg, classes, cov=cov, shortcut=shortcut)
    slow = deeplift_shap(forward, x, bg, classes, cov=cov, shortcut=shortcut, chain=False)
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def _not_chains():
    torch.manual_seed(3)
    lin_a, lin_b = nn.Linear(G, H).double(), nn.Linear(H, 4).double()
    inplace = nn.Sequential(nn.Linear(G, H), nn.ReLU(), nn.Linear(H, H), nn.ReLU(inplace=True), nn.Linear(H, 4))
    return {
        "softmax-output": lambda x, c: F.softmax(lin_b(torch.relu(lin_a(x))), dim=1),
        "residual": lambda x, c: lin_b(torch.relu(lin_a(x)) + torch.tanh(lin_a(x))),
        "product-of-branches": lambda x, c: lin_b(torch.tanh(lin_a(x)) * torch.sigmoid(lin_a(x) * 0.5)),
        "in-place": lambda x, c: inplace.double()(x),
    }


@pytest.mark.parametrize("shortcut", [True, False])
@pytest.mark.parametrize("name", list(_not_chains()))
def test_models_that_are_not_chains_use_the_backward_pass(name, shortcut, monkeypatch):
    forward = _not_chains()[name]
    x, bg = _data(n=5, n_bg=7)
    calls = _count_backward(monkeypatch)
    out = deeplift_shap(forward, x, bg, _classes(5, (0, 3)), shortcut=shortcut)
    assert calls  # the values-only pass found no chain: the chunk was explained again with the backward pass
    assert _rel_additivity(*out) < 1e-10
    ref = deeplift_shap(forward, x, bg, _classes(5, (0, 3)), shortcut=shortcut, chain=False)
    for a, b in zip(out, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_cache_remembers_a_model_that_is_not_a_chain(monkeypatch):
    import scexplain.engines.deeplift as engine

    forward = _not_chains()["softmax-output"]
    x, bg = _data(n=4, n_bg=5)
    cache = engine.BackgroundCache()
    runs = []
    real = engine._Shortcut.run
    monkeypatch.setattr(engine._Shortcut, "run", lambda self, f, chunk, chain: runs.append(chain) or real(
        self, f, chunk, chain))
    first = deeplift_shap(forward, x, bg, _classes(4), cache=cache)
    assert runs == [True, False] and cache.chain is False  # tried along a chain, then the backward pass
    runs.clear()
    second = deeplift_shap(forward, x, bg, _classes(4), cache=cache)
    assert runs == [False]  # straight to the backward pass
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    chained = engine.BackgroundCache()
    deeplift_shap(_chain_models()["scanvi-like"], x, bg, _classes(4), cache=chained)
    assert chained.chain is True


@pytest.mark.parametrize(("name", "grows"), [("scanvi-like", True), ("residual", False)])
def test_chunks_grow_once_the_model_proved_a_chain(name, grows, monkeypatch):
    import scexplain.engines.deeplift as engine

    monkeypatch.setattr(engine, "_DISTINCT", False)  # along the chain on the pairs
    forward = {**_chain_models(), **_not_chains()}[name]
    x, bg = _data(n=9, n_bg=7)
    ref = deeplift_shap(forward, x, bg, _classes(9), pair_budget=1000)
    monkeypatch.setattr(engine, "_CHUNK_ELEMENTS", (512 * 2 + 1024) * 14)  # the default budget: 14 pairs
    first = engine._default_budget(G, 2, shortcut=True) // 7
    grown = engine._default_budget(G, 2, shortcut=True, chain=True) // 7
    assert (first, grown) == (2, 3)
    sizes = []
    real = engine._Chunk.__post_init__
    monkeypatch.setattr(engine._Chunk, "__post_init__", lambda self: sizes.append(self.x.shape[0]) or real(self))
    out = deeplift_shap(forward, x, bg, _classes(9))
    assert sizes == ([2, 3, 3, 1] if grows else [2, 2, 2, 2, 1])
    for a, b in zip(out, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


# --- oracles: shap and captum ------------------------------------------------------------------------------------
def _benchmark_like_mlp(dtype):
    from scexplain._demo import benchmark_mlp

    net = benchmark_mlp(G, 5, seed=1).to(dtype)
    net.train()
    with torch.no_grad():
        net(torch.randn(64, G, dtype=dtype) + 0.5)
    return net.eval()


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-5), (F64, 1e-12)])
def test_equals_shap_deep_explainer(dtype, atol):
    shap = pytest.importorskip("shap")
    net = _benchmark_like_mlp(dtype)
    x, bg = _data(n=6, n_bg=8, dtype=dtype)
    phi, _, _ = deeplift_shap(lambda x, c: net(x), x, bg, torch.arange(5).repeat(6, 1))
    sv = np.asarray(shap.DeepExplainer(net, bg).shap_values(x, check_additivity=False))  # n × G × outputs
    np.testing.assert_allclose(phi.numpy(), sv.transpose(0, 2, 1), atol=atol)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-5), (F64, 1e-12)])
def test_equals_captum_deep_lift_shap(dtype, atol):
    captum_attr = pytest.importorskip("captum.attr")
    net = _benchmark_like_mlp(dtype)
    x, bg = _data(n=6, n_bg=8, dtype=dtype)
    classes = torch.tensor([[0, 4], [1, 3], [2, 2], [3, 1], [4, 0], [0, 2]])
    phi, _, _ = deeplift_shap(lambda x, c: net(x), x, bg, classes)
    explainer = captum_attr.DeepLiftShap(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.stack([explainer.attribute(x, baselines=bg, target=classes[:, j]) for j in range(2)], 1)
    np.testing.assert_allclose(phi.numpy(), ref.detach().numpy(), atol=atol)


def test_functional_log1p_is_intercepted_where_captum_is_not():
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(G, H), nn.ReLU(), nn.Linear(H, 3)).double().eval()

    class Log1pNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(torch.log1p(x))  # a functional call: no module hook sees it

    net = Log1pNet().eval()
    x, bg = _data(low=0.0, high=20.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = captum_attr.DeepLiftShap(net).attribute(x, baselines=bg, target=0)
    delta = (net(x) - net(bg).mean(0))[:, 0].detach()
    captum_error = ((ref.sum(1) - delta).norm() / delta.norm()).item()
    phi, fx, fb = _explain(net, x, bg, _classes(5, (0,)))
    assert captum_error > 1e-2  # plain gradient of log1p: attributions do not sum to the difference
    assert _rel_additivity(phi, fx, fb) < 1e-10
    np.testing.assert_allclose(fx[:, 0] - fb[:, 0], delta, rtol=1e-12)


# --- ops without a rule, robustness, determinism -------------------------------------------------------------------
def test_an_op_without_a_rule_is_named_in_a_warning():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(G, H), nn.GroupNorm(3, H), nn.ReLU(), nn.Linear(H, 3)).double().eval()
    x, bg = _data()
    with pytest.warns(DeepLiftWarning, match="group_norm") as record:
        phi, _, _ = deeplift_shap(lambda x, c: net(x), x, bg, _classes(5))
    assert [w.message.op for w in record if issubclass(w.category, DeepLiftWarning)] == ["group_norm"]
    assert np.isfinite(phi.numpy()).all()


def test_masks_from_the_input_are_reported_only_when_used():
    torch.manual_seed(0)
    lin, out = nn.Linear(G, H).double(), nn.Linear(H, 3).double()

    def checked(x, cov):  # a NaN check reads the input but shapes no value
        h = lin(x)
        if torch.isnan(h).any():
            raise ValueError("NaN")
        return out(torch.relu(h))

    def masked(x, cov):  # relu written as a mask product: no rule
        h = lin(x)
        return out(h * (h > 0).to(h.dtype))

    x, bg = _data(low=-1.0, high=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeepLiftWarning)
        deeplift_shap(checked, x, bg, _classes(5))
    with pytest.warns(DeepLiftWarning, match="gt"):
        deeplift_shap(masked, x, bg, _classes(5))


def test_parameters_requiring_grad_and_single_class():
    net = _benchmark_like_mlp(F64)
    for p in net.parameters():
        p.requires_grad_(True)
    x, bg = _data()
    phi, fx, fb = deeplift_shap(lambda x, c: net(x), x, bg, torch.tensor([[1], [0], [4], [2], [2]]))
    assert phi.shape == (5, 1, G) and not phi.requires_grad and not fx.requires_grad
    assert _rel_additivity(phi, fx, fb) < 1e-12
    frozen = _benchmark_like_mlp(F64)
    for p in frozen.parameters():
        p.requires_grad_(False)
    ref = deeplift_shap(lambda x, c: frozen(x), x, bg, torch.tensor([[1], [0], [4], [2], [2]]))
    np.testing.assert_allclose(phi, ref.attributions, rtol=1e-12, atol=1e-14)


def test_one_dimensional_output_and_no_grad_context():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(G, H), nn.Tanh(), nn.Linear(H, 1), nn.Flatten(0)).double().eval()
    x, bg = _data()
    with torch.no_grad():
        phi, fx, fb = deeplift_shap(lambda x, c: net(x), x, bg, torch.zeros(5, 1, dtype=torch.long))
    assert _rel_additivity(phi, fx, fb) < 1e-10


def test_deterministic():
    forward = CovNet().eval()
    x, bg = _data(dtype=torch.float32)
    cov = torch.tensor([[0.0], [1.0], [2.0], [1.0], [0.0]])
    for shortcut in (True, False):
        a = deeplift_shap(forward, x, bg, _classes(5), cov=cov, shortcut=shortcut)
        b = deeplift_shap(forward, x, bg, _classes(5), cov=cov, shortcut=shortcut)
        for u, v in zip(a, b, strict=True):
            assert torch.equal(u, v)


def test_float32_follows_inputs():
    net = _benchmark_like_mlp(torch.float32)
    x, bg = _data(dtype=torch.float32)
    phi, fx, fb = deeplift_shap(lambda x, c: net(x), x, bg, _classes(5))
    assert phi.dtype == fx.dtype == fb.dtype == torch.float32
    assert _rel_additivity(phi, fx, fb) < 1e-5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"x": torch.zeros(3)}, "2-D"), ({"background": torch.zeros(4, G + 1)}, "background"),
     ({"classes": torch.zeros(2, 1, dtype=torch.long)}, "classes"), ({"cov": torch.zeros(2, 1)}, "cov"),
     ({"pair_budget": 0}, "pair_budget")],
)
def test_bad_arguments(kwargs, match):
    x, bg = _data(n=3)
    args = {"x": x, "background": bg, "classes": _classes(3)} | kwargs
    budget = args.pop("pair_budget", None)
    cov = args.pop("cov", None)
    with pytest.raises(ValueError, match=match):
        deeplift_shap(lambda x, c: x, args["x"], args["background"], args["classes"], cov=cov, pair_budget=budget)


def test_model_mixing_rows_or_too_few_outputs_is_an_error():
    x, bg = _data()
    with pytest.raises(ValueError, match="one row of outputs per input row"):
        deeplift_shap(lambda x, c: x.sum(0, keepdim=True), x, bg, _classes(5, (0,)))
    with pytest.raises(ValueError, match="outputs"):
        deeplift_shap(lambda x, c: x[:, :2], x, bg, _classes(5, (0, 2)))


def test_equal_pre_activations_use_the_derivative():
    """z = x1 − x2 is equal for the cell and its reference, yet genes 1 and 2 moved: they get ±h'(z), not 0."""
    net = nn.Sequential(nn.Linear(2, 1), nn.Softplus(), nn.Linear(1, 1)).double().eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -1.0]]))
        net[0].bias.fill_(0.5)
        net[2].weight.fill_(2.0)
    x, bg = torch.tensor([[1.0, 1.0]], dtype=F64), torch.tensor([[3.0, 3.0]], dtype=F64)
    slope = 2.0 * torch.sigmoid(torch.tensor(0.5, dtype=F64))  # d out / d z at z = 0.5
    for shortcut in (True, False):
        phi, _, _ = _explain(net, x, bg, torch.zeros(1, 1, dtype=torch.long), shortcut=shortcut)
        np.testing.assert_allclose(phi[0, 0], [-2.0 * slope, 2.0 * slope], rtol=1e-12)


def test_broadcasting_elementwise_op_and_shared_zeros():
    """Counts with zeros in the same genes (Δ = 0 exactly) through log1p, and an op broadcasting its input."""
    torch.manual_seed(0)
    lin, out = nn.Linear(G, H).double(), nn.Linear(H, 3).double()
    bases = torch.linspace(1.5, 3.0, H, dtype=F64)

    def forward(x, cov):
        h = torch.tanh(lin(torch.log1p(x)))
        return out(torch.pow(bases, h[:, :1]) + h)  # pow(constant, h[:, :1]) broadcasts one column to H

    x, bg = _data(low=0.0, high=4.0)
    x[:, :3], bg[:, :3] = 0.0, 0.0
    x[:, 3] = bg[0, 3] = bg[1:, 3] = 1.0
    fast = _explain(lambda x: forward(x, None), x, bg, _classes(5))
    generic = _explain(lambda x: forward(x, None), x, bg, _classes(5), shortcut=False)
    for a, b in zip(fast, generic, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert _rel_additivity(*fast) < 1e-10
    # genes equal in the cell and in every background cell: 0 (up to the shortcut's rounding)
    assert (generic.attributions[:, :, :4] == 0).all() and fast.attributions[:, :, :4].abs().max() < 1e-14


def test_shortcut_is_safe_with_detached_values_and_chunk_dependent_layers():
    torch.manual_seed(0)
    lin_a, lin_b, out = nn.Linear(G, H).double(), nn.Linear(G, H).double(), nn.Linear(H, 3).double()

    def detaching(x, cov):  # reads values of its input outside the gradient: the stand-in must not leak
        return out(torch.relu(lin_a(x))) + 0.1 * x.detach().sum(1, keepdim=True)

    def branching(x, cov):  # another first layer for the last (smaller) chunk
        return out(torch.relu((lin_a if x.shape[0] > 20 else lin_b)(x)))

    def validating(x, cov):  # checks values of its input and of a hidden layer
        h = lin_a(x)
        if (x.detach() < 0).any() or not torch.isfinite(h.detach()).all():
            raise ValueError("invalid input")
        return out(torch.relu(h))

    def inplace(x, cov):  # positional inplace=True on the input itself
        return out(torch.relu(lin_a(F.leaky_relu(x - 1.0, 0.1, True))))

    x, bg = _data(n=5, n_bg=7)
    for forward in (detaching, branching, validating, inplace):
        fast = deeplift_shap(forward, x, bg, _classes(5), pair_budget=14)
        generic = deeplift_shap(forward, x, bg, _classes(5), pair_budget=14, shortcut=False)
        for a, b in zip(fast, generic, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["scanvi-like", "column-scale-and-shift", "two-nonlinearities"])
def test_cells_paired_with_themselves(name, monkeypatch):
    """Background cells among the explained cells (as tl.deep_shap draws them): Δz = 0 in every unit of a pair.

    Such a pair's terms are 0 whatever its multipliers; every path must agree and stay finite.
    """
    import scexplain.engines.deeplift as engine

    forward = _chain_models()[name]
    x, bg = _data(n=5, n_bg=4, low=0.0, high=3.0)
    bg = torch.cat([x[[3, 0]], bg])  # cells 3 and 0 are background cells too
    cov = torch.tensor([[0.0], [1.0], [2.0], [1.0], [0.5]], dtype=F64)
    classes = _classes(5, (0, 3))
    ref = deeplift_shap(forward, x, bg, classes, cov=cov, shortcut=False, chain=False)
    for kw in ({}, {"chain": False}):
        out = deeplift_shap(forward, x, bg, classes, cov=cov, **kw)
        for a, b in zip(out, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    monkeypatch.setattr(engine, "_DISTINCT", False)
    for a, b in zip(deeplift_shap(forward, x, bg, classes, cov=cov), ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert _rel_additivity(*ref) < 1e-10
