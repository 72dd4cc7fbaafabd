"""Aligning an AnnData matrix to the genes a model was trained on, by name."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["align_genes", "matrix_name"]


def matrix_name(layer: str | None, use_raw: bool) -> str:
    """How error messages name the matrix read with ``layer``/``use_raw``."""
    if use_raw:
        return "adata.raw.X"
    return f"layers[{layer!r}]" if layer is not None else "adata.X"


def align_genes(X, names, model_genes: pd.Index, where: str, *, fix: str, missing: str = "error"):
    """Columns of ``X`` (genes ``names``) in the order of ``model_genes``.

    Parameters
    ----------
    X
        Cells × genes matrix (dense, sparse or dask).
    names
        Gene names of the columns of ``X``.
    model_genes
        The model's genes, in its input order.
    where
        Name of the matrix in error messages (see :func:`matrix_name`).
    fix
        What the user can do about missing genes; ends the error message.
    missing
        ``"error"``: every model gene must be present; ``"ignore"``: return the present ones only.

    Returns
    -------
    ``(X aligned, positions)``: with ``missing="ignore"``, ``positions`` are the indices into ``model_genes`` of
    the returned columns (``None`` when all are present); extra genes of ``X`` are always left out.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> X = np.arange(6.0).reshape(2, 3)
    >>> aligned, kept = align_genes(X, ["a", "b", "c"], pd.Index(["c", "a"]), "adata.X", fix="")
    >>> aligned.tolist(), kept
    ([[2.0, 0.0], [5.0, 3.0]], None)
    """
    names = pd.Index(names).astype(str)
    model_genes = pd.Index(model_genes).astype(str)
    if len(names) == len(model_genes) and (np.asarray(names) == np.asarray(model_genes)).all():
        return X, None
    if not names.is_unique:
        dup = names[names.duplicated()].unique()[:5].tolist()
        raise ValueError(f"Gene names of {where} are not unique (e.g. {dup}); make them unique first "
                         "(`adata.var_names_make_unique()`).")
    pos = names.get_indexer(model_genes)
    kept = None
    if (pos < 0).any():
        if missing != "ignore":
            absent = model_genes[pos < 0]
            raise ValueError(
                f"{len(absent)} of the model's {len(model_genes)} genes are missing from {where} (e.g. "
                f"{absent[:5].tolist()}); {fix}"
            )
        kept = np.flatnonzero(pos >= 0)
        if kept.size == 0:
            raise ValueError(f"None of the model's {len(model_genes)} genes are in {where} (e.g. "
                             f"{model_genes[:5].tolist()}); pass gene symbols the model knows.")
        pos = pos[kept]
    return X[:, pos], kept
