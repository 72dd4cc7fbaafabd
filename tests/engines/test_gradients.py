"""engines.gradients: oracles are captum (same noise injected), analytic models and brute-force loops."""

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

from scexplain.engines import gradients as eng

G = 12


def _tanh_net(n_out=4, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(G, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8), torch.nn.Softplus(), torch.nn.Linear(8, n_out)
    ).double().eval()


def _bn_relu_net(n_out=4, seed=0):
    from scexplain._demo import benchmark_mlp

    net = benchmark_mlp(G, n_out, seed=seed).double()
    net.train()
    net(torch.randn(64, G, dtype=torch.float64))  # non-trivial running statistics
    return net.eval()


def _fwd(net):
    return lambda x, cov=None: net(x)


def _inputs(n=9, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n, G), generator=gen, dtype=torch.float64) * 3


# --- captum, with the same noise injected into NoiseTunnel -------------------------------------------------------
def _captum_noise_tunnel(monkeypatch, net, x, noise, target, nt_type):
    """captum's NoiseTunnel(Saliency(abs=False)), its torch.normal draw replaced by our noise (n·S × G rows)."""
    n, S, _ = noise.shape
    rows = noise.reshape(n * S, G)

    def fake_normal(mean, std, *args, **kwargs):
        assert tuple(std.shape) == tuple(rows.shape)  # captum's layout: cell i's samples are rows i·S … i·S + S − 1
        return rows.clone()

    monkeypatch.setattr(torch, "normal", fake_normal)
    nt = NoiseTunnel(Saliency(net))
    out = nt.attribute(x, nt_type=nt_type, nt_samples=S, stdevs=1.0, target=target, abs=False)
    monkeypatch.undo()
    return out


@pytest.mark.parametrize("make_net", [_tanh_net, _bn_relu_net])
@pytest.mark.parametrize("nt_type", ["vargrad", "smoothgrad", "smoothgrad_sq"])
def test_noise_methods_equal_captum_noise_tunnel_with_same_noise(monkeypatch, make_net, nt_type):
    net, x = make_net(), _inputs()
    sampler = eng.NoiseSampler(7, noise_level=0.2, stdev=None, random_state=3)
    noise = sampler(x)
    classes = torch.stack([torch.arange(len(x)) % 4, torch.full((len(x),), 2)], dim=1)  # per-cell targets
    if nt_type == "vargrad":
        ours = eng.vargrad(_fwd(net), x, classes, noise)
    else:
        ours = eng.smoothgrad(_fwd(net), x, classes, noise, square=nt_type == "smoothgrad_sq")
    for c in range(classes.shape[1]):
        ref = _captum_noise_tunnel(monkeypatch, net, x, noise, classes[:, c], nt_type)
        assert float(ref.abs().max()) > 1e-6  # a non-trivial comparison
        np.testing.assert_allclose(ours[:, c].numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)


def test_multiply_by_inputs_is_noise_free_input_times_smoothgrad():
    net, x = _tanh_net(), _inputs()
    noise = eng.NoiseSampler(5, noise_level=0.1, stdev=None, random_state=0)(x)
    cls = torch.zeros((len(x), 1), dtype=torch.long)
    plain = eng.smoothgrad(_fwd(net), x, cls, noise)
    np.testing.assert_allclose(eng.smoothgrad(_fwd(net), x, cls, noise, multiply_by_inputs=True).numpy(),
                               (plain * x[:, None]).numpy(), rtol=1e-12)


def test_zero_noise_smoothgrad_is_the_saliency_of_captum():
    net, x = _tanh_net(), _inputs()
    cls = torch.tensor([[0, 3]] * len(x))
    noise = torch.zeros((len(x), 3, G), dtype=torch.float64)
    ours = eng.smoothgrad(_fwd(net), x, cls, noise)
    np.testing.assert_allclose(ours.numpy(), eng.input_gradients(_fwd(net), x, cls).numpy(), rtol=1e-12)
    for j, c in enumerate((0, 3)):
        ref = Saliency(net).attribute(x.clone(), target=c, abs=False)
        np.testing.assert_allclose(ours[:, j].numpy(), ref.numpy(), rtol=1e-10, atol=1e-12)
    assert float(eng.vargrad(_fwd(net), x, cls, noise).abs().max()) < 1e-30  # identical samples (up to rounding)


