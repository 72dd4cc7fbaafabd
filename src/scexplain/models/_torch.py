"""Adapter for a plain ``torch.nn.Module`` from genes to outputs."""

from __future__ import annotations

from ._base import ModelAdapter

__all__ = ["TorchAdapter"]


def _input_width(module) -> int | None:
    """Width of the first Linear layer's input, if the module has one."""
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            return m.in_features
    return None


class TorchAdapter(ModelAdapter):
    """A ``torch.nn.Module`` mapping cells × genes to cells × outputs (or to cells, a scalar output)."""

    def __init__(self, module, *, n_inputs: int | None = None, output_names=None):
        import torch

        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"Expected a torch.nn.Module, got {type(module).__name__}.")
        self.module = module
        width = n_inputs if n_inputs is not None else _input_width(module)
        self.n_inputs = width if width is not None else -1
        self.output_names = None if output_names is None else [str(n) for n in output_names]

    def input_matrix(self, adata, *, layer, use_raw):
        """Matrix to explain; without a known model width, any width is accepted."""
        if self.n_inputs < 0:
            from .._inputs import get_matrix

            X, names = get_matrix(adata, layer=layer, use_raw=use_raw)
            self.n_inputs = X.shape[1]
            return X, names
        return super().input_matrix(adata, layer=layer, use_raw=use_raw)

    def forward(self, x, cov=None):
        """Run the module; a 1-D output (one scalar per cell) becomes one column."""
        out = self.module(x)
        return out.unsqueeze(1) if out.ndim == 1 else out
