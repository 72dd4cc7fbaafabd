"""engines.deeplift: the presence/absence split and per-(group, background cell) sums, against a per-pair oracle.

The oracle explains each (cell, background cell) pair on its own (one background cell, generic path, backward
pass): its attributions are the pair's terms ``φ_ib``, from which presence (``x_g > b_g``), absence (``x_g <
b_g``) and the group sums follow by definition.
"""

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import scexplain.engines._deeplift_genes as genes_module
import scexplain.engines.deeplift as engine
from engines.test_deeplift import F64, CovNet, G, _chain_models, _counts_like, _data, _shortcut_models
from scexplain.engines.deeplift import DeepShapOutput, deeplift_shap

CLASSES = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 0], [1, 2], [2, 1]])
OWN = torch.tensor([0, 1, 1, 0, 0, 1])
GROUPS = torch.tensor([0, 2, -1, 0, 2, 1])  # cell 2 is in no group
COV = torch.tensor([[0.0], [1.0], [2.0], [1.0], [0.0], [2.0]], dtype=F64)
PATHS = {"default": {}, "pairs": {"distinct": False}, "backward": {"chain": False}, "generic": {"shortcut": False}}


def pair_terms(forward, x, bg, classes, cov):
    """``n × B × C × G``: the attributions of each pair explained alone."""
    n, n_bg = x.shape[0], bg.shape[0]
    out = torch.zeros(n, n_bg, classes.shape[1], x.shape[1], dtype=x.dtype)
    for i in range(n):
        for b in range(n_bg):
            out[i, b] = deeplift_shap(forward, x[i : i + 1], bg[b : b + 1], classes[i : i + 1],
                                      cov=None if cov is None else cov[i : i + 1], shortcut=False,
                                      chain=False).attributions[0]
    return out


def oracle(forward, x, bg, classes=CLASSES, cov=COV, own=OWN, groups=GROUPS, n_groups=3):
    """``(φ, presence, absence, background sums)`` from the pair terms."""
    terms = pair_terms(forward, x, bg, classes, cov)
    above = (x[:, None, :] > bg[None, :, :]).unsqueeze(2)
    below = (x[:, None, :] < bg[None, :, :]).unsqueeze(2)
    sums = torch.zeros(n_groups, bg.shape[0], x.shape[1], dtype=x.dtype)
    for i, k in enumerate(groups.tolist()):
        if k >= 0:
            sums[k] += terms[i, :, own[i]]
    return terms.mean(1), (terms * above).mean(1), (terms * below).mean(1), sums


def explain(forward, x, bg, path, classes=CLASSES, cov=COV, own=OWN, groups=GROUPS, n_groups=3, monkeypatch=None,
            **kw):
    options = dict(PATHS[path])
    if options.pop("distinct", True) is False:
        monkeypatch.setattr(engine, "_DISTINCT", False)
    return deeplift_shap(forward, x, bg, classes, cov=cov, split=True, groups=groups, n_groups=n_groups, own=own,
                         **options, **kw)


def _check(out: DeepShapOutput, ref, rtol=1e-10, atol=1e-12):
    phi, presence, absence, sums = ref
    np.testing.assert_allclose(out.attributions, phi, rtol=rtol, atol=atol)
    np.testing.assert_allclose(out.presence, presence, rtol=rtol, atol=atol)
    np.testing.assert_allclose(out.attributions - out.presence, absence, rtol=rtol, atol=atol)
    np.testing.assert_allclose(out.background_sums, sums, rtol=rtol, atol=atol)


def _signed():
    """Cells and background of both signs with many zeros, some shared values, and an all-zero background cell."""
    x, bg = _data(n=6, n_bg=7, low=-2.0, high=3.0)
    x[x.abs() < 0.7] = 0.0
    bg[bg.abs() < 0.9] = 0.0
    x[0, :3] = 1.0
    bg[:, 1] = 1.0  # equal to cell 0's value in gene 1: the pair contributes to neither part
    bg[2] = 0.0
    return x, bg


MODELS = {**_shortcut_models(), **_chain_models()}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", list(MODELS))
def test_split_and_sums_equal_the_pair_oracle(name, path, monkeypatch):
    forward = MODELS[name]
    x, bg = _counts_like()
    _check(explain(forward, x, bg, path, monkeypatch=monkeypatch), oracle(forward, x, bg))


