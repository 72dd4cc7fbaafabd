"""scikit-learn classifiers on genes, converted exactly to torch modules for DeepSHAP and the gradient methods.

Supported (see :data:`SUPPORTED_ESTIMATORS`): linear classifiers (``decision_function = X·coefᵀ + intercept``:
``LogisticRegression``, ``SGDClassifier``, ``RidgeClassifier``, ``LinearSVC``, ``Perceptron``, …),
``MLPClassifier`` (any number of hidden layers; ``relu``, ``tanh``, ``logistic`` or ``identity``), and a
``Pipeline`` of ``StandardScaler`` steps (any ``with_mean``/``with_std``; ``"passthrough"`` steps are skipped)
ending in one of them.

Outputs are the decision values: ``decision_function`` for linear classifiers, the logits of the last layer (before
softmax/logistic) for ``MLPClassifier``, in the order of ``classes_``. A binary classifier has one decision value
``d`` (for ``classes_[1]``); here it gets two outputs ``[-d, d]``, one per class, so that each cell can be explained
toward its own class (as ``tl.tree_shap_gpu`` does for binary boosted models, and as CellTypist reports binary
decision scores). A multilabel ``MLPClassifier`` keeps one logit per label.

Genes: an estimator fitted on a DataFrame (``feature_names_in_``, e.g. ``adata.to_df()``) is matched to
``adata`` by gene name; otherwise the matrix's columns are taken in order and their number must match.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from ._network import DenseNetwork, NetworkAdapter, model_output_names
from ._trees import _class_names, _feature_names

__all__ = ["SUPPORTED_ESTIMATORS", "adapt_sklearn", "linear_network", "scaler_arrays"]

#: What :func:`adapt_sklearn` accepts (named in the error for anything else).
SUPPORTED_ESTIMATORS = (
    "linear classifiers (LogisticRegression, LogisticRegressionCV, SGDClassifier, RidgeClassifier, LinearSVC, "
    "Perceptron, PassiveAggressiveClassifier)",
    "MLPClassifier (activation relu, tanh, logistic or identity)",
    "Pipeline of StandardScaler steps ending in one of these",
)

_TREE_MODULES = ("sklearn.tree", "sklearn.ensemble")


def _describe(est) -> str:
    return f"{type(est).__module__}.{type(est).__name__}"


def _supported() -> str:
    return "; ".join(SUPPORTED_ESTIMATORS)


def check_fitted(est, what: str | None = None) -> None:
    """Raise a ``ValueError`` naming the fix when a scikit-learn estimator is not fitted."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(est)
    except NotFittedError:
        raise ValueError(
            f"The {what or type(est).__name__} is not fitted; call `.fit(X, y)` before explaining it."
        ) from None


