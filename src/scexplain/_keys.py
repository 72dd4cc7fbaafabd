"""Storage key names: the one place that spells where results live in an AnnData (squidpy-style)."""

from __future__ import annotations

__all__ = ["Key"]


class Key:
    """Names of the slots scexplain writes.

    The default key of a result is the method's name (``"deep_shap"``, ``"vargrad"``, ...), overridable with
    ``key_added``. For a result stored under ``key``:

    ========================  ==============================================================
    ``layers[key]``           cells × genes attributions toward each cell's own target
    ``obsm[key]``             cells × embedding dims (tree models on ``use_rep``)
    ``varm[key]``             genes × groups mean attribution (heatmap source)
    ``varm[key + "_latent"]`` genes × latent dims (encoder explanations)
    ``uns[key]``              params, expected values, ranked names/scores, additivity summary
    ========================  ==============================================================
    """

    class uns:
        """Entries inside ``adata.uns[key]``."""

        params = "params"
        expected_value = "expected_value"
        names = "names"
        scores = "scores"
        additivity = "additivity"
        group_mean_abs = "group_mean_abs"
        # fields scanpy's rank_genes_groups_df reads besides names/scores (NaN: attributions have no p-values)
        scanpy_placeholders = ("logfoldchanges", "pvals", "pvals_adj")

    @staticmethod
    def default(method: str, key_added: str | None = None) -> str:
        """Return the storage key of a result: ``key_added`` if given, else the method's name."""
        if key_added is None:
            return method
        if not isinstance(key_added, str) or not key_added:
            raise TypeError(f"`key_added` must be a non-empty string, got {key_added!r}.")
        return key_added

    @staticmethod
    def latent(key: str) -> str:
        """``varm`` key of genes × latent-dimension attributions."""
        return f"{key}_latent"

    @staticmethod
    def latent_abs(key: str) -> str:
        """``varm`` key of genes × latent-dimension mean absolute attributions."""
        return f"{key}_latent_abs"