def _maps():
    torch.manual_seed(5)
    lin_a, lin_b = nn.Linear(G, 12).double(), nn.Linear(12, 3).double()
    mix = torch.randn(3, 2 * G, dtype=F64, generator=torch.Generator().manual_seed(1))
    return {
        # u_b = b − 1 is 0 where b = 1: genes with b_g ≠ 0 but u_b[g] = 0
        "x-1": lambda x, c: lin_b(torch.tanh(lin_a(x - 1.0))),
        "relu(x-1)": lambda x, c: lin_b(torch.tanh(lin_a(torch.relu(x - 1.0)))),
        "decreasing": lambda x, c: lin_b(torch.relu(lin_a(-x * 2.0))),
        "two-maps": lambda x, c: torch.tanh(F.linear(torch.cat([x, torch.log1p(x.abs())], 1), mix)),
    }


@pytest.mark.parametrize("data", ["counts", "signed"])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", list(_maps()))
def test_split_and_sums_with_any_signs_and_maps(name, path, data, monkeypatch):
    forward = _maps()[name]
    x, bg = _counts_like() if data == "counts" else _signed()
    x[0, 1] = bg[0, 1] = bg[3, 1] = 1.0  # for x − 1: b_g ≠ 0 but u_b[g] = 0 ...
    x[1, 1], x[2, 1], x[3, 1] = 0.5, 0.8, 2.0  # ... with cells below, at and above b_g
    _check(explain(forward, x, bg, path, monkeypatch=monkeypatch), oracle(forward, x, bg))


@pytest.mark.parametrize("dense_row", [0.0, 1.0])  # every non-zero background cell as a dense / a sparse row
def test_split_and_sums_with_dense_and_sparse_background_rows(dense_row, monkeypatch):
    monkeypatch.setattr(genes_module, "_DENSE_ROW", dense_row)
    forward = _shortcut_models()["log1p-mlp"]
    for x, bg in (_counts_like(), _signed()):
        _check(explain(forward, x.abs(), bg.abs(), "default"), oracle(forward, x.abs(), bg.abs()))


def test_dense_route_of_a_gpu_equals_the_oracle(monkeypatch):
    """The GPU route (terms of a few background cells at a time, GEMMs only, no scatter) run on the CPU."""
    monkeypatch.setattr(genes_module, "_dense_route", lambda x: True)
    for name in ("log1p-mlp", "covariates", "two-taps"):
        forward = _shortcut_models()[name]
        x, bg = _counts_like()
        _check(explain(forward, x, bg, "default"), oracle(forward, x, bg))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_split_and_sums_on_a_gpu():
    from scexplain._demo import benchmark_mlp

    net = benchmark_mlp(G, 3, seed=2).double().eval()
    x, bg = _counts_like()
    ref = explain(lambda v, c: net(torch.log1p(v)), x, bg, "default")
    gpu = net.cuda()
    cuda = explain(lambda v, c: gpu(torch.log1p(v)), x.cuda(), bg.cuda(), "default", cov=COV.cuda(), own=OWN.cuda(),
                   groups=GROUPS.cuda())
    for a, b in zip((ref.attributions, ref.presence, ref.background_sums),
                    (cuda.attributions, cuda.presence, cuda.background_sums), strict=True):
        np.testing.assert_allclose(a, b.cpu(), rtol=1e-10, atol=1e-12)


def test_genes_a_cell_does_not_express_are_pure_absence():
    forward = _shortcut_models()["log1p-mlp"]
    x, bg = _counts_like()
    out = deeplift_shap(forward, x, bg, CLASSES, split=True)
    zero = (x == 0).unsqueeze(1).expand_as(out.presence)
    assert zero.any() and (out.presence[zero] == 0).all()
    assert (out.attributions[zero] != 0).any()  # ... and their absence is not zero
    # summation to delta holds for each part's sum with the other: presence + absence = φ
    np.testing.assert_allclose(out.attributions.sum(-1), out.output - out.reference, rtol=1e-10)


