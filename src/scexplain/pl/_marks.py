"""Marks on plotted (group, gene) values: scores that come mostly from absence, and unstable ranks.

Both marks concern the genes a result ranks among a group's top ``n_top`` by mean attribution (``n_top`` of the
result's bootstrap, 20 without one): those are the genes a reader takes for "the group's genes".

- **Absence** (hatch ``////``): the part of the group's mean that comes from genes *below* the reference is larger
  in magnitude than the part from genes above it (``|absence| > |presence|``). A hatch keeps the cell's (or dot's,
  or bar's) colour readable, so the value and the mark are read together; it needs no colour (the colour channel
  already carries the value) and survives greyscale printing and colour-blind viewing. The same hatch is used in
  every plot.
- **Unstable** (a ``?`` in the cell's corner): the gene is among the group's top ``n_top`` in fewer than
  ``threshold`` of the bootstrap replicates (``rank_stability``).

Without the top-``n_top`` restriction most cells of a heatmap would be marked: a gene a group does not express is
absence-driven there almost always, and carries no weight; marking it says nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._keys import Key
from ._utils import StoredResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["ABSENCE_HATCH", "Marks", "absence_driven", "contrast_color", "resolve_marks"]

ABSENCE_HATCH = "////"
UNSTABLE_MARKER = r"$\mathbf{?}$"
DEFAULT_N_TOP = 20


def contrast_color(rgba: np.ndarray) -> np.ndarray:
    """Per colour (``... × 4`` RGBA), a mark colour that stands out on it: near-black on light, white on dark."""
    rgb = np.asarray(rgba, dtype=np.float64)[..., :3]
    lin = np.where(rgb <= 0.03928, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    luminance = lin @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(luminance[..., None] > 0.3, np.array([0.1, 0.1, 0.1, 1.0]), np.array([1.0, 1.0, 1.0, 1.0]))


def absence_driven(mean: pd.DataFrame, presence: pd.DataFrame) -> pd.DataFrame:
    """``True`` where the part of ``mean`` from absence outweighs the part from presence (``|m − p| > |p|``)."""
    return (mean - presence).abs() > presence.abs()


def n_top_of(res: StoredResult) -> int:
    """The ``n_top`` of the result's rank stability (its bootstrap parameters), else 20."""
    boot = res.params.get("bootstrap")
    n = boot.get("n_top") if hasattr(boot, "get") else None
    return int(n) if n is not None else DEFAULT_N_TOP


def featured(mean: pd.DataFrame, n_top: int) -> pd.DataFrame:
    """``True`` where a feature is among its group's top ``n_top`` by mean (ties in feature order)."""
    return mean.rank(ascending=False, method="first") <= n_top


@dataclass
class Marks:
    """Which plotted values carry a mark: ``groups × features`` boolean frames (``None``: that mark is off)."""

    absence: pd.DataFrame | None = None
    unstable: pd.DataFrame | None = None
    n_top: int = DEFAULT_N_TOP
    threshold: float = 0.5

    def on(self, select) -> Marks:
        """The marks with ``select`` (features × groups → the plotted frame) applied to each frame."""
        return replace(self, **{name: None if getattr(self, name) is None else select(getattr(self, name))
                                for name in ("absence", "unstable")})

    def legend_handles(self, face="0.8") -> list:
        """Legend entries explaining the marks that are on."""
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        out = []
        if self.absence is not None:
            hatch_color = contrast_color(np.asarray(_rgba(face)))
            out.append(Patch(facecolor=face, edgecolor="0.4", linewidth=0.5, hatch=ABSENCE_HATCH,
                             hatchcolor=hatch_color, label="score mostly from\nabsence (gene below\nthe reference)"))
        if self.unstable is not None:
            out.append(Line2D([], [], linestyle="none", marker=UNSTABLE_MARKER, markersize=8, color="0.1",
                              label=f"unstable: in top {self.n_top}\nin < {self.threshold:.0%} of\nbootstraps"))
        return out


def _rgba(color) -> tuple:
    from matplotlib.colors import to_rgba

    return to_rgba(color)


