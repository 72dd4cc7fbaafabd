"""Tidy accessors for stored results."""

from ._ranked_genes import ranked_genes_df

__all__ = ["ranked_genes_df"]
