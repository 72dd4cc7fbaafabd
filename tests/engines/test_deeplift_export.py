"""DeepSHAP of ``torch.export`` programs: the engine tests' zoo of models, exported, explained as the eager modules.

``ep.module()`` calls ATen operators (``torch.ops.aten.linear.default``, ``aten.softmax.int``, ``aten.max.dim``, ...);
their DeepLIFT rules must be the eager ones, so that the attributions are the same numbers and sum to the delta.
Programs decomposed to core ATen (``run_decompositions()``) write piecewise maps with ``where`` and comparisons:
they still sum to the delta exactly.
"""

import importlib.util
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import scexplain.engines.deeplift as engine
from scexplain.engines.deeplift import DeepLiftWarning, deeplift_shap

_spec = importlib.util.spec_from_file_location("zoo", Path(__file__).with_name("test_deeplift.py"))
zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo)

F64 = torch.float64


class _TwoInputs(nn.Module):
    """A ``forward(x, cov)`` callable as a module, so that it can be exported."""

    def __init__(self, forward):
        super().__init__()
        self.f = forward

    def forward(self, x, cov):
        return self.f(x, cov)


def _cases():
    """(name, forward(x, cov), x, background, classes, cov) for every model of the engine tests."""
    x, bg = zoo._data(low=-2.0, high=2.0)
    cases = []
    for name, op in zoo.MODULES.items():
        cases.append((f"module-{name}", zoo._sandwich(op), x, bg, zoo._classes(5), None))
    for name, fn in zoo.FUNCTIONAL.items():
        cases.append((f"functional-{name}", zoo._sandwich(zoo.Lambda(fn)), x, bg, zoo._classes(5), None))
    xp, bgp = zoo._data()
    for name, fn in zoo.POSITIVE.items():
        cases.append((f"positive-{name}", zoo._sandwich(zoo.Lambda(fn), positive=True), xp, bgp, zoo._classes(5),
                      None))
    for name, combine in zoo.COMBINE.items():
        cases.append((f"combine-{name}", zoo.TwoBranches(combine).double().eval(), x, bg, zoo._classes(5), None))
    heads = {"Softmax": nn.Softmax(dim=1), "LogSoftmax": nn.LogSoftmax(dim=1), "Softmin": nn.Softmin(dim=1),
             "logsumexp": zoo.Lambda(lambda h: torch.logsumexp(h, 1, keepdim=True) - h)}
    for name, head in heads.items():
        cases.append((f"head-{name}", zoo._relu_head(head), x, bg, zoo._classes(5, (0, 1, 3)), None))
    pools = {"MaxPool1d": nn.MaxPool1d(2), "overlapping": nn.MaxPool1d(3, stride=1), "adaptive": nn.AdaptiveMaxPool1d(2),
             "amax": zoo.Lambda(lambda h: h.amax(2, keepdim=True)),
             "torch.max": zoo.Lambda(lambda h: torch.max(h, dim=2).values.unsqueeze(2)),
             "torch.min": zoo.Lambda(lambda h: -torch.min(-h, 2, keepdim=True)[0])}
    for name, pool in pools.items():
        net = zoo.PoolNet(pool).double()
        net(x)
        cases.append((f"pool-{name}", net.eval(), x, bg, zoo._classes(5), None))
    xs, bgs = zoo._data(n=5, n_bg=7, low=0.0, high=3.0)
    cov = torch.tensor([[0.0], [1.0], [2.0], [1.0], [0.0]], dtype=F64)
    for group, models, classes in (("shortcut", zoo._shortcut_models(), (0, 1)),
                                   ("chain", zoo._chain_models(), (0, 3, 1)),
                                   ("not-chain", zoo._not_chains(), (0, 3))):
        for name, forward in models.items():
            if name == "in-place":  # the zoo's version converts its module to float64 inside forward
                torch.manual_seed(3)
                forward = nn.Sequential(nn.Linear(zoo.G, zoo.H), nn.ReLU(), nn.Linear(zoo.H, zoo.H),
                                        nn.ReLU(inplace=True), nn.Linear(zoo.H, 4)).double()
            cases.append((f"{group}-{name}", forward, xs, bgs, zoo._classes(5, classes), cov))
    return cases


CASES = {c[0]: c for c in _cases()}