def test_background_sums_average_to_the_group_sums():
    forward = _chain_models()["scanvi-like"]
    x, bg = _counts_like(n=9, n_bg=5)
    classes = torch.arange(4).repeat(9, 1)
    own = torch.tensor([3, 1, 0, 2, 2, 1, 0, 3, 1])
    groups = torch.tensor([1, 0, 3, 1, -1, 0, 2, 3, 3])
    out = deeplift_shap(forward, x, bg, classes, groups=groups, n_groups=5, own=own)
    mine = out.attributions[torch.arange(9), own]
    want = torch.stack([mine[groups == k].sum(0) for k in range(5)])
    np.testing.assert_allclose(out.background_sums.mean(1), want, rtol=1e-10, atol=1e-12)
    assert (out.background_sums[4] == 0).all()  # a group without cells
    # a bootstrap replicate of the background cells is a weighted mean of the sums, without a rerun
    draw = torch.tensor([0, 0, 3, 4, 4])
    weights = torch.bincount(draw, minlength=5).to(F64)
    rerun = deeplift_shap(forward, x, bg[draw], classes, groups=groups, n_groups=5, own=own).background_sums
    np.testing.assert_allclose((out.background_sums * weights[None, :, None]).sum(1) / 5, rerun.mean(1),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("budget", [1, 4, 7, 13, 1000])
def test_chunking_does_not_change_split_and_sums(budget):
    forward = _shortcut_models()["log1p-mlp"]
    x, bg = _counts_like()
    ref = explain(forward, x, bg, "default")
    for shortcut in (True, False):
        out = explain(forward, x, bg, "default", pair_budget=budget, shortcut=shortcut)
        for a, b in zip((out.attributions, out.presence, out.background_sums),
                        (ref.attributions, ref.presence, ref.background_sums), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_options_do_not_change_the_attributions():
    forward = _shortcut_models()["log1p-mlp"]
    x, bg = _counts_like()
    plain = deeplift_shap(forward, x, bg, CLASSES, cov=COV)
    full = explain(forward, x, bg, "default")
    for a, b in zip(plain, full, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert plain.presence is None and plain.background_sums is None


def test_split_and_sums_are_deterministic():
    forward = CovNet().eval()  # float32
    x, bg = _counts_like()
    x, bg = x.float(), bg.float()
    for path in ("default", "generic"):
        a = explain(forward, x, bg, path, cov=COV.float())
        b = explain(forward, x, bg, path, cov=COV.float())
        for u, v in zip((a.presence, a.background_sums), (b.presence, b.background_sums), strict=True):
            assert torch.equal(u, v)


def test_float32_split_and_sums_follow_float64():
    from scexplain._demo import benchmark_mlp

    net = benchmark_mlp(G, 5, seed=1).double()
    net.train()
    with torch.no_grad():
        net(torch.randn(64, G, dtype=F64) + 0.5)
    net.eval()
    x, bg = _counts_like()
    classes = torch.arange(5).repeat(6, 1)
    own = torch.tensor([0, 4, 2, 1, 3, 3])
    ref = deeplift_shap(lambda v, c: net(v), x, bg, classes, split=True, groups=GROUPS, n_groups=3, own=own)
    net32 = net.float()
    out = deeplift_shap(lambda v, c: net32(v), x.float(), bg.float(), classes, split=True, groups=GROUPS,
                        n_groups=3, own=own)
    for a, b in zip((out.presence, out.background_sums), (ref.presence, ref.background_sums), strict=True):
        assert a.dtype == torch.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_distinct_rows_are_used_where_the_model_allows(caplog):
    x, bg = _counts_like()
    with caplog.at_level(logging.DEBUG, logger="scexplain"):
        cache = engine.BackgroundCache()
        deeplift_shap(_shortcut_models()["log1p-mlp"], x, bg, CLASSES, cache=cache)
    assert cache.distinct is True and "pairs (" not in caplog.text
    cache = engine.BackgroundCache()
    deeplift_shap(_shortcut_models()["covariates"], x, bg, CLASSES, cov=COV, cache=cache)
    assert cache.distinct is False  # covariates joined to the input: every pair has its own first layer


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [({"split": 1}, TypeError, "split"), ({"n_groups": 2}, ValueError, "groups"),
     ({"groups": torch.zeros(6, 1, dtype=torch.long), "n_groups": 2}, ValueError, "1-D"),
     ({"groups": torch.zeros(6), "n_groups": 2}, ValueError, "integer"),
     ({"groups": torch.zeros(6, dtype=torch.long), "n_groups": 0}, ValueError, "n_groups"),
     ({"groups": torch.full((6,), 2), "n_groups": 2}, ValueError, "codes"),
     ({"groups": torch.zeros(6, dtype=torch.long), "n_groups": 2}, ValueError, "own"),
     ({"groups": torch.zeros(6, dtype=torch.long), "n_groups": 2, "own": torch.full((6,), 2)}, ValueError,
      "column")],
)
def test_bad_options(kwargs, error, match):
    x, bg = _counts_like()
    with pytest.raises(error, match=match):
        deeplift_shap(_shortcut_models()["mlp"], x, bg, CLASSES, **kwargs)
