"""DeepLIFT multipliers of a chain of single-input layers, without autograd.

Most models over genes end in a chain: ``Linear`` layers, per-column affine maps (batch norm in eval mode,
scaling, shifts), elementwise nonlinearities (rescale rule) and identities (dropout in eval mode). Along such a
chain the multiplier of output ``c`` is a product of local maps, and reverse-mode autograd batched over the ``C``
explained outputs materialises a ``C × P × width`` tensor at every layer (``P`` pairs). Here the multipliers
are propagated with the structure kept:

* from the output back to the first nonlinearity they do not depend on the pair: ``C × width`` per cell;
* after an elementwise rescale ``r`` (``P × width``) they are ``r ⊙ B`` and stay factored through further
  per-column maps;
* the next ``Linear`` layer ``W`` turns ``r ⊙ B`` into a dense ``P × C × width'`` tensor with one GEMM,
  ``r @ (B[c, :, None] · W)``: the widest layers near the output never exist per pair and per output.

:class:`ChainTape` is filled by :class:`~scexplain.engines._deeplift_rules.DeepLiftMode` during the forward
pass (one local map per op with a single varying input); :func:`chain_multipliers` walks it from the output
back to the tap and returns ``None`` when the path from the tap to the output is not such a chain (the engine
then uses autograd). Both give the same numbers up to rounding.

Distinct rows: when no per-pair input (covariates held at the cell's values) enters after the first layer, the
cells' half of every layer is the plain forward pass of the cells and the background half that of the background
cells, so the first-layer shortcut of :mod:`.deeplift` runs the whole chain on the ``n + B`` distinct rows and
records it as :class:`DistinctStep` s. :class:`DistinctMultipliers` then builds the multipliers of a few
background cells at a time from those rows (the rescale multiplier of a pair is
``(h(z_i) − h(z_b)) / (z_i − z_b)`` of the two rows): no tensor over all pairs exists at any layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from ._deeplift_rules import secant_of

__all__ = ["ChainTape", "DistinctMultipliers", "DistinctStep", "TapMultipliers", "chain_multipliers"]

Tensor = torch.Tensor

#: longest chain followed (a guard against cycles through tensors reused in place)
_MAX_STEPS = 10_000


@dataclass(frozen=True)
class _Step:
    """``out = map(source)`` for one op.

    ``matrix``: ``out = source @ W.T`` (``W``: out × in); ``scale``: ``out = a ⊙ source`` (+ constants) with
    ``a`` of shape ``1 × width`` (per column) or ``P × width`` (per pair); ``columns``: ``out[:, data] = source``
    (a slice; the other columns are constants); ``identity``: ``out = source``.
    """

    source: Tensor
    kind: str
    data: Tensor | slice | None


class ChainTape:
    """Local linear maps of the ops with one varying input, keyed by their varying (``2P``-row) output."""

    def __init__(self, n_pairs: int):
        self.n_pairs = n_pairs
        self.broken = False
        self._steps = WeakTensorKeyDictionary()

    def matrix(self, out: Tensor, source: Tensor, weight: Tensor) -> None:
        """``out = source @ weight.T + constants`` (``weight``: out width × in width)."""
        if _is_matrix(source) and _is_matrix(out) and weight.dim() == 2 and weight.shape == (
                out.shape[1], source.shape[1]):
            self._add(out, _Step(source, "matrix", weight.detach()))

    def scale(self, out: Tensor, source: Tensor, a: Tensor) -> None:
        """``out = a ⊙ source + constants``, ``a`` of shape ``1 × width`` or ``P × width``."""
        if (_is_matrix(source) and out.shape == source.shape and a.dim() == 2
                and a.shape[0] in (1, self.n_pairs) and a.shape[1] == source.shape[1]):
            self._add(out, _Step(source, "scale", a.detach()))

    def columns(self, out: Tensor, source: Tensor, start: int) -> None:
        """``out[:, start : start + width] = source`` and the other columns are constants (a concatenation)."""
        if _is_matrix(source) and _is_matrix(out) and 0 <= start and start + source.shape[1] <= out.shape[1]:
            self._add(out, _Step(source, "columns", slice(start, start + source.shape[1])))

    def identity(self, out: Tensor, source: Tensor) -> None:
        """``out`` has the values of ``source`` (a copy, a no-op reshape, dropout in eval mode)."""
        if _is_matrix(source) and out.shape == source.shape:
            self._add(out, _Step(source, "identity", None))

    def written(self) -> None:
        """A varying tensor was modified in place: keys no longer name values; follow nothing."""
        self.broken = True

    def _add(self, out: Tensor, step: _Step) -> None:
        if out is not step.source:
            self._steps[out] = step

    def path(self, out: Tensor, tap: Tensor) -> list[_Step] | None:
        """The steps from ``out`` back to ``tap`` (output end first), or ``None`` if there is no chain."""
        if self.broken:
            return None
        steps, node = [], out
        while node is not tap:
            step = self._steps.get(node) if isinstance(node, Tensor) else None
            if step is None or len(steps) > _MAX_STEPS:
                return None
            steps.append(step)
            node = step.source
        return steps


def _is_matrix(t) -> bool:
    return isinstance(t, Tensor) and t.dim() == 2


def chain_multipliers(tape: ChainTape, out: Tensor, tap: Tensor, classes: Tensor, n_bg: int
                      ) -> TapMultipliers | None:
    """Multipliers of the explained outputs with respect to the cells' half of ``tap``, or ``None``.

    Parameters
    ----------
    tape
        Filled during the forward pass on ``P = n_bg · n`` pairs ordered background-major (``p = b · n + i``).
    out, tap
        The varying ``2P``-row output (``2P × outputs``) and tap (``2P × width``) tensors.
    classes
        ``n × C`` output indices explained for each cell.

    Returns
    -------
    :class:`TapMultipliers` (``n_bg × n × C × width``: ``d out[(b, i), classes[i, c]] / d tap[(b, i)]``).
    """
    if not (_is_matrix(out) and _is_matrix(tap)):
        return None
    steps = tape.path(out, tap)
    if steps is None:
        return None
    n, n_classes = classes.shape
    shared = bool((classes == classes[:1]).all())
    rows = classes[:1] if shared else classes
    onehot = torch.zeros(rows.shape[0], n_classes, out.shape[1], dtype=out.dtype, device=out.device)
    state = TapMultipliers(n_bg=n_bg, n_cells=n, per_cell=onehot.scatter_(2, rows.unsqueeze(2), 1.0))
    with torch.no_grad():
        for step in steps:
            state.back(step)
    return state


@dataclass
class TapMultipliers:
    """Multipliers ``n_bg × n × C × width`` in a factored form, built block by block of background cells.

    The form is ``B`` alone (the same for every pair of a cell: ``per_cell``, ``1 × C × w`` when all cells
    explain the same outputs, else ``n × C × w``), ``r ⊙ B`` (``r``: ``P × w``) or ``dense``, followed by a
    ``tail`` of steps not applied yet: a ``Linear`` layer that widens the multipliers (``10 → 128`` from a latent
    space back to a hidden layer) is applied per block of background cells, with what comes after it, so that
    the widest tensor never exists for all pairs at once.
    """

    n_bg: int
    n_cells: int
    per_cell: Tensor | None = None
    r: Tensor | None = None
    dense: Tensor | None = None
    tail: list[_Step] = field(default_factory=list)

    def block(self, b0: int, b1: int) -> Tensor:
        """Background cells ``b0:b1``: a contiguous ``(b1 − b0) × n × C × width`` tensor."""
        if self.dense is not None:
            t = self.dense[b0:b1]
        elif self.r is not None:
            t = self._pairs(self.r)[b0:b1] * self.per_cell.unsqueeze(0)
        else:
            t = self.per_cell.unsqueeze(0)
        for step in self.tail:
            t = self._apply(t, step, b0, b1)
        return t.expand(b1 - b0, self.n_cells, -1, -1).contiguous()

    def materialise(self) -> Tensor:
        """All pairs: ``n_bg × n × C × width``."""
        return self.block(0, self.n_bg)

    def _pairs(self, a: Tensor) -> Tensor:
        return a.reshape(self.n_bg, self.n_cells, 1, -1)

    def _apply(self, t: Tensor, step: _Step, b0: int, b1: int) -> Tensor:
        if step.kind == "matrix":
            return t @ step.data
        if step.kind == "columns":
            return t[..., step.data]
        a = step.data
        return t * (a.reshape(1, 1, 1, -1) if a.shape[0] == 1 else self._pairs(a)[b0:b1])

    def back(self, step: _Step) -> None:
        """Go back through one step (from the output towards the tap)."""
        if step.kind == "identity":
            return
        widens = step.kind == "matrix" and step.data.shape[1] > step.data.shape[0]
        if self.tail:
            if step.kind == "matrix" and not widens:
                self._settle()
            else:
                self.tail.append(step)
                return
        elif widens and (self.dense is not None or self.r is not None):
            self.tail.append(step)
            return
        if step.kind == "scale":
            self._scale(step.data)
        elif step.kind == "columns":
            self._columns(step.data)
        else:
            self._matrix(step.data)

    def _settle(self) -> None:
        """Apply the tail to all pairs (before a layer that narrows the multipliers again)."""
        self.dense = self.materialise()
        self.per_cell = self.r = None
        self.tail = []

    def _scale(self, a: Tensor) -> None:
        if self.dense is not None:
            shape = (1, 1, 1, -1) if a.shape[0] == 1 else (self.n_bg, self.n_cells, 1, -1)
            self.dense.mul_(a.reshape(shape))  # dense tensors are always this class's own results
        elif a.shape[0] == 1:
            self.per_cell = self.per_cell * a.unsqueeze(0)
        else:
            self.r = a if self.r is None else self.r * a

    def _columns(self, columns: slice) -> None:
        if self.dense is not None:
            self.dense = self.dense[..., columns].contiguous()
        else:
            self.per_cell = self.per_cell[..., columns]
            self.r = None if self.r is None else self.r[:, columns]

    def _matrix(self, w: Tensor) -> None:
        if self.dense is not None:
            self.dense = self.dense @ w
        elif self.r is None:
            self.per_cell = self.per_cell @ w
        else:  # r ⊙ B through W: one GEMM per distinct B (one when all cells explain the same outputs)
            b = self.per_cell
            n_rows, n_classes, d_out = b.shape
            d_in = w.shape[1]
            combined = (b.unsqueeze(3) * w).permute(0, 2, 1, 3).reshape(n_rows, d_out, n_classes * d_in)
            r = self.r.reshape(self.n_bg, self.n_cells, d_out)
            if n_rows == 1:
                dense = r @ combined[0]
            else:
                dense = torch.einsum("bik,ikj->bij", r, combined)
            self.dense = dense.reshape(self.n_bg, self.n_cells, n_classes, d_in)
            self.r = self.per_cell = None


# --- chains on distinct rows ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistinctStep:
    """One layer of a chain evaluated on the distinct rows (``n`` cells, then ``B`` background cells).

    ``kind``: ``"matrix"`` (``out = source @ data.T``, ``data``: out × in), ``"scale"`` (``out = data ⊙ source``
    + constants, ``data`` of the layer's width) or ``"secant"`` (``y = fn(z)`` elementwise, ``z`` and ``y`` its
    input and output on the distinct rows; ``piecewise_linear`` as for
    :func:`~scexplain.engines._deeplift_rules.secant`).
    """

    kind: str
    data: Tensor | None = None
    z: Tensor | None = None
    y: Tensor | None = None
    fn: Callable[[Tensor], Tensor] | None = None
    piecewise_linear: bool = False


class DistinctMultipliers:
    """Multipliers ``n_bg × n × C × width`` at the start of a chain of :class:`DistinctStep` s, block by block.

    Parameters
    ----------
    steps
        From the tap (the chain's input) to the output.
    classes
        ``n × C`` output indices explained for each cell.
    n_out
        Width of the output.
    n_cells, n_bg, dtype
        The distinct rows are ``n_cells`` cells, then ``n_bg`` background cells.

    The part of the walk from the output back to its last nonlinearity does not depend on the pair and is done
    once (per cell, or once for all cells when they explain the same outputs); :meth:`block` does the rest for a
    few background cells at a time.
    """

    def __init__(self, steps: list[DistinctStep], classes: Tensor, n_out: int, n_cells: int, n_bg: int,
                 dtype: torch.dtype):
        self.n_cells, self.n_bg = n_cells, n_bg
        n_classes = classes.shape[1]
        rows = classes[:1] if bool((classes == classes[:1]).all()) else classes
        head = torch.zeros(rows.shape[0], n_classes, n_out, dtype=dtype, device=classes.device)
        head.scatter_(2, rows.unsqueeze(2), 1.0)
        rest = list(steps)
        with torch.no_grad():
            while rest and rest[-1].kind != "secant":
                head = _step_back(head, rest.pop())
        self.head = head  # rows × C × width at the output of the last nonlinearity
        self.rest = rest

    @property
    def constant(self) -> bool:
        """Whether the chain has no nonlinearity: the multipliers are :attr:`head` for every pair."""
        return not self.rest

    def block(self, b0: int, b1: int) -> Tensor:
        """Background cells ``b0:b1``: a contiguous ``(b1 − b0) × n × C × width`` tensor."""
        t = self.head.unsqueeze(0)
        with torch.no_grad():
            for step in reversed(self.rest):
                if step.kind == "secant":
                    t = t * self._secant(step, b0, b1).unsqueeze(2)
                else:
                    t = _step_back(t, step)
        return t.expand(b1 - b0, self.n_cells, -1, -1).contiguous()

    def materialise(self) -> Tensor:
        """All pairs: ``n_bg × n × C × width``."""
        return self.block(0, self.n_bg)

    def _secant(self, step: DistinctStep, b0: int, b1: int) -> Tensor:
        """Rescale multipliers of background cells ``b0:b1`` with every cell: ``(b1 − b0) × n × width``."""
        n = self.n_cells
        # the op sees a matrix with one row per pair (those that need its derivative), as in the model
        return secant_of(step.fn, step.z[:n].unsqueeze(0), step.z[n + b0 : n + b1].unsqueeze(1),
                         step.y[:n].unsqueeze(0), step.y[n + b0 : n + b1].unsqueeze(1),
                         piecewise_linear=step.piecewise_linear, rows=2)


def _step_back(t: Tensor, step: DistinctStep) -> Tensor:
    """Multipliers at a linear step's output to its input (``t``: ``... × out width``)."""
    if step.kind == "matrix":
        return t @ step.data
    return t * step.data
