"""Storage key names: the one place that spells where results live in an AnnData (squidpy-style).

Storage layout 2 (``docs/storage.md``): **no user string is ever a key**. Group names, output names and latent
dimension names are stored as arrays inside ``uns[key]`` (``groups``, ``output_names``, ``latent_dims``,
``feature_names``); tables over them are plain arrays whose columns follow those arrays, and layers of single
outputs are keyed by the output's position. Keys are built from the result's key (``key_added`` or the method's
name, checked by :meth:`Key.default`) and fixed suffixes only. Ranking recarrays keep group names as their field
names (a compound dtype, not a key), as :func:`scanpy.tl.rank_genes_groups` stores them, so that
``sc.get.rank_genes_groups_df(adata, group, key=key)`` reads them.
"""

from __future__ import annotations

__all__ = ["LAYOUT_VERSION", "Key", "check_key"]

#: version of the storage layout written by this scexplain (``uns[key]["layout"]``; absent in 0.1.0 files = 1)
LAYOUT_VERSION = 2

#: characters no storage key may contain (anndata 0.13 and zarr reject '/', in h5ad and zarr alike)
_FORBIDDEN = ("/",)


def check_key(key: str, what: str = "key") -> str:
    """Return ``key`` if it can be a storage key in h5ad and zarr (a non-empty string without '/'), else raise."""
    if not isinstance(key, str) or not key:
        raise TypeError(f"The {what} must be a non-empty string, got {key!r}.")
    bad = [c for c in _FORBIDDEN if c in key]
    if bad:
        raise ValueError(
            f"The {what} {key!r} contains {bad[0]!r}, which anndata (0.13) and zarr reject in storage keys; "
            "choose a name without it."
        )
    return key


class Key:
    """Names of the slots scexplain writes (layout 2).

    The key of a result is the method's name (``"deep_shap"``, ``"vargrad"``, ``"tree_shap"``, ...), overridable
    with ``key_added``. For a result stored under ``key``:

    ================================  ======================================================================
    ``layers[key]``                   cells × genes, attributions toward each cell's own target
    ``layers[key + "_presence"]``     cells × genes, the part of ``layers[key]`` from genes above the reference
                                      (absence = ``layers[key]`` − presence)
    ``layers[key + "_out{j}"]``       cells × genes toward output ``j`` (``keep_all``; ``j`` indexes
                                      ``uns[key]["output_names"]``, listed in ``uns[key]["kept_outputs"]``)
    ``obsm[key]``                     cells × dims (tree models on ``use_rep``), or a DataFrame of per-cell
                                      summaries with fixed column names
    ``obsm[key + "_summary"]``        per-cell summaries when ``obsm[key]`` holds embedding attributions
    ``obsm[key + "_expected_value"]`` cells × latent dims (latent mode: per-cell references)
    ``varm[key]``                     genes × groups, mean attribution of each group's cells toward their group
                                      (columns follow ``uns[key]["groups"]``)
    ``varm[key + "_{table}"]``        further genes × groups tables (:class:`Key.table`): ``_mean_abs``,
                                      ``_presence``, ``_ci_low``, ``_ci_high``, ``_rank_stability``
    ``varm[key + "_latent"]``         genes × latent dims signed mean (columns: ``uns[key]["latent_dims"]``)
    ``varm[key + "_latent_abs"]``     genes × latent dims mean |attribution|
    ``varm[key + "_latent_presence"]`` genes × latent dims mean presence part
    ``varm[key + "_latent_groups"]``  genes × groups × latent dims mean |attribution| per group
    ``uns[key]``                      ``params``, ``layout``, names arrays, expected values, rankings,
                                      additivity summary; for embedding features the group tables
                                      (``uns[key]["group_tables"][table]``, features × groups)
    ================================  ======================================================================
    """

    class uns:
        """Entries inside ``adata.uns[key]``."""

        params = "params"
        layout = "layout"
        expected_value = "expected_value"
        names = "names"
        scores = "scores"
        additivity = "additivity"
        groups = "groups"
        output_names = "output_names"
        feature_names = "feature_names"
        latent_dims = "latent_dims"
        kept_outputs = "kept_outputs"
        group_tables = "group_tables"
        # fields scanpy's rank_genes_groups_df reads besides names/scores (NaN: attributions have no p-values)
        scanpy_placeholders = ("logfoldchanges", "pvals", "pvals_adj")

    class table:
        """Names of the features × groups tables (``"mean"`` is ``varm[key]`` itself).

        ``presence`` is the part of ``mean`` that comes from features above the reference (``absence`` = ``mean``
        − ``presence`` is derived, not stored); ``ci_low``/``ci_high`` bound ``mean`` by a bootstrap percentile
        interval and ``rank_stability`` is the fraction of bootstrap replicates in which the feature is among
        the group's top features.
        """

        mean = "mean"
        mean_abs = "mean_abs"
        presence = "presence"
        absence = "absence"
        ci_low = "ci_low"
        ci_high = "ci_high"
        rank_stability = "rank_stability"
        #: tables a result may store (``absence`` is derived from ``mean`` and ``presence``)
        stored = ("mean", "mean_abs", "presence", "ci_low", "ci_high", "rank_stability")

    @staticmethod
    def default(method: str, key_added: str | None = None) -> str:
        """Return the storage key of a result: ``key_added`` if given (checked), else the method's name."""
        if key_added is None:
            return method
        return check_key(key_added, "`key_added`")

    @staticmethod
    def group_table(key: str, table: str) -> str:
        """``varm`` key of a genes × groups table: ``key`` for the mean, ``f"{key}_{table}"`` for the others."""
        return key if table == Key.table.mean else f"{key}_{table}"

    @staticmethod
    def presence_layer(key: str) -> str:
        """``layers`` (or ``obsm``) key of the presence part of the per-cell attributions."""
        return f"{key}_presence"

    @staticmethod
    def output_layer(key: str, position: int) -> str:
        """``layers`` key of the attributions toward output number ``position`` (``keep_all``)."""
        return f"{key}_out{int(position)}"

    @staticmethod
    def cell_summary(key: str) -> str:
        """``obsm`` key of the per-cell summary DataFrame when ``obsm[key]`` holds embedding attributions."""
        return f"{key}_summary"

    @staticmethod
    def expected_values(key: str) -> str:
        """``obsm`` key of cells × latent dims per-cell reference values (latent mode)."""
        return f"{key}_expected_value"

    @staticmethod
    def latent(key: str) -> str:
        """``varm`` key of genes × latent-dimension attributions."""
        return f"{key}_latent"

    @staticmethod
    def latent_abs(key: str) -> str:
        """``varm`` key of genes × latent-dimension mean absolute attributions."""
        return f"{key}_latent_abs"

    @staticmethod
    def latent_presence(key: str) -> str:
        """``varm`` key of genes × latent-dimension mean presence part of the attributions."""
        return f"{key}_latent_presence"

    @staticmethod
    def latent_groups(key: str) -> str:
        """``varm`` key of genes × groups × latent dims mean absolute attributions of each group's cells."""
        return f"{key}_latent_groups"
