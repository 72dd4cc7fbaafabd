"""Explainers: each computes attributions and stores them in the AnnData."""

from ._deep_shap import deep_shap
from ._integrated_gradients import integrated_gradients
from ._smoothgrad import smoothgrad
from ._tree_shap import tree_shap_gpu
from ._vargrad import vargrad

__all__: list[str] = ["deep_shap", "integrated_gradients", "smoothgrad", "tree_shap_gpu", "vargrad"]
