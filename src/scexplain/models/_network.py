"""Dense networks read from fitted estimators (scikit-learn, CellTypist), run as exact torch modules.

A :class:`DenseNetwork` is the whole computation of a linear classifier or a multi-layer perceptron on genes::

    x → (x − mean₁) / scale₁ → … → min(·, clip) → W₁ · + b₁ → act → … → Wₙ · + bₙ   (outputs)

with every array kept in float64 as the estimator holds it. :meth:`DenseNetwork.module` builds the torch module
for a device and dtype (a fresh copy each time, so explaining in float32 never rounds the stored weights).
The DeepLIFT engine sees subtraction and division by constants and the clip as elementwise maps of the genes
(their rescale rules are exact: Δ of each map), ``Linear`` layers as linear, and the activations with their
rescale rule, so attributions sum to ``f(x) − mean_b f(b)`` to rounding.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ._base import ModelAdapter
from ._genes import align_genes, matrix_name

__all__ = ["ACTIVATIONS", "DenseNetwork", "NetworkAdapter", "model_output_names"]

#: hidden-layer activations (scikit-learn's names) → torch module class name
ACTIVATIONS = {"identity": None, "relu": "ReLU", "tanh": "Tanh", "logistic": "Sigmoid"}


@dataclass(frozen=True)
class DenseNetwork:
    """A chain of standardisations, an optional upper clip and dense layers (float64 arrays).

    Attributes
    ----------
    weights, biases
        Per layer: ``out × in`` weight and ``out`` bias (``weights[0]`` has one column per input gene).
    activation
        Between layers (not after the last): ``"identity"``, ``"relu"``, ``"tanh"`` or ``"logistic"``.
    scalings
        ``(mean, scale)`` pairs applied in order before the first layer, ``(x − mean) / scale``; either may be
        ``None`` (``with_mean=False`` / ``with_std=False``).
    clip
        Upper bound applied elementwise after the scalings (CellTypist's 10), or ``None``.
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    activation: str = "identity"
    scalings: tuple[tuple[np.ndarray | None, np.ndarray | None], ...] = ()
    clip: float | None = None

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {self.activation!r}; supported: {sorted(ACTIVATIONS)}.")

    @property
    def n_inputs(self) -> int:
        """Number of input genes."""
        return int(self.weights[0].shape[1])

    @property
    def n_outputs(self) -> int:
        """Number of outputs."""
        return int(self.weights[-1].shape[0])

    def two_sided(self) -> DenseNetwork:
        """One output ``d`` → two outputs ``[-d, d]`` (binary classifiers: one column per class)."""
        if self.n_outputs != 1:
            raise ValueError("two_sided() needs a network with one output.")
        w, b = self.weights[-1], self.biases[-1]
        return dataclasses.replace(
            self, weights=(*self.weights[:-1], np.concatenate([-w, w])), biases=(*self.biases[:-1], np.r_[-b, b])
        )

    def restrict_inputs(self, keep: np.ndarray) -> DenseNetwork:
        """The network on the inputs ``keep`` only, the others' first-layer weights dropped (held at scaled 0)."""
        keep = np.asarray(keep)
        scalings = tuple((None if m is None else m[keep], None if s is None else s[keep]) for m, s in self.scalings)
        return dataclasses.replace(self, weights=(self.weights[0][:, keep], *self.weights[1:]), scalings=scalings)

    def module(self, device=None, dtype=None):
        """An exact ``torch.nn.Sequential`` computing the network, on ``device`` in ``dtype`` (default float64)."""
        dtype = torch.float64 if dtype is None else dtype

        def tensor(a):
            return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)

        layers: list[torch.nn.Module] = [
            _Standardize(tensor_or_none(m, tensor), tensor_or_none(s, tensor)) for m, s in self.scalings
        ]
        if self.clip is not None:
            layers.append(_ClipMax(float(self.clip)))
        act = ACTIVATIONS[self.activation]
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            lin = torch.nn.Linear(w.shape[1], w.shape[0], device=device, dtype=dtype)
            with torch.no_grad():
                lin.weight.copy_(tensor(w))
                lin.bias.copy_(tensor(b))
            layers.append(lin)
            if act is not None and i < len(self.weights) - 1:
                layers.append(getattr(torch.nn, act)())
        module = torch.nn.Sequential(*layers).eval()
        module.requires_grad_(False)
        return module


def model_output_names(names: list[str] | None, given, what: str) -> list[str] | None:
    """Output names: the model's own (``given`` must then equal them), else ``given`` (may be ``None``)."""
    if given is None:
        return names
    given = [str(g) for g in given]
    if names is not None and given != names:
        raise ValueError(
            f"The {what}'s outputs are its classes {names} in this order; leave `output_names=None`."
        )
    return given


def tensor_or_none(a, tensor):
    """``tensor(a)`` unless ``a`` is ``None``."""
    return None if a is None else tensor(a)


class _Standardize(torch.nn.Module):
    """``(x − mean) / scale`` per gene, as ``StandardScaler.transform`` (either part may be absent)."""

    def __init__(self, mean, scale):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)

    def forward(self, x):
        if self.mean is not None:
            x = x - self.mean
        if self.scale is not None:
            x = x / self.scale
        return x


class _ClipMax(torch.nn.Module):
    """``min(x, bound)`` elementwise (CellTypist clips scaled values above 10)."""

    def __init__(self, bound: float):
        super().__init__()
        self.bound = bound

    def forward(self, x):
        return torch.clamp(x, max=self.bound)

    def extra_repr(self) -> str:
        return f"max={self.bound}"


class NetworkAdapter(ModelAdapter):
    """A :class:`DenseNetwork` over genes as the engines see it.

    Parameters
    ----------
    network
        The network.
    var_names
        The model's genes in input order (columns are then matched by name, extra genes ignored), or ``None``
        (columns are taken in order and their number must match).
    output_names
        Names of the outputs, or ``None`` (then from ``groupby`` or numbered).
    missing_fix
        The end of the error message when genes are missing: what the user can do.
    """

    def __init__(self, network: DenseNetwork, *, var_names=None, output_names=None,
                 missing_fix: str = "the AnnData must hold every gene the model was trained on."):
        self.network = network
        self.n_inputs = network.n_inputs
        self.var_names = None if var_names is None else pd.Index(np.asarray(var_names).astype(str))
        if self.var_names is not None and len(self.var_names) != self.n_inputs:
            raise ValueError(f"The model has {len(self.var_names)} gene names but {self.n_inputs} inputs.")
        self.output_names = None if output_names is None else [str(n) for n in output_names]
        self._missing_fix = missing_fix
        self.module = network.module()

    def input_matrix(self, adata, *, layer, use_raw):
        """``(X, gene names)``: by name when the model knows its genes, else by position."""
        if self.var_names is None:
            return super().input_matrix(adata, layer=layer, use_raw=use_raw)
        from .._inputs import get_matrix

        X, names = get_matrix(adata, layer=layer, use_raw=use_raw)
        X, _ = align_genes(X, names, self.var_names, matrix_name(layer, use_raw), fix=self._missing_fix)
        return X, self.var_names

    def forward(self, x, cov=None):
        """Outputs (cells × outputs) of the network."""
        return self.module(x)

    @contextmanager
    def explaining(self, device, dtype):
        """A fresh module on ``device`` in ``dtype`` while explaining (the stored float64 arrays stay exact)."""
        kept = self.module
        self.module = self.network.module(device, dtype)
        try:
            yield self
        finally:
            self.module = kept