# --- analytic models --------------------------------------------------------------------------------------------
def test_linear_model_vargrad_is_exactly_zero():
    torch.manual_seed(0)
    lin = torch.nn.Linear(G, 5).double()
    x = _inputs(20)
    noise = eng.NoiseSampler(16, noise_level=None, stdev=3.0, random_state=1)(x)
    vg = eng.vargrad(_fwd(lin), x, torch.arange(5).repeat(len(x), 1), noise, ddof=1)
    assert float(vg.abs().max()) <= 1e-12
    sg = eng.smoothgrad(_fwd(lin), x, torch.arange(5).repeat(len(x), 1), noise)
    np.testing.assert_allclose(sg.numpy(), np.broadcast_to(lin.weight.detach().numpy(), sg.shape), rtol=1e-12)


@pytest.mark.parametrize("ddof", [0, 1])
def test_quadratic_model_vargrad_is_4a2sigma2_in_expectation(ddof):
    """f_c = Σ_g a_cg x_g²: g = 2a(x + ε), so Var_s g = 4a²σ² · (S − 1)/(S − ddof) in expectation.

    Per cell and gene, (S − 1)·s²/σ² is χ² with S − 1 degrees of freedom: the ratio VarGrad / (4a²σ² (S−1)/(S−ddof))
    has mean 1 and variance 2/(S − 1). Its average over n·G·C independent values (the noise is independent across
    cells and genes) has standard deviation √(2/((S−1)·n·G)) ≈ 0.0063 for S = 41, n = 125, G = 12 (C = 2 share the
    noise); the tolerance 0.035 is > 5 of them.
    """
    a = torch.linspace(-1.5, 2.0, 2 * G, dtype=torch.float64).reshape(2, G)
    a[a.abs() < 0.1] = 0.7  # keep every a_g away from 0

    def quad(x, cov=None):
        return (x.square() @ a.T)

    x, S, level = _inputs(125, seed=4), 41, 0.15
    noise = eng.NoiseSampler(S, noise_level=level, stdev=None, random_state=5)(x)
    vg = eng.vargrad(quad, x, torch.tensor([[0, 1]] * len(x)), noise, ddof=ddof)  # n × 2 × G
    sigma = level * (x.amax(1) - x.amin(1))
    expected = 4 * a.square()[None] * sigma.square()[:, None, None] * (S - 1) / (S - ddof)
    ratio = (vg / expected).numpy()
    assert abs(ratio.mean() - 1) < 0.035, ratio.mean()
    # and per gene: averaged over cells (std ≈ √(2/(40·125)) = 0.02), within 5 of them
    assert np.abs(ratio.mean(axis=0) - 1).max() < 0.1


# --- noise ----------------------------------------------------------------------------------------------------
def test_noise_is_per_cell_reproducible_and_independent_of_chunking():
    x = _inputs(10)
    whole = eng.NoiseSampler(6, noise_level=0.1, stdev=None, random_state=7)(x)
    s = eng.NoiseSampler(6, noise_level=0.1, stdev=None, random_state=7)
    parts = torch.cat([s(x[:3], np.arange(3)), s(x[3:4], [3]), s(x[4:], np.arange(4, 10))])
    np.testing.assert_array_equal(whole.numpy(), parts.numpy())
    # blocks in any order: the draws follow the cells' global indices, not the call order
    late = torch.cat([s(x[4:], np.arange(4, 10)), s(x[:4], np.arange(4))])
    np.testing.assert_array_equal(late.numpy(), torch.cat([whole[4:], whole[:4]]).numpy())
    with pytest.raises(ValueError, match="one global index per cell"):
        s(x[:3], np.arange(2))
    other = eng.NoiseSampler(6, noise_level=0.1, stdev=None, random_state=8)(x)
    assert not np.allclose(whole.numpy(), other.numpy())
    # the same draws in float32 and float64 (only σ is computed in the input's dtype)
    single = eng.NoiseSampler(6, noise_level=0.1, stdev=None, random_state=7)(x.float())
    np.testing.assert_allclose(single.numpy(), whole.numpy(), rtol=1e-6, atol=1e-9)
    absolute = [eng.NoiseSampler(3, noise_level=None, stdev=0.5, random_state=7)(x.to(t)) for t in (torch.float32,
                                                                                                      torch.float64)]
    np.testing.assert_array_equal(absolute[0].double().numpy(), absolute[1].numpy())


