"""Adapters that turn a user's model + AnnData into "inputs, covariates, outputs"."""

from __future__ import annotations

from ._base import ModelAdapter

__all__ = ["CellTypistAdapter", "ModelAdapter", "adapt"]

#: what :func:`adapt` accepts (named in its error for anything else)
SUPPORTED_TYPES = (
    "torch.nn.Module",
    "scvi.model.SCANVI",
    "scvi.model.SCVI",
    "celltypist.models.Model",
    "scikit-learn linear classifiers (LogisticRegression, SGDClassifier, RidgeClassifier, LinearSVC, ...)",
    "sklearn.neural_network.MLPClassifier",
    "a sklearn Pipeline of StandardScaler steps ending in one of these",
)


def __getattr__(name: str):
    if name == "CellTypistAdapter":  # lazy: importing scexplain.models does not import torch or scikit-learn
        from ._celltypist import CellTypistAdapter

        return CellTypistAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _no_explain(kwargs, what: str) -> None:
    if kwargs.get("explain") is not None:
        raise ValueError(
            f"`explain={kwargs['explain']!r}` applies to scvi-tools models (SCANVI, SCVI) only; a {what} is "
            "explained through its outputs: leave `explain=None`."
        )


def adapt(model, *, output_names=None, **kwargs) -> ModelAdapter:
    """Wrap ``model`` in the adapter for its kind.

    Supported: a ``torch.nn.Module``, scvi-tools ``SCANVI``/``SCVI``, a CellTypist ``Model``, scikit-learn linear
    classifiers and ``MLPClassifier`` (alone or after ``StandardScaler`` steps in a ``Pipeline``); an adapter is
    returned as is. Raises a :class:`TypeError` listing the supported model types otherwise (tree models are
    pointed to ``tl.tree_shap_gpu``).

    Parameters
    ----------
    model
        The model (see the table in the API docs, "Supported models").
    output_names
        Names of the outputs, for models whose outputs are not named by the model itself.
    **kwargs
        ``explain=`` for scvi-tools models.

    Returns
    -------
    The adapter the engines run: ``forward`` (a torch module's outputs), ``input_matrix`` (the AnnData's matrix
    aligned to the model's genes), ``output_names``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.neural_network import MLPClassifier
    >>> from scexplain.models import adapt
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(40, 6)), np.repeat(["B", "T"], 20)
    >>> mlp = MLPClassifier(hidden_layer_sizes=(8,), max_iter=500, random_state=0).fit(X, y)
    >>> adapt(mlp).output_names  # binary: two outputs [-logit, logit]
    ['B', 'T']
    """
    if isinstance(model, ModelAdapter):
        return model
    kind = type(model).__module__.split(".")[0]
    if kind == "scvi":
        from . import _scvi

        return _scvi.adapt_scvi(model, output_names=output_names, **kwargs)
    if kind == "celltypist":
        from ._celltypist import adapt_celltypist

        _no_explain(kwargs, "CellTypist model")
        return adapt_celltypist(model, output_names=output_names)
    if kind == "sklearn":
        from ._sklearn import adapt_sklearn

        _no_explain(kwargs, "scikit-learn model")
        return adapt_sklearn(model, output_names=output_names)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        torch = None
    if torch is not None and isinstance(model, torch.nn.Module | torch.export.ExportedProgram):
        _no_explain(kwargs, "plain torch.nn.Module or torch.export program")
        if isinstance(model, torch.export.ExportedProgram):
            from ._exported import ExportedAdapter

            return ExportedAdapter(model, output_names=output_names)
        try:  # the module of an exported program (an fx GraphModule) refuses train()/eval()
            if isinstance(model, torch.fx.GraphModule):
                model.train(model.training)
        except NotImplementedError:
            raise TypeError(
                "this module comes from an exported program (ExportedProgram.module()), whose train()/eval() "
                "torch does not support: pass the ExportedProgram itself, e.g. torch.export.load(path)"
            ) from None
        from ._torch import TorchAdapter

        return TorchAdapter(model, output_names=output_names)
    tree_hint = (
        " Tree ensembles are explained with `sx.tl.tree_shap_gpu` (exact TreeSHAP)." if kind in ("xgboost", "lightgbm")
        else ""
    )
    raise TypeError(
        f"Cannot explain a {type(model).__module__}.{type(model).__name__}; supported: "
        f"{'; '.join(SUPPORTED_TYPES)}.{tree_hint}"
    )