def _export(model, x, cov, decompose=False):
    module = model if isinstance(model, nn.Module) and not _takes_cov(model) else None
    dim = torch.export.Dim("cells")
    if module is not None:
        program = torch.export.export(module, (x[:3],), dynamic_shapes=({0: dim},))
    else:
        wrapped = model if isinstance(model, nn.Module) else _TwoInputs(model)
        program = torch.export.export(wrapped, (x[:3], cov[:3]), dynamic_shapes=({0: dim}, {0: dim}))
    return program.run_decompositions() if decompose else program


def _takes_cov(model) -> bool:
    import inspect

    return len(inspect.signature(model.forward).parameters) == 2


def _forward(model, program=None):
    """The engine's ``forward(x, cov)`` of the eager model or of its exported program."""
    target = model if program is None else program.module()
    if isinstance(model, nn.Module) and not _takes_cov(model):
        return lambda x, cov: target(x)
    return lambda x, cov: target(x, cov)


def _explain(forward, x, bg, classes, cov):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeepLiftWarning)  # every op must have its rule
        return tuple(deeplift_shap(forward, x, bg, classes, cov=cov if cov is not None else None))


def _cov_or_zeros(x, cov):
    return cov if cov is not None else torch.zeros(x.shape[0], 1, dtype=x.dtype)


@pytest.mark.parametrize("name", list(CASES))
def test_exported_program_is_explained_as_the_eager_module(name):
    _, model, x, bg, classes, cov = CASES[name]
    program = _export(model, x, _cov_or_zeros(x, cov))
    got = _explain(_forward(model, program), x, bg, classes, cov)
    want = _explain(_forward(model), x, bg, classes, cov)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert zoo._rel_additivity(*got) <= 1e-6


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith(("shortcut-", "chain-"))])
def test_exported_program_takes_the_same_fast_paths(name, monkeypatch, caplog):
    """The first-layer shortcut and the chain walk (no backward pass) follow exported graphs as eager ones."""
    _, model, x, bg, classes, cov = CASES[name]
    program = _export(model, x, _cov_or_zeros(x, cov))
    counts = []
    for forward in (_forward(model), _forward(model, program)):
        calls = []
        real = engine._backward
        monkeypatch.setattr(engine, "_backward", lambda *args, calls=calls, real=real: calls.append(1) or real(*args))
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="scexplain"):
            deeplift_shap(forward, x, bg, classes, cov=cov)
        counts.append((len(calls), "generic path" in caplog.text))
        monkeypatch.undo()
    assert counts[0] == counts[1]


#: models whose core-ATen decomposition calls ops of its own (where and comparisons, native norms, addmm, ...)
DECOMPOSED = [n for n in CASES if n in {
    "module-celu", "module-softplus", "module-softshrink", "module-hardshrink", "module-threshold", "module-prelu",
    "module-mish", "module-layer_norm", "module-layer_norm_2d", "module-gelu", "module-hardswish", "module-rms_norm",
    "functional-F.softplus", "functional-torch.clamp", "head-Softmax", "head-LogSoftmax", "head-logsumexp",
    "pool-MaxPool1d", "pool-adaptive", "shortcut-mlp", "shortcut-covariates", "chain-scanvi-like",
    "chain-column-scale-and-shift", "not-chain-in-place"}]


@pytest.mark.parametrize("name", DECOMPOSED)
def test_core_aten_programs_sum_to_delta(name):
    _, model, x, bg, classes, cov = CASES[name]
    program = _export(model, x, _cov_or_zeros(x, cov), decompose=True)
    got = _explain(_forward(model, program), x, bg, classes, cov)
    assert zoo._rel_additivity(*got) <= 1e-6
    want = _explain(_forward(model), x, bg, classes, cov)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12)  # the same model outputs
    if name != "head-logsumexp":  # its decomposition shifts by each row's own max (a different, exact split)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-9, atol=1e-11)


def test_where_rule_is_exact_on_a_hand_written_piecewise_map():
    """``where(h > 0, h, 0.1 h)`` (leaky ReLU by hand) equals the rescale rule of F.leaky_relu."""
    torch.manual_seed(0)
    lin, out = nn.Linear(zoo.G, zoo.H).double(), nn.Linear(zoo.H, 3).double()
    x, bg = zoo._data(low=-2.0, high=2.0)

    def by_hand(x, cov):
        h = lin(x)
        return out(torch.where(h > 0, h, 0.1 * h))

    def builtin(x, cov):
        return out(torch.nn.functional.leaky_relu(lin(x), 0.1))

    got = _explain(by_hand, x, bg, zoo._classes(5), None)
    want = _explain(builtin, x, bg, zoo._classes(5), None)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
