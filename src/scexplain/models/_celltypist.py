"""CellTypist models (``celltypist.models.Model``): scaling, clip at 10 and the linear decision function.

What CellTypist computes (``celltypist.annotate`` → ``Classifier.celltype`` → ``Model.predict_labels_and_prob``,
version 1.7.1), and what the engines see, step by step on each cell's log1p-normalised expression ``x``:

1. genes matched by name to ``model.features``;
2. ``s = (x − scaler.mean_) / scaler.scale_`` (the model's ``StandardScaler``; no centring when it was fitted
   with ``with_mean=False``);
3. ``s = min(s, 10)`` elementwise;
4. ``decision = s · coefᵀ + intercept`` (the classifier's ``decision_function``, one column per
   ``model.cell_types``); a two-class model's single score ``d`` becomes ``[-d, d]``, as CellTypist's own
   decision matrix does.

The outputs explained are these decision scores (log-odds of each one-vs-rest logistic regression), not the
probabilities. The clip is elementwise, so DeepLIFT's rescale rule keeps summation to delta, and attributions are
``φ_g = coef_g · (s_g(x) − mean_b s_g(b))`` exactly (the closed form of a linear model in the clipped, scaled
space).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import sparse

from ._network import NetworkAdapter, model_output_names
from ._sklearn import check_fitted, linear_network, scaler_arrays

__all__ = ["CLIP", "CellTypistAdapter", "adapt_celltypist"]

#: CellTypist clips scaled values above this
CLIP = 10.0
#: log1p(10 000): the largest value of expression normalised to 10,000 counts per cell (CellTypist's own check)
MAX_LOG1P = 9.22


def adapt_celltypist(model, *, output_names=None, genes=None) -> CellTypistAdapter:
    """Wrap a CellTypist model for the engines (see :class:`CellTypistAdapter`)."""
    return CellTypistAdapter(model, output_names=output_names, genes=genes)


class CellTypistAdapter(NetworkAdapter):
    """A CellTypist model as "log1p-normalised expression → decision score per cell type".

    See the module docstring for the computation, exactly CellTypist's.

    **Which matrix to pass:** log1p-normalised expression to 10,000 counts per cell (``sc.pp.normalize_total(adata,
    target_sum=1e4)`` then ``sc.pp.log1p``), the input CellTypist itself expects: pass it with ``layer=`` or
    ``use_raw=True`` (e.g. scanpy's ``pbmc68k_reduced`` keeps it in ``.raw``, ``sx.datasets.pbmc68k_counts()``
    in ``layers["lognorm"]``). Scaled data (negative values) or data not normalised to 10,000 counts (values
    above log1p(10 000) ≈ 9.22) is an error, as in CellTypist.

    Parameters
    ----------
    model
        A ``celltypist.models.Model`` (from ``celltypist.train`` or ``Model.load``, or built from a fitted
        ``StandardScaler`` and a linear classifier with ``features`` set).
    output_names
        Leave ``None``: the outputs are ``model.cell_types``.
    genes
        Restrict the model to these genes, as ``celltypist.annotate`` does with the genes a query lacks: the
        coefficients of the model's other genes are dropped (their scaled value is held at 0, the training mean).
        ``None``: every gene of ``model.features`` must be in the explained matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from celltypist.models import Model
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.preprocessing import StandardScaler
    >>> from scexplain.models import adapt
    >>> rng = np.random.default_rng(0)
    >>> X, y = np.log1p(rng.poisson(2.0, size=(60, 4))), np.repeat(["B", "NK", "T"], 20)
    >>> scaler = StandardScaler().fit(X)
    >>> clf = LogisticRegression().fit(np.minimum(scaler.transform(X), 10), y)
    >>> clf.features = np.array(["CD79A", "NKG7", "CD3E", "LYZ"])
    >>> adapter = adapt(Model(clf, scaler, {}))
    >>> adapter.output_names, list(adapter.var_names)
    (['B', 'NK', 'T'], ['CD79A', 'NKG7', 'CD3E', 'LYZ'])
    """

    def __init__(self, model, *, output_names=None, genes=None):
        clf = getattr(model, "classifier", None)
        scaler = getattr(model, "scaler", None)
        if clf is None or scaler is None:
            raise TypeError(
                f"Expected a celltypist.models.Model (with `classifier` and `scaler`), got {type(model).__name__}."
            )
        from sklearn.linear_model._base import LinearClassifierMixin

        if not isinstance(clf, LinearClassifierMixin):
            raise TypeError(
                f"The CellTypist model's classifier is a {type(clf).__name__}; CellTypist models hold a linear "
                "classifier (LogisticRegression or SGDClassifier)."
            )
        check_fitted(clf, f"CellTypist classifier ({type(clf).__name__})")
        check_fitted(scaler, "CellTypist scaler")
        features = getattr(clf, "features", None)
        if features is None:
            raise ValueError(
                "The CellTypist model's classifier has no `features` (its gene names); set "
                "`model.classifier.features` to the genes it was trained on, in order."
            )
        features = np.asarray(features).astype(str)
        net = linear_network(clf)
        mean, scale = scaler_arrays(scaler)
        widths = {len(features), net.n_inputs, *(len(a) for a in (mean, scale) if a is not None)}
        if len(widths) != 1:
            raise ValueError(
                f"The CellTypist model is inconsistent: {len(features)} features, {net.n_inputs} coefficients per "
                f"class and {getattr(scaler, 'n_features_in_', '?')} scaler entries."
            )
        net = dataclasses.replace(net, scalings=((mean, scale),), clip=CLIP)
        if net.n_outputs == 1:
            net = net.two_sided()
        if genes is not None:
            keep = np.flatnonzero(np.isin(features, np.asarray(genes).astype(str)))
            if keep.size == 0:
                raise ValueError(f"None of the CellTypist model's {len(features)} genes are in `genes` (the model "
                                 f"has e.g. {features[:5].tolist()}); pass gene symbols.")
            net, features = net.restrict_inputs(keep), features[keep]
        names = [str(c) for c in np.asarray(model.cell_types)]
        super().__init__(
            net,
            var_names=features,
            output_names=model_output_names(names, output_names, "CellTypist model"),
            missing_fix=(
                "pass the matrix holding every gene (e.g. `use_raw=True` when adata.X keeps only highly variable "
                "genes), or, to drop the missing genes as celltypist.annotate does, explain "
                "`sx.models.CellTypistAdapter(model, genes=<the matrix's gene names>)`."
            ),
        )
        self.celltypist_model = model

    def input_matrix(self, adata, *, layer, use_raw):
        """Log1p-normalised expression aligned to ``model.features``; scaled or unnormalised data is an error."""
        from ._genes import matrix_name

        X, names = super().input_matrix(adata, layer=layer, use_raw=use_raw)
        lo, hi = _value_range(X)
        if lo < 0 or hi > MAX_LOG1P:
            raise ValueError(
                f"{matrix_name(layer, use_raw)} holds values in [{lo:.3g}, {hi:.3g}], but CellTypist models take "
                "log1p-normalised expression to 10,000 counts per cell (values in [0, 9.22]; negative values mean "
                "scaled data). Pass that matrix with `layer=` or `use_raw=True`, or make it with "
                "`sc.pp.normalize_total(adata, target_sum=1e4); sc.pp.log1p(adata)`."
            )
        return X, names


def _value_range(X) -> tuple[float, float]:
    """``(min, max)`` of a dense, sparse or dask matrix (implicit zeros of a sparse matrix count)."""
    if hasattr(X, "dask"):  # one pass over the blocks, dense or sparse
        import dask

        ranges = dask.compute(*(dask.delayed(_value_range)(block) for block in X.to_delayed().ravel()))
        return min(r[0] for r in ranges), max(r[1] for r in ranges)
    if sparse.issparse(X):
        data = X.data
        implicit = X.nnz < X.shape[0] * X.shape[1]
        lo = min(float(data.min()) if data.size else 0.0, 0.0 if implicit else np.inf)
        hi = max(float(data.max()) if data.size else 0.0, 0.0 if implicit else -np.inf)
        return lo, hi
    X = np.asarray(X)
    if X.size == 0:
        return 0.0, 0.0
    return float(X.min()), float(X.max())
