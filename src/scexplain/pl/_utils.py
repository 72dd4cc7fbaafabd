"""Shared plumbing of the plots: argument checks, colour limits, label sizes, show/return logic.

Results are read by :mod:`scexplain._results`; nothing here imports matplotlib at module level, so that
``import scexplain`` stays light.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._results import ResultNotFoundError, StoredResult, get_result

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ResultNotFoundError",
    "StoredResult",
    "check_choice",
    "check_groups",
    "check_positive_int",
    "color_limits",
    "finish",
    "get_result",
    "is_signed",
    "text_width_in",
    "top_features",
    "wrap_label",
]


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise a :class:`ValueError` naming the allowed values when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int; a :class:`ValueError` unless it is a positive integer."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)


def check_groups(table: pd.DataFrame, groups: Sequence[str] | str | None, what: str) -> list[str]:
    """The chosen columns of ``table`` (all when ``groups`` is ``None``), or a :class:`ValueError` naming them."""
    available = [str(c) for c in table.columns]
    if groups is None:
        return available
    chosen = [groups] if isinstance(groups, str) else [str(g) for g in groups]
    if not chosen:
        raise ValueError(f"`groups` is empty; pick at least one of {available}.")
    missing = [g for g in chosen if g not in available]
    if missing:
        raise ValueError(f"{what} {missing} not found; available: {available}.")
    return chosen


def top_features(column: pd.Series, n: int, *, by_abs: bool = False) -> list[str]:
    """The ``n`` features with the highest value (or absolute value) of ``column``, stable on ties."""
    s = column.to_numpy(dtype=np.float64)
    key = np.abs(s) if by_abs else s
    key = np.where(np.isfinite(key), key, -np.inf)
    order = np.lexsort((np.arange(len(s)), -key))
    return [str(column.index[i]) for i in order[:n]]


def is_signed(values: np.ndarray) -> bool:
    """Whether ``values`` has negative entries (→ diverging colour map centred at 0)."""
    v = np.asarray(values, dtype=np.float64)
    return bool(np.nanmin(v) < 0) if v.size else False


def color_limits(
    values: np.ndarray, *, signed: bool, vmin: float | None = None, vmax: float | None = None
) -> tuple[float, float]:
    """Colour limits: symmetric around 0 for signed values, ``[0, max]`` (or the data range) otherwise.

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


def text_width_in(texts: Sequence[str], fontsize: float | str | None = None) -> float:
    """Width in inches of the widest of ``texts`` rendered horizontally at ``fontsize``."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    prop = FontProperties(size=fontsize)
    conv = TextToPath()
    widths = [conv.get_text_width_height_descent(str(t), prop, ismath=False)[0] for t in texts if t]
    return max(widths, default=0.0) / 72.0


def wrap_label(text: str, chars: int) -> str:
    """``text`` wrapped into lines of at most ``chars`` characters."""
    return "\n".join(textwrap.wrap(text, max(int(chars), 8))) or text


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
    return None if show else axes