def resolve_marks(
    res: StoredResult,
    groupby: str,
    *,
    applicable: bool,
    mark_absence: bool | None,
    mark_unstable: bool | None,
    stability_threshold: float,
) -> Marks:
    """The marks of a plot of ``res``'s mean table over ``groupby``: features × groups frames (all features).

    ``None`` turns a mark on when the result stores what it needs; ``True`` requires it (a clear error when
    missing); ``False`` turns it off. ``applicable`` is ``False`` for plots of other values than the signed mean
    (``mean_abs``, latent dimensions), which the marks do not describe.
    """
    for name, value in (("mark_absence", mark_absence), ("mark_unstable", mark_unstable)):
        if value not in (None, True, False):
            raise TypeError(f"`{name}` must be None (when stored), True or False, got {value!r}.")
    if isinstance(stability_threshold, bool) or not isinstance(stability_threshold, int | float) \
            or not 0 < stability_threshold <= 1:
        raise ValueError(f"`stability_threshold` must be a fraction in (0, 1], got {stability_threshold!r}.")
    if not applicable and (mark_absence or mark_unstable):
        raise ValueError("The marks describe the signed mean attribution per group: use values='mean' (and no "
                         "`latent`) with `mark_absence`/`mark_unstable`, or leave them at None.")
    marks = Marks(n_top=n_top_of(res), threshold=float(stability_threshold))
    if not applicable:
        return marks
    stored = groupby == res.stored_groupby
    want_absence = mark_absence if mark_absence is not None else stored and res.has_table(Key.table.presence)
    want_unstable = mark_unstable if mark_unstable is not None else stored and res.has_table(Key.table.rank_stability)
    if not (want_absence or want_unstable):
        return marks
    mean = res.group_table(groupby, Key.table.mean)
    top = featured(mean, marks.n_top)
    if want_absence:
        marks.absence = absence_driven(mean, res.group_table(groupby, Key.table.presence)) & top
    if want_unstable:
        marks.unstable = (res.group_table(groupby, Key.table.rank_stability) < marks.threshold) & top
    return marks


def hatch_cells(ax: Axes, mask: np.ndarray, colors: np.ndarray) -> None:
    """Hatch the cells (rows × columns, unit squares from the origin) where ``mask`` is true."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    rows, cols = np.nonzero(mask)
    if not len(rows):
        return
    patches = [Rectangle((c, r), 1, 1) for r, c in zip(rows, cols, strict=True)]
    pc = PatchCollection(patches, facecolor="none", edgecolor="none", linewidth=0, hatch=ABSENCE_HATCH,
                         hatchcolor=contrast_color(colors[rows, cols]), zorder=3, label="absence_marks")
    ax.add_collection(pc)


def hatch_dots(ax: Axes, dots, mask: np.ndarray) -> None:
    """Hatch the dots of the scatter ``dots`` (drawn row by row) where the flat ``mask`` is true."""
    keep = np.flatnonzero(mask)
    if not len(keep):
        return
    sizes = np.broadcast_to(dots.get_sizes(), mask.shape)[keep]
    colors = np.asarray(dots.get_facecolors())
    colors = np.broadcast_to(colors, (len(mask), 4))[keep] if len(colors) else np.ones((len(keep), 4))
    ax.scatter(*dots.get_offsets()[keep].T, s=sizes, facecolor="none", edgecolor="none", linewidths=0,
               hatch=ABSENCE_HATCH, hatchcolor=contrast_color(colors), zorder=dots.get_zorder() + 1,
               label="absence_marks")


def question_marks(ax: Axes, mask: np.ndarray, colors: np.ndarray | None) -> None:
    """A ``?`` in the upper right corner of the cells where ``mask`` is true (on ``colors``, or on white)."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return
    color = contrast_color(colors[rows, cols]) if colors is not None else "0.1"
    ax.scatter(cols + 0.82, rows + 0.26, marker=UNSTABLE_MARKER, s=55, c=color, linewidths=0, zorder=4,
               label="unstable_marks")
