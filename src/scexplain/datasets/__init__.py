"""Offline datasets: a toy with planted markers, and pbmc68k_reduced with counts."""

from ._pbmc import pbmc68k_counts
from ._toy import toy

__all__ = ["pbmc68k_counts", "toy"]
