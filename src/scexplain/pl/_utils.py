"""Shared plumbing of the plots: colour limits, figure layout, show/return logic.

Results are read by :mod:`scexplain._results` (re-exported here).

Nothing here imports matplotlib at module level: ``import scexplain`` stays light.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._results import METHOD_LABELS, ResultNotFoundError, StoredResult, get_result, method_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "METHOD_LABELS",
    "ResultNotFoundError",
    "StoredResult",
    "color_limits",
    "finish",
    "get_result",
    "method_label",
]

# -- colours ----------------------------------------------------------------------------------------------------
def color_limits(
    values: np.ndarray, *, signed: bool, vmin: float | None = None, vmax: float | None = None
) -> tuple[float, float]:
    """Colour limits: symmetric around 0 for signed values, ``[0, max]`` (or data range) otherwise.

    ``vmin``/``vmax`` override; for signed values, giving one of them mirrors it to the other.
    """
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if signed:
        if vmin is None and vmax is None:
            m = float(np.abs(finite).max()) if finite.size else 1.0
            m = m if m > 0 else 1.0
            return -m, m
        if vmin is None:
            return -abs(float(vmax)), float(vmax)
        if vmax is None:
            return float(vmin), abs(float(vmin))
        return float(vmin), float(vmax)
    lo = 0.0 if not finite.size or finite.min() >= 0 else float(finite.min())
    hi = float(finite.max()) if finite.size else 1.0
    if hi <= lo:
        hi = lo + 1.0
    return (lo if vmin is None else float(vmin)), (hi if vmax is None else float(vmax))


def is_signed(values: np.ndarray) -> bool:
    """Whether ``values`` has negative entries (→ diverging colour map centred at 0)."""
    v = np.asarray(values, dtype=np.float64)
    return bool(np.nanmin(v) < 0) if v.size else False


# -- layout -----------------------------------------------------------------------------------------------------
def text_size_in(texts: Sequence[str], fontsize: float | str | None = None) -> tuple[float, float]:
    """``(max width, max height)`` in inches of ``texts`` rendered horizontally at ``fontsize``."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    prop = FontProperties(size=fontsize)
    conv = TextToPath()
    w = h = 0.0
    for t in texts:
        if not t:
            continue
        tw, th, _ = conv.get_text_width_height_descent(str(t), prop, ismath=False)
        w, h = max(w, tw), max(h, th)
    if h == 0:
        h = prop.get_size_in_points()
    return w / 72.0, h / 72.0


def fontsize_pt(size: float | str | None = None) -> float:
    """A font size (number or name such as ``"medium"``) in points."""
    from matplotlib.font_manager import FontProperties

    return float(FontProperties(size=size).get_size_in_points())


def wrap_label(text: str, length_in: float, fontsize: float) -> str:
    """Wrap ``text`` into lines no longer than ``length_in`` inches (estimated at 0.55 em per character)."""
    chars = max(12, int(length_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.wrap(text, chars)) or text


def side_axes(ax: Axes, side: str, offset_in: float, size_in: float, *, length_in: float | None = None,
              label: str = "") -> Axes:
    """An axes glued to a side of ``ax`` (an inset outside it), ``offset_in`` away, ``size_in`` thick.

    ``length_in`` shortens it along the side (centred); the default spans the whole side. It follows ``ax`` when
    the layout changes.
    """
    fig = ax.get_figure()
    pos = ax.get_position()
    fw, fh = fig.get_size_inches()
    w_in, h_in = pos.width * fw, pos.height * fh
    if side in ("right", "left"):
        length = 1.0 if length_in is None else min(length_in / h_in, 1.0)
        y0 = (1 - length) / 2
        x0 = 1 + offset_in / w_in if side == "right" else -(offset_in + size_in) / w_in
        bounds = [x0, y0, size_in / w_in, length]
    else:
        length = 1.0 if length_in is None else min(length_in / w_in, 1.0)
        x0 = (1 - length) / 2
        y0 = 1 + offset_in / h_in if side == "top" else -(offset_in + size_in) / h_in
        bounds = [x0, y0, length, size_in / h_in]
    child = ax.inset_axes(bounds)
    child.set_label(label)
    return child


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A pyplot figure (so that ``plt.show()`` shows it), without a layout engine."""
    import matplotlib.pyplot as plt

    return plt.figure(figsize=figsize)


def finish(fig: Figure, axes: Any, *, ax_given: bool, show: bool | None, return_fig: bool):
    """Show and return like scanpy.

    ``show=None`` shows only when nothing is returned and no ``ax`` was given. ``return_fig=True`` returns the
    Figure; otherwise, when not shown, the axes (an Axes, a list, or a dict of named axes) are returned; a shown
    plot returns ``None``.
    """
    import matplotlib.pyplot as plt

    if show is None:
        show = not return_fig and not ax_given
    if show:
        plt.show()
    if return_fig:
        return fig
    if not show:
        return axes
    return None


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise a :class:`ValueError` naming the allowed values when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")
