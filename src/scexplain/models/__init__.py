"""Adapters that turn a user's model + AnnData into "inputs, covariates, outputs"."""

from __future__ import annotations

from ._base import ModelAdapter

__all__ = ["ModelAdapter", "adapt"]


def adapt(model, *, output_names=None, **kwargs) -> ModelAdapter:
    """Wrap ``model`` in the adapter for its kind (``torch.nn.Module``, ``ExportedProgram``, scvi-tools models).

    Raises a :class:`TypeError` listing the supported model types otherwise.
    """
    if isinstance(model, ModelAdapter):
        return model
    kind = type(model).__module__.split(".")[0]
    if kind == "scvi":
        from . import _scvi

        return _scvi.adapt_scvi(model, output_names=output_names, **kwargs)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        torch = None
    if torch is not None and isinstance(model, torch.nn.Module | torch.export.ExportedProgram):
        if kwargs.get("explain") is not None:
            raise ValueError(
                f"`explain={kwargs['explain']!r}` applies to scvi-tools models (SCANVI, SCVI) only; a plain "
                "torch.nn.Module is explained through its outputs: leave `explain=None`."
            )
        if isinstance(model, torch.export.ExportedProgram):
            from ._exported import ExportedAdapter

            return ExportedAdapter(model, output_names=output_names)
        from ._torch import TorchAdapter

        return TorchAdapter(model, output_names=output_names)
    raise TypeError(
        f"Cannot explain a {type(model).__module__}.{type(model).__name__}; supported: torch.nn.Module, "
        "torch.export.ExportedProgram, scvi.model.SCANVI, scvi.model.SCVI."
    )
