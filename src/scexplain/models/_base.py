"""The adapter interface: a user's model + AnnData seen as "inputs, covariates, outputs"."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pandas as pd
from anndata import AnnData

__all__ = ["ModelAdapter"]


class ModelAdapter:
    """A differentiable model over genes, as the engines see it.

    Subclasses set the attributes and implement :meth:`forward`; engines call :meth:`forward` on torch tensors
    (``x``: cells × genes on the adapter's gene order, ``cov``: per-cell covariates or ``None``) and get
    cells × outputs back.

    Attributes
    ----------
    module
        The ``torch.nn.Module`` whose parameters and train/eval state belong to the model.
    n_inputs
        Number of genes the model takes.
    var_names
        Gene names in the model's input order, or ``None`` when the model only knows a width.
    output_names
        Names of the outputs, or ``None`` (then taken from ``groupby`` categories or numbered).
    has_covariates
        Whether the model takes per-cell covariates (batch, categorical and continuous covariates).
    default_groupby
        ``obs`` column used when ``groupby`` is not given (scANVI: its labels key).
    unlabeled_category
        Category of ``groupby`` whose cells are explained toward their predicted class (scANVI's unlabeled one).
    """

    module = None
    n_inputs: int
    var_names: pd.Index | None = None
    output_names: list[str] | None = None
    #: whether :meth:`covariates` returns per-cell covariates (then expected values are per cell)
    has_covariates: bool = False
    #: obs column used as ``groupby`` when the user gives none (e.g. scANVI's labels key)
    default_groupby: str | None = None
    #: a ``groupby`` category meaning "no label": such cells are explained toward their predicted class
    unlabeled_category: str | None = None

    # --- inputs -------------------------------------------------------------------------------------------
    def input_matrix(self, adata: AnnData, *, layer: str | None, use_raw: bool):
        """``(X, var_names)`` aligned to the model's inputs (columns in model order)."""
        from .._inputs import get_matrix

        X, names = get_matrix(adata, layer=layer, use_raw=use_raw)
        if X.shape[1] != self.n_inputs:
            where = "adata.raw" if use_raw else (f"layers[{layer!r}]" if layer else "adata.X")
            raise ValueError(
                f"The model takes {self.n_inputs} genes but {where} has {X.shape[1]}; subset the AnnData to the "
                "genes the model was trained on, in the same order."
            )
        return X, names

    def covariates(self, adata: AnnData, rows: np.ndarray | None = None):
        """Per-cell covariate tensor for ``rows`` (``None`` when the model has none)."""
        return None

    def check_rows(self, x: np.ndarray) -> None:
        """Raise unless the dense rows ``x`` are valid input (finite); dask inputs are checked block by block."""
        from .._inputs import check_finite

        check_finite(x, "input matrix")

    # --- model --------------------------------------------------------------------------------------------
    def forward(self, x, cov=None):
        """Outputs (cells × n_outputs) for inputs ``x`` and covariates ``cov``."""
        raise NotImplementedError

    @contextmanager
    def explaining(self, device, dtype):
        """Eval mode, parameters frozen, on ``device``/``dtype``; everything restored afterwards."""
        import torch

        module = self.module
        was_training = module.training
        params = list(module.parameters())
        grads = [p.requires_grad for p in params]
        first = next(iter(params), None) if params else next(iter(module.buffers()), None)
        old_device = first.device if first is not None else torch.device("cpu")
        old_dtype = first.dtype if first is not None and first.is_floating_point() else None
        try:
            module.eval()
            for p in params:
                p.requires_grad_(False)
            module.to(device=device, dtype=dtype)
            yield self
        finally:
            module.to(device=old_device)
            if old_dtype is not None:
                module.to(dtype=old_dtype)
            for p, g in zip(params, grads, strict=True):
                p.requires_grad_(g)
            module.train(was_training)
