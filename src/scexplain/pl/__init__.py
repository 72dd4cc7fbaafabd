"""Plots of stored attributions: heatmaps, dot plots, rankings, embeddings, feature importances.

Every plot reads what a ``scexplain.tl`` function stored under ``key`` (see :class:`scexplain._keys.Key`).
:func:`heatmap` and :func:`dotplot` are scanpy's :class:`~scanpy.pl.MatrixPlot` and :class:`~scanpy.pl.DotPlot`
fed with the stored group tables, with marks for scores that come mostly from absence and for unstable ranks
(see :mod:`scexplain.pl._marks`). matplotlib and scanpy are imported only when a plot is drawn.
"""

from ._dotplot import dotplot
from ._embedding import embedding
from ._feature_importance import feature_importance
from ._heatmap import heatmap, save_heatmap
from ._ranking import ranking

__all__ = ["dotplot", "embedding", "feature_importance", "heatmap", "ranking", "save_heatmap"]
