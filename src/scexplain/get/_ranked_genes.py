"""Tidy access to ranked features of a stored result."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .._keys import Key

__all__ = ["ranked_genes_df"]


def ranked_genes_df(adata: AnnData, key: str, group: str | list[str] | None = None) -> pd.DataFrame:
    """Ranked genes (or embedding dims) of a result as a long DataFrame.

    Parameters
    ----------
    adata
        AnnData holding a result of a ``scexplain.tl`` function.
    key
        The result's key (the method name unless ``key_added`` was given).
    group
        One group, a list of groups, or ``None`` for all.

    Returns
    -------
    Columns ``group``, ``rank`` (0 = highest), ``names``, ``scores`` (mean attribution of the group's cells toward
    their group), sorted by group then rank.

    Examples
    --------
    >>> import scexplain as sx
    >>> df = sx.get.ranked_genes_df(adata, "deep_shap", group="B cell")  # doctest: +SKIP
    """
    if key not in adata.uns or Key.uns.names not in adata.uns[key]:
        raise KeyError(
            f"No ranking under adata.uns[{key!r}]; run a scexplain.tl function (e.g. sx.tl.deep_shap) with "
            "`groupby=` first, or pass the `key_added` you used."
        )
    names, scores = adata.uns[key][Key.uns.names], adata.uns[key][Key.uns.scores]
    available = list(names.dtype.names)
    groups = available if group is None else ([group] if isinstance(group, str) else list(group))
    missing = [g for g in groups if g not in available]
    if missing:
        raise KeyError(f"Groups {missing} not in adata.uns[{key!r}]; available: {available}.")
    frames = [
        pd.DataFrame(
            {"group": g, "rank": np.arange(len(names)), "names": np.asarray(names[g]).astype(str),
             "scores": np.asarray(scores[g], dtype=np.float32)}
        )
        for g in groups
    ]
    out = pd.concat(frames, ignore_index=True)
    out["group"] = pd.Categorical(out["group"], categories=groups)
    return out
