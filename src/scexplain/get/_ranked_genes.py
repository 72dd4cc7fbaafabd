"""Tidy access to ranked features of a stored result."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .._keys import Key

__all__ = ["ranked_genes_df"]

#: the optional columns, each from the stored features × groups table of the same name, when stored
OPTIONAL_COLUMNS = (Key.table.presence, Key.table.absence, Key.table.ci_low, Key.table.ci_high,
                    Key.table.rank_stability)


def ranked_genes_df(adata: AnnData, key: str, group: str | list[str] | None = None) -> pd.DataFrame:
    """Ranked genes (or embedding dims) of a result as a long DataFrame, with their split and uncertainty.

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
    One row per group and gene, sorted by group then rank, with the columns

    ``group``, ``rank`` (0 = highest), ``names``, ``scores``
        the ranking: ``scores`` is the mean attribution of the group's cells toward their group;
    ``presence``, ``absence`` (when the result stores the split)
        the parts of ``scores`` from the genes expressed above the reference and below it
        (``presence + absence = scores``). ``absence`` larger in magnitude than ``presence`` means that the
        group's cells *lacking* the gene (relative to the reference) is what pushes the model toward the group;
    ``ci_low``, ``ci_high``, ``rank_stability`` (when the result stores a bootstrap, ``n_bootstrap=``)
        the percentile interval of the score (``params["bootstrap"]["ci_level"]``, 95 % by default) and the
        fraction of bootstrap replicates in which the gene is among the group's top ``n_top`` (default 20).

    Each optional column appears when the result stores it, for every group; results written by scexplain
    0.1.0 have only the first four. Scores are float32 as stored in the ranking; the other values float64.

    Examples
    --------
    >>> import scexplain as sx
    >>> sx.tl.deep_shap(adata, model, groupby="bulk_labels", n_bootstrap=25)  # doctest: +SKIP
    >>> df = sx.get.ranked_genes_df(adata, "deep_shap", group="CD19+ B")  # doctest: +SKIP
    >>> df.head(3)  # doctest: +SKIP
         group  rank  names  scores  presence  absence  ci_low  ci_high  rank_stability
    0  CD19+ B     0  CD79A    0.55      0.53     0.02    0.49     0.60            1.00
    1  CD19+ B     1   CST3    0.44     -0.03     0.47    0.37     0.50            0.96
    2  CD19+ B     2    LYZ    0.38      0.01     0.37    0.30     0.45            0.88
    >>> df[df["absence"].abs() > df["presence"].abs()]  # genes the group lacks  # doctest: +SKIP
    """
    from .._results import StoredResult

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
    res = StoredResult(adata, key, adata.uns[key])
    tables = {name: res.stored_group_table(name) for name in OPTIONAL_COLUMNS}
    tables = {name: t for name, t in tables.items() if t is not None and set(groups) <= set(t.columns)}
    frames = []
    for g in groups:
        genes = np.asarray(names[g]).astype(str)
        frame = pd.DataFrame({"group": g, "rank": np.arange(len(names)), "names": genes,
                              "scores": np.asarray(scores[g], dtype=np.float32)})
        for name, table in tables.items():
            frame[name] = table[g].reindex(genes).to_numpy(dtype=np.float64)
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out["group"] = pd.Categorical(out["group"], categories=groups)
    return out
