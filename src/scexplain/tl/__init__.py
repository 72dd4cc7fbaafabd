"""Explainers: each computes attributions and stores them in the AnnData."""

__all__: list[str] = []