def scaler_arrays(scaler) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(mean, scale)`` of a fitted ``StandardScaler`` as its ``transform`` uses them (``None`` when off)."""
    mean = np.asarray(scaler.mean_, dtype=np.float64) if scaler.with_mean else None
    scale = np.asarray(scaler.scale_, dtype=np.float64) if scaler.with_std else None
    return mean, scale


def linear_network(est) -> DenseNetwork:
    """``decision_function`` of a fitted linear classifier as a one-layer network (one row per ``coef_`` row)."""
    coef = est.coef_
    coef = np.atleast_2d(coef.toarray() if sparse.issparse(coef) else np.asarray(coef, dtype=np.float64))
    coef = coef.astype(np.float64)
    bias = np.broadcast_to(np.asarray(est.intercept_, dtype=np.float64).reshape(-1), (coef.shape[0],)).copy()
    return DenseNetwork(weights=(coef,), biases=(bias,))


def _mlp_network(est) -> DenseNetwork:
    """The logits of a fitted ``MLPClassifier`` (its layers; the output activation is not applied)."""
    if est.activation not in ("identity", "relu", "tanh", "logistic"):  # pragma: no cover - sklearn's own set
        raise TypeError(f"MLPClassifier activation {est.activation!r} is not supported.")
    weights = tuple(np.asarray(c, dtype=np.float64).T.copy() for c in est.coefs_)
    biases = tuple(np.asarray(b, dtype=np.float64).copy() for b in est.intercepts_)
    return DenseNetwork(weights=weights, biases=biases, activation=est.activation)


def _estimator_network(est) -> DenseNetwork:
    """The decision values of a fitted classifier; binary classifiers get two outputs ``[-d, d]``."""
    from sklearn.linear_model._base import LinearClassifierMixin
    from sklearn.neural_network import MLPClassifier

    if type(est).__module__.startswith(_TREE_MODULES):
        raise TypeError(
            f"A {_describe(est)} is a tree model: explain it with `sx.tl.tree_shap_gpu(adata, model, ...)` (exact "
            "TreeSHAP). `deep_shap` and the gradient methods take " + _supported() + "."
        )
    if isinstance(est, LinearClassifierMixin):
        check_fitted(est)
        net = linear_network(est)
    elif isinstance(est, MLPClassifier):
        check_fitted(est)
        net = _mlp_network(est)
    else:
        raise TypeError(f"Cannot explain a {_describe(est)}; supported scikit-learn models: {_supported()}.")
    if net.n_outputs == 1 and len(est.classes_) == 2:
        net = net.two_sided()
    return net


def _sklearn_network(model) -> tuple[DenseNetwork, object]:
    """``(network, final estimator)`` of an estimator or a ``Pipeline`` of ``StandardScaler`` steps and one."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if not isinstance(model, Pipeline):
        return _estimator_network(model), model
    steps = [(name, step) for name, step in model.steps if step is not None and not (
        isinstance(step, str) and step == "passthrough")]
    if not steps:
        raise TypeError(f"The Pipeline has no estimator; supported: {_supported()}.")
    scalings = []
    for name, step in steps[:-1]:
        if not isinstance(step, StandardScaler):
            raise TypeError(
                f"Pipeline step {name!r} is a {_describe(step)}; only StandardScaler steps may precede the "
                f"classifier. Supported: {_supported()}."
            )
        check_fitted(step, f"StandardScaler step {name!r}")
        scalings.append(scaler_arrays(step))
    net = _estimator_network(steps[-1][1])
    widths = {net.n_inputs, *(len(s) for pair in scalings for s in pair if s is not None)}
    if len(widths) != 1:  # pragma: no cover - scikit-learn checks this when fitting
        raise ValueError(f"The Pipeline's steps disagree on the number of genes: {sorted(widths)}.")
    return DenseNetwork(net.weights, net.biases, net.activation, tuple(scalings)), steps[-1][1]


def adapt_sklearn(model, *, output_names=None) -> NetworkAdapter:
    """Wrap a fitted scikit-learn classifier on genes (or a ``Pipeline`` with ``StandardScaler`` steps).

    Parameters
    ----------
    model
        A fitted linear classifier, ``MLPClassifier``, or a ``Pipeline`` of ``StandardScaler`` steps ending in
        one (see the module docstring).
    output_names
        Leave ``None`` when the classes are named (they name the outputs); for classes ``0 … K-1`` any unique
        names of the right length.

    Returns
    -------
    The adapter: outputs are the decision values (linear) or logits (MLP), in the order of ``classes_``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from scexplain.models import adapt
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(60, 5)), np.repeat(["a", "b", "c"], 20)
    >>> clf = LogisticRegression().fit(X, y)
    >>> adapter = adapt(clf)
    >>> adapter.output_names
    ['a', 'b', 'c']
    >>> import torch
    >>> out = adapter.forward(torch.as_tensor(X)).numpy()
    >>> bool(np.abs(out - clf.decision_function(X)).max() < 1e-12)
    True
    """
    net, final = _sklearn_network(model)
    names = _class_names(final.classes_)  # None for classes 0 … K-1 (and a multilabel MLP's labels)
    var_names = _feature_names(getattr(model, "feature_names_in_", None))
    return NetworkAdapter(
        net,
        var_names=var_names,
        output_names=model_output_names(names, output_names, type(final).__name__),
        missing_fix="the AnnData must hold every gene (feature_names_in_) the model was fitted on.",
    )