def test_noise_scale_relative_to_each_cells_range_or_absolute():
    x = torch.tensor([[0.0, 1.0, 5.0], [2.0, 2.0, 2.0]], dtype=torch.float64)
    np.testing.assert_allclose(eng.noise_scale(x, 0.1, None).numpy(), [0.5, 0.0])
    np.testing.assert_allclose(eng.noise_scale(x, None, 0.3).numpy(), [0.3, 0.3])
    big = torch.zeros((2, 4000), dtype=torch.float64)
    big[0, 0], big[1, 0] = 10.0, 1.0
    eps = eng.NoiseSampler(5, noise_level=0.2, stdev=None, random_state=0)(big)
    np.testing.assert_allclose(eps.std(dim=(1, 2)).numpy(), [2.0, 0.2], rtol=0.02)
    assert abs(float(eps.mean())) < 0.02


# --- integrated gradients -------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle"])
def test_integrated_gradients_equal_captum(method):
    net, x = _tanh_net(), _inputs()
    base = torch.full((1, G), 0.5, dtype=torch.float64)
    cls = torch.tensor([[1, 3]] * len(x))
    attr, fx, ref = eng.integrated_gradients(_fwd(net), x, cls, base, n_steps=20, method=method)
    ig = IntegratedGradients(net)
    for j, c in enumerate((1, 3)):
        expected = ig.attribute(x, baselines=base.expand_as(x), target=c, n_steps=20, method=method)
        np.testing.assert_allclose(attr[:, j].numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(fx[:, j].numpy(), net(x)[:, c].detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(ref[:, j].numpy(), net(base)[0, c].item(), rtol=1e-12)


def test_trapezoid_weights_sum_to_one_where_captums_sum_to_one_minus_1_over_n():
    net, x, n = _tanh_net(), _inputs(), 16
    cls = torch.tensor([[2]] * len(x))
    zeros = torch.zeros((1, G), dtype=torch.float64)
    attr, _, _ = eng.integrated_gradients(_fwd(net), x, cls, zeros, n_steps=n, method="riemann_trapezoid")
    expected = IntegratedGradients(net).attribute(x, target=2, n_steps=n, method="riemann_trapezoid")
    np.testing.assert_allclose(attr[:, 0].numpy() * (n - 1) / n, expected.numpy(), rtol=1e-5, atol=1e-7)


def test_several_baselines_average_the_per_baseline_integrated_gradients():
    net, x = _tanh_net(), _inputs(5)
    bases = _inputs(3, seed=9)
    cls = torch.tensor([[0, 1]] * len(x))
    attr, _, ref = eng.integrated_gradients(_fwd(net), x, cls, bases, n_steps=12)
    ig = IntegratedGradients(net)
    for j in range(2):
        per_base = [ig.attribute(x, baselines=b.expand_as(x), target=j, n_steps=12) for b in bases]
        np.testing.assert_allclose(attr[:, j].numpy(), torch.stack(per_base).mean(0).numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(ref[:, j].numpy(), net(bases)[:, j].mean().item(), rtol=1e-12)


@pytest.mark.parametrize(
    ("method", "min_ratio"),
    # ×4 steps: first-order rules gain ~4×, second-order ~16×, Gauss–Legendre reaches rounding
    [("riemann_left", 3.0), ("riemann_trapezoid", 12.0), ("riemann_middle", 12.0), ("gausslegendre", 100.0)],
)
def test_completeness_error_decreases_with_n_steps(method, min_ratio):
    net, x = _tanh_net(), _inputs(6) * 2
    cls = torch.arange(4).repeat(len(x), 1)
    zeros = torch.zeros((1, G), dtype=torch.float64)
    errors = []
    for n_steps in (4, 16, 64):
        attr, fx, ref = eng.integrated_gradients(_fwd(net), x, cls, zeros, n_steps=n_steps, method=method)
        errors.append(float((attr.sum(-1) - (fx - ref)).abs().max()))
    assert errors[0] > errors[1] > errors[2] or errors[2] < 1e-13, errors
    assert errors[0] / errors[1] > min_ratio, errors
    assert errors[1] / errors[2] > min_ratio or errors[2] < 1e-13, errors


def test_quadrature_rules_integrate_polynomials():
    for method, degree in [("gausslegendre", 2 * 5 - 1), ("riemann_trapezoid", 1), ("riemann_middle", 1)]:
        a, w = eng.quadrature(5, method)
        assert abs(w.sum() - 1) < 1e-14
        assert abs((w * a**degree).sum() - 1 / (degree + 1)) < 1e-14, method


# --- batching, covariates, memory budget --------------------------------------------------------------------
class _Sq(torch.autograd.Function):
    """x² whose backward has data-dependent control flow: no vmap batching rule."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g if bool((g != 0).any()) else torch.zeros_like(x)


def test_batched_gradients_equal_per_target_loop_and_fallback():
    net, x = _bn_relu_net(), _inputs()
    cls = torch.tensor([[0, 1, 2, 3]] * len(x))
    batched = eng.input_gradients(_fwd(net), x, cls)
    for c in range(4):
        xx = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(net(xx)[:, c].sum(), xx)
        np.testing.assert_allclose(batched[:, c].numpy(), g.numpy(), rtol=1e-12, atol=1e-14)
    # a model whose backward cannot be vmapped falls back to one backward per target
    fallback = eng.input_gradients(lambda v, cov=None: net(_Sq.apply(v)), x, cls)
    xx = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(net(xx * xx)[:, 2].sum(), xx)
    np.testing.assert_allclose(fallback[:, 2].numpy(), g.numpy(), rtol=1e-12)


def test_small_budget_gives_the_same_numbers():
    net, x = _tanh_net(), _inputs(7)
    cls = torch.tensor([[0, 2]] * len(x))
    noise = eng.NoiseSampler(4, noise_level=0.3, stdev=None, random_state=0)(x)
    big = eng.vargrad(_fwd(net), x, cls, noise)
    small = eng.vargrad(_fwd(net), x, cls, noise, budget=1)
    np.testing.assert_allclose(small.numpy(), big.numpy(), rtol=1e-12, atol=1e-15)
    bases = _inputs(3, seed=2)
    a1 = eng.integrated_gradients(_fwd(net), x, cls, bases, n_steps=8)
    a2 = eng.integrated_gradients(_fwd(net), x, cls, bases, n_steps=8, budget=1)
    for u, v in zip(a1, a2, strict=True):
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=1e-12, atol=1e-15)


def test_covariates_of_each_cell_follow_its_samples_and_paths():
    """Gradients with covariates fixed: all cells at once equal each cell alone with its own covariates."""
    torch.manual_seed(0)
    lin_x, lin_c = torch.nn.Linear(G, 6).double(), torch.nn.Linear(2, 6).double()
    head = torch.nn.Linear(6, 3).double()

    def fwd(x, cov):
        return head(torch.tanh(lin_x(x) * lin_c(cov)))  # covariates interact with the genes

    x = _inputs(6)
    cov = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0, 1, 0]), 2).double()
    cls = torch.tensor([[0, 2]] * len(x))
    noise = eng.NoiseSampler(5, noise_level=0.2, stdev=None, random_state=0)(x)
    together = eng.vargrad(fwd, x, cls, noise, cov)
    alone = torch.cat([eng.vargrad(fwd, x[i:i + 1], cls[i:i + 1], noise[i:i + 1], cov[i:i + 1]) for i in range(6)])
    np.testing.assert_allclose(together.numpy(), alone.numpy(), rtol=1e-12)
    zeros = torch.zeros((1, G), dtype=torch.float64)
    attr, fx, ref = eng.integrated_gradients(fwd, x, cls, zeros, cov, n_steps=40)
    np.testing.assert_allclose(ref.numpy(), fwd(zeros.expand_as(x), cov).gather(1, cls).detach().numpy())
    np.testing.assert_allclose(attr.sum(-1).numpy(), (fx - ref).numpy(), rtol=1e-8, atol=1e-10)


# --- parameter checks -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "kwargs", "err", "match"),
    [
        ((0, None, None), {}, ValueError, "n_samples"),
        ((1, None, None), {"min_samples": 2}, ValueError, "at least 2"),
        ((2.5, None, None), {}, TypeError, "n_samples"),
        ((True, None, None), {}, TypeError, "n_samples"),
        ((5, -0.1, None), {}, ValueError, "noise_level"),
        ((5, None, -1.0), {}, ValueError, "stdev"),
        ((5, float("nan"), None), {}, ValueError, "noise_level"),
        ((5, 0.1, 1.0), {}, ValueError, "not both"),
        ((5, "0.1", None), {}, TypeError, "noise_level"),
    ],
)
def test_check_noise_errors(args, kwargs, err, match):
    with pytest.raises(err, match=match):
        eng.check_noise(*args, **kwargs)


def test_check_noise_defaults():
    assert eng.check_noise(3, None, None) == (0.1, None)
    assert eng.check_noise(3, None, 2) == (None, 2.0)
    assert eng.check_noise(3, 0.0, None) == (0.0, None)


@pytest.mark.parametrize(("n_steps", "method", "err"), [(0, "gausslegendre", ValueError), (1, "riemann_trapezoid",
                         ValueError), (1.5, "gausslegendre", TypeError), (10, "simpson", ValueError)])
def test_check_integration_errors(n_steps, method, err):
    with pytest.raises(err):
        eng.check_integration(n_steps, method)
