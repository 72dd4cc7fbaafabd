"""Explainers: each computes attributions and stores them in the AnnData."""

from ._deep_shap import deep_shap

__all__: list[str] = ["deep_shap"]
