"""DeepLIFT rules for torch ops, applied by a :class:`~torch.overrides.TorchFunctionMode` to a batch of pairs.

The model runs on a doubled batch: rows ``r`` and ``r + P`` of every tensor derived from the input are partners
(a cell and one background cell). Every rule is written in a straight-through style, without custom autograd:
the forward value is the exact one, and the gradient is the DeepLIFT multiplier, e.g. for an elementwise
``y = h(z)`` (on the cells' half of the batch, see below)::

    y.detach() + m.detach() * (z - z.detach())   # value h(z), d y / d z = m

with ``m = (h(z) - h(z_partner)) / (z - z_partner)`` shared by both partners ("rescale"). Products of two varying
tensors use the Shapley split ``Δ(ab) = b̄·Δa + ā·Δb`` (bars: pair means); softmax, log-softmax and logsumexp are
shift (a constant shared by both partners), exp, sum and divide; layer norm and RMS norm are mean, shift, square,
rsqrt and products; max and max-pooling route ``Δmax`` through the positions that are the maximum in either
partner. Linear ops keep their own gradient. An op without a rule that touches a varying tensor is computed
normally and its name recorded in :attr:`DeepLiftMode.unruled`.

"Varying" means derived from the explained input: the mode tracks such tensors itself (parameters that require
grad are constants).
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch._ops import OpOverload, OpOverloadPacket
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.weak import WeakTensorKeyDictionary

__all__ = [
    "DIVISION", "Call", "DeepLiftMode", "Paired", "first_tensor", "inplace_base", "inplace_target", "is_metadata",
    "linear_layer", "op_name", "secant_of", "training_flag",
]

Tensor = torch.Tensor

# --- op tables (by normalised name: torch.exp, Tensor.exp and F-functions share a name) ----------------------

#: elementwise functions of one varying tensor: rescale rule (other arguments are constants)
ELEMENTWISE = frozenset(
    """relu leaky_relu elu selu celu gelu silu mish sigmoid tanh softplus exp exp2 log log2 log10 log1p expm1 sqrt
    rsqrt reciprocal square pow float_power abs absolute hardtanh relu6 hardsigmoid hardswish log_sigmoid logsigmoid
    softsign sin cos tan atan arctan asinh arcsinh sinh cosh erf erfc clamp clip clamp_min clamp_max threshold rrelu
    prelu tanhshrink softshrink hardshrink sign sgn floor ceil round trunc frac logit nan_to_num maximum minimum fmax
    fmin div divide true_divide rdiv rpow""".split()
)
#: bilinear in their two tensor operands: product rule when both vary, linear when one does
BILINEAR = frozenset("mul multiply matmul mm bmm mv dot inner outer einsum".split())
#: linear maps (gradient = multiplier); batch_norm and dropout only in eval mode
LINEAR = frozenset(
    """linear addmm addmv addbmm baddbmm tensordot vdot kron conv1d conv2d conv3d conv_transpose1d conv_transpose2d
    conv_transpose3d convolution batch_norm dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
    native_batch_norm_legit_no_training slice index alias copy lift_fresh_copy unsafe_view avg_pool1d avg_pool2d
    avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d pad constant_pad_nd
    interpolate upsample upsample_nearest1d upsample_nearest2d upsample_nearest3d upsample_linear1d
    upsample_bilinear2d upsample_trilinear3d pixel_shuffle pixel_unshuffle channel_shuffle fold unfold add sub
    subtract rsub neg negative positive sum nansum mean nanmean cumsum diff trace lerp view view_as reshape
    reshape_as flatten unflatten ravel squeeze unsqueeze transpose t permute movedim moveaxis swapaxes swapdims expand
    expand_as broadcast_to broadcast_tensors repeat repeat_interleave tile contiguous clone narrow narrow_copy select
    index_select gather take take_along_dim masked_select __getitem__ __setitem__ split split_with_sizes
    tensor_split chunk unbind hsplit vsplit cat concat concatenate stack hstack vstack dstack column_stack row_stack
    where masked_fill masked_scatter index_put index_add index_copy index_fill scatter scatter_add copy_ type_as to
    type float double half bfloat16 cpu cuda flip fliplr flipud roll rot90 diag diagonal diag_embed diagflat tril
    triu as_strided real requires_grad_ retain_grad zero_ fill_ .T .mT .H .mH .real""".split()
)
#: the output does not depend on the input's values (or deliberately carries no gradient): not varying
#: ops that read only a tensor's metadata (shape, dtype, device), never its values
METADATA = frozenset(
    """zeros_like ones_like empty_like full_like rand_like randn_like randint_like new_zeros new_ones new_empty
    new_full dim size numel ndimension nelement stride is_contiguous is_floating_point is_complex element_size
    get_device __len__ sym_size sym_numel sym_stride sym_storage_offset assert_tensor_metadata assert_async
    assert_scalar functional_assert_async""".split()
)
#: attributes holding values (``x.shape``, ``x.dtype``, ... are metadata)
VALUE_ATTRIBUTES = frozenset(".T .mT .H .mH .real .imag .data".split())
CONSTANT_RESULT = METADATA | frozenset("detach detach_ new_tensor .data".split())
#: comparisons: with one varying operand, their result is a mask, a step function of it (see ``where``)
COMPARISONS = frozenset("gt ge lt le eq ne greater greater_equal less less_equal not_equal".split())
#: ops that select between values by a mask (``where(mask, a, b)``, ``masked_fill(x, mask, v)``)
SELECTIONS = frozenset({"where", "masked_fill"})


def is_metadata(name: str) -> bool:
    """Whether an op (or attribute) reads only metadata."""
    return name in METADATA or (name.startswith(".") and name not in VALUE_ATTRIBUTES)
#: elementwise maps made of linear pieces: their secant has no cancellation, only Δz = 0 needs the derivative
PIECEWISE_LINEAR = frozenset(
    """relu leaky_relu hardtanh relu6 abs absolute clamp clip clamp_min clamp_max threshold rrelu prelu maximum
    minimum fmax fmin softshrink hardshrink sign sgn floor ceil round trunc""".split()
)
SOFTMAX = frozenset("softmax log_softmax softmin logsumexp".split())
#: normalisations over the last dims: name → positional order of (weight, bias, eps) after (input, normalized_shape)
NORMS = {"layer_norm": ("weight", "bias", "eps"), "rms_norm": ("weight", "eps"),
         "native_layer_norm": ("weight", "bias", "eps")}
MAX_POOL = re.compile(r"^(adaptive_)?max_pool([123])d(_with_indices)?$")
REDUCE_MAX = frozenset("max min amax amin".split())
#: name → (position of the ``training`` flag, its default)
TRAINING_ARG = {"batch_norm": (5, False), "dropout": (2, True), "dropout1d": (2, True), "dropout2d": (2, True),
                "dropout3d": (2, True), "alpha_dropout": (2, False), "feature_alpha_dropout": (2, False)}

_DUNDER = {
    "__add__": "add", "__radd__": "add", "__iadd__": "add_", "__sub__": "sub", "__rsub__": "rsub",
    "__isub__": "sub_", "__mul__": "mul", "__rmul__": "mul", "__imul__": "mul_", "__truediv__": "div",
    "__rtruediv__": "rdiv", "__div__": "div", "__rdiv__": "rdiv", "__itruediv__": "div_", "__idiv__": "div_",
    "__pow__": "pow", "__rpow__": "rpow", "__ipow__": "pow_", "__matmul__": "matmul", "__rmatmul__": "matmul",
    "__neg__": "neg", "__pos__": "positive", "__abs__": "abs", "__gt__": "gt", "__ge__": "ge", "__lt__": "lt",
    "__le__": "le", "__eq__": "eq", "__ne__": "ne", "__invert__": "logical_not",
}

#: ATen operators (as torch.export graphs call them) whose torch-level op has another name
_ATEN: dict[str, str] = {"_to_copy": "to", "_unsafe_view": "view", "alias": "view", "lift_fresh_copy": "clone"}


def op_name(func: Callable) -> str:
    """Normalised name of a torch function: ``torch.exp``, ``Tensor.exp`` → ``"exp"``; ``x.T`` → ``".T"``.

    ATen operators (``torch.ops.aten.exp.default``, as the graphs of ``torch.export`` programs call them) get
    the name of their operator without the overload (``"exp"``), or the torch-level op they are
    (``aten._to_copy`` → ``"to"``).
    """
    if isinstance(func, OpOverload | OpOverloadPacket):
        name = (func._schema.name if isinstance(func, OpOverload) else func._qualified_op_name).split("::")[-1]
        return _ATEN.get(name, name.lstrip("_"))
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":
        return "." + str(getattr(getattr(func, "__self__", None), "__name__", "?"))
    if name.startswith("_") and not name.startswith("__"):  # F.threshold is torch._C._nn._threshold, ...
        name = name[1:]
    return _DUNDER.get(name, name)


# --- pairs ------------------------------------------------------------------------------------------------------
#
# Only the explained cells' half of the batch (rows < P) ever needs a gradient: multipliers are detached and rows
# never mix, so every rule gives the background half its plain value and no gradient, and works on the cells' half
# directly (``Paired.x``) rather than on a slice of the full tensor: the backward pass never touches the background
# half (no zero-filled gradients, half the matrix products).


@dataclass
class Paired:
    """A varying tensor of ``2P`` rows: ``full`` its detached values, ``x`` its first ``P`` rows with gradient."""

    x: Tensor
    full: Tensor


#: a rule's result: (the cells' half, with gradient; the background half, without)
Halves = tuple[Tensor, Tensor]


def _joined(h: Halves) -> Paired:
    return Paired(h[0], torch.cat([h[0].detach(), h[1]]))


def _finite(t: Tensor) -> Tensor:
    return torch.where(torch.isfinite(t), t, torch.zeros((), dtype=t.dtype, device=t.device))


def tiny(dtype: torch.dtype) -> float:
    """Relative ``|Δz|`` under which the rescale rule uses the derivative at the pair's midpoint (eps^(1/3))."""
    return float(torch.finfo(dtype).eps) ** (1.0 / 3.0)


def _derivative(fn: Callable[[Tensor], Tensor], z: Tensor) -> Tensor:
    """Elementwise ``h'(z)``: reverse mode when ``fn`` keeps the shape, else forward mode (broadcasting ``fn``)."""
    with torch.enable_grad():
        t = z.detach().requires_grad_(True)
        y = fn(t)
        if y.shape == t.shape:
            (d,) = torch.autograd.grad(y, t, torch.ones_like(y), allow_unused=True)
            return torch.zeros_like(y) if d is None else d
    with warnings.catch_warnings():  # torch's jvp decompositions still use the deprecated torch.jit.script
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.func.jvp(fn, (z,), (torch.ones_like(z),))[1]


def graft(value: Tensor, carrier_x: Tensor, n_pairs: int) -> Halves:
    """``value`` (exact) with the gradient of ``carrier_x`` (same shape as the cells' half)."""
    value = value.detach()
    return value[:n_pairs] + (carrier_x - carrier_x.detach()), value[n_pairs:]


# --- rules: the exact value, with the DeepLIFT multiplier as gradient --------------------------------------------


def secant(fn: Callable[[Tensor], Tensor], z: Paired, n_pairs: int, value: Tensor | None = None, *,
           piecewise_linear: bool = False) -> tuple[Tensor, Tensor]:
    """``(y, m)``: the detached value ``y = fn(z)`` (``2P`` rows) and the rescale multiplier ``m = Δy / Δz``.

    ``fn`` is elementwise in ``z`` (it may broadcast against constants). Where ``|Δz|`` is tiny relative to
    ``|z|`` (exactly 0 for a ``piecewise_linear`` ``fn``, whose secant has no cancellation), ``m`` is the
    derivative at the pair's midpoint.
    """
    p, zd = n_pairs, z.full
    yd = (fn(zd) if value is None else value).detach()
    return yd, secant_of(fn, zd[:p], zd[p:], yd[:p], yd[p:], piecewise_linear=piecewise_linear)


def secant_of(fn: Callable[[Tensor], Tensor], z1: Tensor, z2: Tensor, y1: Tensor, y2: Tensor, *,
              piecewise_linear: bool = False, rows: int = 1) -> Tensor:
    """The rescale multiplier ``(y1 − y2) / (z1 − z2)`` of ``y = fn(z)`` (see :func:`secant`; operands broadcast).

    Where ``|z1 − z2|`` is tiny relative to ``|z1 + z2|`` (exactly 0 for a ``piecewise_linear`` ``fn``), the
    derivative of ``fn`` at the midpoint. The first ``rows`` dims of the broadcast shape index rows (pairs):
    ``fn`` is called on the midpoints of the rows that need it, stacked (rows × the other dims).
    """
    dz = z1 - z2
    close = dz == 0 if piecewise_linear else dz.abs() <= (z1 + z2).abs().mul_(0.5 * tiny(dz.dtype))
    m = (y1 - y2).div_(dz)
    if bool(close.any()):  # e.g. a cell paired with itself: only its rows get the derivative
        hit = close.flatten(rows).any(-1).nonzero(as_tuple=True)
        mid = (z1.expand(close.shape)[hit] + z2.expand(close.shape)[hit]) * 0.5
        m[hit] = torch.where(close[hit], _finite(_derivative(fn, mid)).to(m.dtype), m[hit])
    return m


def rescale(fn: Callable[[Tensor], Tensor], z: Paired, n_pairs: int, value: Tensor | None = None, *,
            piecewise_linear: bool = False) -> Halves:
    """Rescale rule for ``value = fn(z)`` (see :func:`secant`): the value, with gradient ``m``."""
    yd, m = secant(fn, z, n_pairs, value, piecewise_linear=piecewise_linear)
    return _carry(yd, m, z, n_pairs)


def _carry(yd: Tensor, m: Tensor, z: Paired, n_pairs: int) -> Halves:
    """``y`` with ``d y / d z = m`` on the cells' half."""
    return torch.addcmul(yd[:n_pairs], m, z.x - z.full[:n_pairs]), yd[n_pairs:]


def product(op: Callable[[Tensor, Tensor], Tensor], a: Paired, b: Paired, n_pairs: int,
            value: Tensor | None = None) -> Halves:
    """Shapley rule for a row-wise bilinear ``op(a, b)`` of two varying tensors: ``Δ = op(Δa, b̄) + op(ā, Δb)``."""
    p, ad, bd = n_pairs, a.full, b.full
    out = (op(ad, bd) if value is None else value).detach()
    a_bar, b_bar = (ad[:p] + ad[p:]) * 0.5, (bd[:p] + bd[p:]) * 0.5
    return out[:p] + op(a.x - ad[:p], b_bar) + op(a_bar, b.x - bd[:p]), out[p:]


def quotient(a: Paired, b: Paired, n_pairs: int, value: Tensor) -> Halves:
    """``a / b`` of two varying tensors: ``a · (1/b)`` with the reciprocal rescaled."""
    return product(torch.mul, a, _joined(rescale(torch.reciprocal, b, n_pairs)), n_pairs, value)


def softmax_like(z: Paired, dims: tuple[int, ...], n_pairs: int, kind: str) -> Paired:
    """Gradient carrier of softmax / log_softmax / logsumexp (keepdim) from shift, exp, sum and divide.

    The shift is the larger of the two partners' maxima: a constant shared by the pair.
    """
    p = n_pairs
    c = z.full.amax(dims, keepdim=True)
    c = _finite(torch.maximum(c[:p], c[p:]))
    shift = torch.cat([c, c])
    s = Paired(z.x - c, z.full - shift)
    e = _joined(rescale(torch.exp, s, p))
    total = Paired(e.x.sum(dims, keepdim=True), e.full.sum(dims, keepdim=True))
    if kind == "softmax":
        return _joined(product(torch.mul, e, _joined(rescale(torch.reciprocal, total, p)), p))
    log_total = _joined(rescale(torch.log, total, p))
    if kind == "log_softmax":
        return Paired(s.x - log_total.x, s.full - log_total.full)
    return Paired(log_total.x + c, log_total.full + shift)


def norm_like(z: Paired, dims: tuple[int, ...], n_pairs: int, eps: float, *, center: bool) -> Paired:
    """Gradient carrier of layer norm (``center``) or RMS norm without its affine map.

    ``c = z − mean(z)`` (linear), ``v = mean(c · c) + eps`` (product rule: ``Δ(c²) = 2c̄·Δc``), ``s = rsqrt(v)``
    (rescale) and ``c · s`` (product rule): each step sums to its delta, so the composite does.
    """
    p = n_pairs
    c = z
    if center:
        c = Paired(z.x - z.x.mean(dims, keepdim=True), z.full - z.full.mean(dims, keepdim=True))
    square = _joined(product(torch.mul, c, c, p))
    v = Paired(square.x.mean(dims, keepdim=True) + eps, square.full.mean(dims, keepdim=True) + eps)
    return _joined(product(torch.mul, c, _joined(rescale(torch.rsqrt, v, p)), p))


def select(z: Paired, value: Tensor, index: Tensor, dim: int, n_pairs: int, largest: bool) -> Halves:
    """DeepLIFT's max rule: ``value = z.gather(dim, index)`` is a max (or min) over ``dim``.

    ``Δy = (cross − y_partner) + (y − cross)`` with ``cross`` the larger (smaller) of the two maxima: the first
    part goes through this row's argmax, the second through the partner's, each divided by ``Δz`` there.
    """
    p, zd, yd = n_pairs, z.full, value.detach()
    y_own, y_par = yd[:p], yd[p:]
    i_own, i_par = index[:p], index[p:]
    cross = torch.maximum(y_own, y_par) if largest else torch.minimum(y_own, y_par)
    dz = zd[:p] - zd[p:]

    def coefficient(part: Tensor, idx: Tensor) -> Tensor:
        # |Δz| at the routing position is at least |part|, so part is 0 wherever Δz is
        d = dz.gather(dim, idx)
        ok = d != 0
        return torch.where(ok, part / torch.where(ok, d, torch.ones_like(d)), torch.zeros_like(d))

    dv = z.x - zd[:p]
    x = (y_own + coefficient(cross - y_par, i_own) * dv.gather(dim, i_own)
         + coefficient(y_own - cross, i_par) * dv.gather(dim, i_par))
    return x, yd[p:]


# --- the mode ------------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One intercepted call: the function, its arguments flattened, and which leaves are varying tensors."""

    func: Callable
    name: str
    args: tuple
    kwargs: dict
    leaves: list = field(default_factory=list)
    spec: Any = None
    varying: list[int] = field(default_factory=list)

    def run(self, replace: dict[int, Any] | None = None):
        """Call the function, with leaves replaced by position."""
        if not replace:
            return self.func(*self.args, **self.kwargs)
        leaves = list(self.leaves)
        for pos, value in replace.items():
            leaves[pos] = value
        args, kwargs = tree_unflatten(leaves, self.spec)
        return self.func(*args, **kwargs)

    def tensor(self, i: int = 0) -> Tensor:
        """The ``i``-th varying tensor."""
        return self.leaves[self.varying[i]]

    def replaced(self, replace: dict[int, Any]) -> Call:
        """The same call with some leaves replaced."""
        leaves = list(self.leaves)
        for pos, value in replace.items():
            leaves[pos] = value
        args, kwargs = tree_unflatten(leaves, self.spec)
        return Call(self.func, self.name, args, kwargs, leaves, self.spec)


class Unruled(Exception):
    """An op touches a varying tensor and has no DeepLIFT rule (carries the name to report)."""


class DeepLiftMode(TorchFunctionMode):
    """Apply DeepLIFT rules to every torch call on tensors derived from a doubled batch of ``2 * n_pairs`` rows.

    Parameters
    ----------
    n_pairs
        ``P``: rows ``r`` and ``r + P`` are partners.
    tracker
        Optional object with ``owns(call)`` and ``handle(mode, call)``: the engine's first-layer shortcut, which
        takes over calls on the tensors it tracks.
    tape
        Optional :class:`~scexplain.engines._deeplift_chain.ChainTape`: receives the local linear map of every
        op with one varying input (``Linear`` layers, per-column or per-pair scaling, rescale multipliers,
        identities), so that the multipliers of a chain of layers can be propagated without autograd. With a
        tape the mode computes values only: the common ops run once on the whole pair batch and no gradient
        carriers are built (the caller runs the model again without a tape if it is not such a chain).

    Attributes
    ----------
    unruled
        Names of ops without a rule that touched a varying tensor, in order of first use.
    """

    def __init__(self, n_pairs: int, tracker=None, tape=None):
        super().__init__()
        self.n_pairs = n_pairs
        self.tracker = tracker
        self.tape = tape
        self.unruled: dict[str, None] = {}
        self._varying = WeakTensorKeyDictionary()  # tensor → True
        self._x = WeakTensorKeyDictionary()  # varying tensor → its cells' half with gradient
        self._discrete = WeakTensorKeyDictionary()  # mask / index computed from a varying tensor → the op
        self._masks = WeakTensorKeyDictionary()  # mask m(z) from a comparison → (z as pairs, m as floats)

    # --- bookkeeping
    def is_varying(self, t: Any) -> bool:
        return isinstance(t, Tensor) and t in self._varying

    def mark(self, result: Any) -> Any:
        """Record the floating tensors in ``result`` as varying; return ``result``."""
        for t in tree_flatten(result)[0]:
            if isinstance(t, Tensor) and (t.is_floating_point() or t.is_complex()):
                self._varying[t] = True
        return result

    def join(self, halves: Halves) -> Tensor:
        """The ``2P``-row varying tensor made of a rule's halves (the background half carries no gradient)."""
        x, bg = halves
        full = torch.cat([x, bg.detach()])
        self._x[full] = x
        return self.mark(full)

    def paired(self, t: Tensor) -> Paired:
        x = self._x.get(t)
        return Paired(t[: self.n_pairs] if x is None else x, t.detach())

    def x_half(self, t: Tensor) -> Tensor:
        """The cells' half of a varying tensor, with gradient."""
        return self.paired(t).x

    def report(self, name: str) -> None:
        self.unruled.setdefault(name, None)

    def _mark_discrete(self, result: Any, origin: str) -> None:
        for t in tree_flatten(result)[0]:
            if isinstance(t, Tensor):
                self._discrete[t] = origin

    # --- dispatch
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves, spec = tree_flatten((args, kwargs))
        call = Call(func, op_name(func), args, kwargs, leaves, spec)
        if self.tracker is not None and self.tracker.owns(call):
            return self.tracker.handle(self, call)
        return self.dispatch(call)

    def dispatch(self, call: Call):
        """Apply the op's rule (or compute it plainly when it touches no varying tensor)."""
        call.varying = [i for i, t in enumerate(call.leaves) if self.is_varying(t)]
        origins = [self._discrete[t] for t in call.leaves if isinstance(t, Tensor) and t in self._discrete]
        if call.name in _MASK_OPS:
            result = self._mask_op(call, origins)
            if result is not None:
                return result
        if not call.varying:
            result = call.run()
            if origins:
                self._propagate_discrete(call, result, origins)
            return result
        if origins and call.name not in CONSTANT_RESULT:
            for origin in origins:  # a mask / index computed from the input now shapes a value
                self.report(origin)
        try:
            return self._dispatch(call)
        except Unruled as why:
            return self._plain(call, unruled=str(why))

    def _mask_op(self, call: Call, origins: list[str]):
        """A mask made from one varying tensor, or a selection by such a mask; ``None`` for any other call.

        A comparison of one varying tensor ``z`` with constants is a step function ``m(z)`` (values 0/1): its
        rescale multiplier is ``Δm / Δz`` (0 where ``Δz = 0``, where ``Δm`` is 0 too). ``where(m, a, b)`` is
        ``b + m · (a − b)``, a product of two varying factors (Shapley rule), so the selection sums to its delta.
        This is how decompositions to core ATen write piecewise maps (``softplus``, ``celu``, ``threshold``, ...).
        """
        name = call.name
        if name in COMPARISONS:
            if len(call.varying) != 1 or origins or call.kwargs.get("out") is not None:
                return None
            z = call.tensor()
            result = self._plain(call, unruled=name)  # a discrete result: reported only if used without a rule
            if isinstance(result, Tensor) and result.shape == z.shape and z.dim() and z.shape[0] == 2 * self.n_pairs:
                self._masks[result] = (self.paired(z), result.to(z.dtype))
            return result
        masks = [t for t in call.leaves if isinstance(t, Tensor) and t in self._masks]
        if len(masks) != 1 or len(origins) != 1:
            return None
        z, m = self._masks[masks[0]]
        if name == "logical_not" and call.leaves[0] is masks[0] and len(call.leaves) == 1:
            result = call.run()
            self._mark_discrete(result, origins[0])
            self._masks[result] = (z, 1.0 - m)
            return result
        if name in SELECTIONS:
            return self._select_by_mask(call, masks[0], z, m)
        return None

    def _select_by_mask(self, call: Call, mask: Tensor, z: Paired, m: Tensor):
        """``where(mask, a, b)`` / ``masked_fill(b, mask, a)``: ``b + m · (a − b)`` (see :meth:`_mask_op`)."""
        p = self.n_pairs
        names = ("condition", "input", "other") if call.name == "where" else ("input", "mask", "value")
        args = dict(zip(names, call.args, strict=False)) | call.kwargs
        cond = args.get("condition", args.get("mask"))
        a, b = (args.get("input"), args.get("other")) if call.name == "where" else (args.get("value"), args.get("input"))
        if cond is not mask or a is None or b is None:
            return None
        value = call.run()
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.dim() == 0:
            return None
        if value.shape[0] != 2 * p or torch.broadcast_shapes(m.shape, value.shape) != value.shape:
            return None
        slope = torch.where(z.full[:p] != z.full[p:], (m[:p] - m[p:]) / (z.full[:p] - z.full[p:]), 0.0)
        step = Paired(torch.addcmul(m[:p], slope, z.x - z.full[:p]).expand_as(value[:p]), m.expand_as(value))
        a, b = self._operand(a, value), self._operand(b, value)
        diff = Paired(a.x - b.x, a.full - b.full)
        x, _ = product(torch.mul, step, diff, p)
        return self.join(graft(value, b.x + x, p))

    def _operand(self, t, like: Tensor) -> Paired:
        """A selection's operand (varying or constant, tensor or number) as pairs broadcast to ``like``."""
        p = self.n_pairs
        if self.is_varying(t):
            pt = self.paired(t)
            return Paired(pt.x.expand_as(like[:p]), pt.full.expand_as(like))
        t = torch.as_tensor(t, dtype=like.dtype, device=like.device).expand_as(like)
        return Paired(t[:p], t)

    def _propagate_discrete(self, call: Call, result: Any, origins: list[str]) -> None:
        """A discrete tensor derived from the input: taint what it computes; floats made from it are reported."""
        if _has_float(result) and call.name not in CONSTANT_RESULT:
            for origin in origins:
                self.report(origin)
        else:
            self._mark_discrete(result, origins[0])

    def _plain(self, call: Call, unruled: str | None = None):
        """Compute normally.

        Floating outputs are varying (and ``unruled``, if given, is reported); discrete outputs (masks, indices)
        remember the op: it is reported only if they later shape a floating value.
        """
        result = call.run()
        self._written(call)
        if _has_float(result):
            if unruled is not None:
                self.report(unruled)
            return self.mark(result)
        self._mark_discrete(result, unruled or call.name)
        return result

    def _written(self, call: Call, halves_of: Tensor | None = None) -> None:
        """After an in-place call: its target is varying, and its cells' half is ``halves_of``'s (or forgotten)."""
        target = inplace_target(call)
        if target is None:
            return
        if self.tape is not None:
            self.tape.written()
        for t in (target, target._base):
            if t is not None and t in self._x:
                del self._x[t]
        if target.is_floating_point():
            self._varying[target] = True
        if halves_of is not None and halves_of in self._x:
            self._x[target] = self._x[halves_of]

    def _dispatch(self, call: Call):
        name = call.name
        base = inplace_base(name)
        if name in CONSTANT_RESULT or is_metadata(name):
            return call.run()
        if name in TRAINING_ARG and training_flag(call):
            raise Unruled(f"{name} (training mode)")
        if name in LINEAR:
            return self._linear(call)
        if base in LINEAR:
            return self._plain(call)
        if name in BILINEAR or name in ELEMENTWISE or base in BILINEAR or base in ELEMENTWISE:
            return self._inplace_aware(call, self._elementwise)
        if name in SOFTMAX:
            return self._softmax(call)
        if name in NORMS:
            return self._norm(call)
        if MAX_POOL.match(name):
            return self._max_pool(call)
        if name in REDUCE_MAX:
            return self._reduce_max(call)
        return self._plain(call, unruled=name)

    # --- rule families
    def _check_paired(self, t: Tensor, name: str) -> None:
        if t.dim() == 0 or t.shape[0] != 2 * self.n_pairs:
            raise Unruled(f"{name} (its input has not the cells on dimension 0)")

    def _inplace_aware(self, call: Call, rule: Callable[[Call], Any]):
        """Run ``rule`` out of place and copy the result into the in-place target (autograd-safe)."""
        inplace = _out_of_place(call)
        if inplace is None:
            return rule(call)
        oop_call, target = inplace
        oop_call.varying = [i for i, t in enumerate(oop_call.leaves) if self.is_varying(t)]
        result = rule(oop_call)
        if not isinstance(result, Tensor):
            raise Unruled(call.name)
        target.copy_(result)
        self._written(call, halves_of=result)
        return target

    def _halves(self, run: Callable[[dict[int, Tensor]], Tensor], x_args: dict[int, Tensor],
                bg_args: dict[int, Tensor]) -> Tensor:
        """Run an op once per half of the pair batch, the background half without gradient."""
        if self.tape is not None:  # values only: once on the whole batch
            return self.mark(run({}))
        x = run(x_args)
        with torch.no_grad():
            bg = run(bg_args)
        return self.join((x, bg))

    def _rowwise(self, call: Call, func: Callable[[Tensor], Tensor] | None = None) -> Tensor | None:
        """An elementwise linear op per half.

        ``None`` unless every tensor argument is row-aligned with the pair batch or broadcast along its rows.
        """
        p, tensors = self.n_pairs, [(i, t) for i, t in enumerate(call.leaves) if isinstance(t, Tensor)]
        ndim = max(t.dim() for _, t in tensors)
        x_args, bg_args = {}, {}
        for i, t in tensors:
            if t.dim() == ndim and t.shape[0] == 2 * p:
                x_args[i] = self.x_half(t) if self.is_varying(t) else t[:p]
                bg_args[i] = t[p:].detach()
            elif (t.dim() == ndim and t.shape[0] != 1) or self.is_varying(t):
                return None
        run = call.run if func is None else partial(_run_with, call, func)
        out = self._halves(run, x_args, bg_args)
        if self.tape is not None and len(call.varying) == 1:
            self._tape_elementwise_linear(call, run, x_args, out)
        return out

    def _tape_elementwise_linear(self, call: Call, run, x_args: dict[int, Tensor], out: Tensor) -> None:
        """Record ``out = a ⊙ z + constants`` on the tape, with ``a`` probed.

        ``a`` is per column, or per pair when another argument is row-aligned with the pair batch.
        """
        pos = call.varying[0]
        z = call.leaves[pos]
        if z.dim() != 2 or out.shape != z.shape:
            return
        with torch.no_grad():
            if len(x_args) > 1:
                x = x_args[pos]
                ones, zeros = {**x_args, pos: torch.ones_like(x)}, {**x_args, pos: torch.zeros_like(x)}
            else:
                ones = {pos: z.new_ones(1, z.shape[1])}
                zeros = {pos: z.new_zeros(1, z.shape[1])}
            a = run(ones) - run(zeros)
        self.tape.scale(out, z, a)

    def _matrix_product(self, call: Call) -> Tensor | None:
        """Linear layer / matmul / convolution of the pair batch per half; ``None`` if the input is not it."""
        name, p = call.name, self.n_pairs
        leaf = _leaf_index(call, _ROW_INPUT[name])
        if len(call.varying) != 1 or call.varying[0] != leaf:
            return None
        z = call.tensor()
        spatial = _CONV_DIMS.get(name)
        if z.dim() < 2 or z.shape[0] != 2 * p or (spatial is not None and z.dim() != spatial + 2):
            return None
        out = self._halves(call.run, {leaf: self.x_half(z)}, {leaf: z[p:].detach()})
        if self.tape is not None:
            layer = linear_layer(call)
            if layer is not None and layer[0] is z:
                self.tape.matrix(out, z, layer[1])
        return out

    def _linear(self, call: Call):
        """A linear op: row-wise ones run per half, which leaves the background half out of the backward pass."""
        name = call.name
        out = None
        if "out" in call.kwargs:
            pass
        elif name in _BATCH_NORMS:
            out = self._batch_norm(call)
        elif name in _ROW_INPUT:
            out = self._matrix_product(call)
        elif name in _ELEMENTWISE_LINEAR:
            out = self._rowwise(call)
        if out is not None:
            return out
        out = self._plain(call)
        if self.tape is not None and len(call.varying) == 1 and isinstance(out, Tensor):
            if name in _IDENTITY:
                self.tape.identity(out, call.tensor())
            elif name in _COLUMN_CATS:
                self._tape_cat(call, out)
        return out

    def _tape_cat(self, call: Call, out: Tensor) -> None:
        """Record a concatenation of one varying matrix with constants along the columns."""
        tensors = call.args[0] if call.args else call.kwargs.get("tensors")
        dim = 1 if call.name in {"hstack", "column_stack"} else _arg(call, "dim", 1, 0)
        if not isinstance(tensors, list | tuple) or out.dim() != 2 or dim not in (1, -1):
            return
        start = 0
        for t in tensors:
            if t is call.tensor():
                self.tape.columns(out, t, start)
                return
            if not isinstance(t, Tensor) or t.dim() != 2:
                return
            start += t.shape[1]

    def _batch_norm(self, call: Call):
        """Eval-mode batch norm as the affine map it is (its own backward has no batched rule: slow under vmap).

        ``F.batch_norm``, ``torch.batch_norm`` / ``aten.batch_norm`` (another argument order) and core ATen's
        ``_native_batch_norm_legit_no_training`` (which also returns two empty tensors).
        """
        params = _BATCH_NORMS["F" if call.func is F.batch_norm else call.name]
        args = dict(zip(params, call.args, strict=False)) | call.kwargs
        x, mean, var = args["input"], args.get("running_mean"), args.get("running_var")
        if len(call.varying) != 1 or call.tensor() is not x or mean is None or var is None or x.dim() < 2:
            return None
        weight, bias, eps = args.get("weight"), args.get("bias"), args.get("eps", 1e-5)
        scale = torch.rsqrt(var + eps) if weight is None else weight * torch.rsqrt(var + eps)
        shift = -mean * scale if bias is None else bias - mean * scale
        shape = (-1,) + (1,) * (x.dim() - 2)
        out = self._rowwise(call, lambda t: torch.addcmul(shift.view(shape), t, scale.view(shape)))
        if out is None or call.name == "batch_norm":
            return out
        return out, x.new_empty(0), x.new_empty(0)

    def _elementwise(self, call: Call):
        name, p = call.name, self.n_pairs
        if len(call.varying) == 1:
            if name in BILINEAR or (name in DIVISION and call.varying[0] == first_tensor(call)):
                return self._linear(call)  # linear in its only varying operand
            if call.kwargs.get("rounding_mode") is not None:
                raise Unruled(f"{name} (rounding_mode)")
            z = call.tensor()
            self._check_paired(z, name)
            pos = call.varying[0]
            pz = self.paired(z)
            yd, m = secant(lambda t: call.run({pos: t}), pz, p, call.run(), piecewise_linear=name in PIECEWISE_LINEAR)
            if self.tape is None:
                return self.join(_carry(yd, m, pz, p))
            out = self.mark(yd)  # values only
            self.tape.scale(out, z, m)
            return out
        if len(call.varying) != 2:
            raise Unruled(name)
        (ia, ib), (a, b) = call.varying, (call.tensor(0), call.tensor(1))
        for t in (a, b):
            self._check_paired(t, name)
        pa, pb = self.paired(a), self.paired(b)
        if name in {"mul", "multiply"} or (name in {"matmul", "bmm"} and min(a.dim(), b.dim()) >= 3):
            return self.join(product(lambda u, v: call.run({ia: u, ib: v}), pa, pb, p, call.run()))
        if name in DIVISION and call.kwargs.get("rounding_mode") is None:
            return self.join(quotient(pa, pb, p, call.run()))
        if name in {"pow", "float_power"}:  # a ** b = exp(b · log a)
            log_a = _joined(rescale(torch.log, pa, p))
            carrier = rescale(torch.exp, _joined(product(torch.mul, pb, log_a, p)), p)
            return self.join(graft(call.run(), carrier[0], p))
        if name in {"maximum", "minimum", "fmax", "fmin"}:  # (a + b)/2 ± |a − b|/2
            gap = rescale(torch.abs, Paired(pa.x - pb.x, pa.full - pb.full), p, piecewise_linear=True)[0]
            sign = 1.0 if name in {"maximum", "fmax"} else -1.0
            return self.join(graft(call.run(), (pa.x + pb.x + sign * gap) * 0.5, p))
        raise Unruled(f"{name} (of two varying tensors)")

    def _softmax(self, call: Call):
        if len(call.varying) != 1 or call.varying[0] != first_tensor(call):
            raise Unruled(call.name)
        z = call.tensor()
        self._check_paired(z, call.name)
        value = call.run()
        logsumexp = call.name == "logsumexp"
        dims = _dims(_arg(call, "dim", 1) if logsumexp else _softmax_dim(call, z.dim()), z.dim())
        if 0 in dims:
            raise Unruled(f"{call.name} (over the cells)")
        pz = self.paired(z)
        dtype = next((a for a in call.leaves if isinstance(a, torch.dtype)), None)
        if dtype is not None:
            pz = Paired(pz.x.to(dtype), pz.full.to(dtype))
        if call.name == "softmin":
            pz = Paired(-pz.x, -pz.full)
        kind = {"log_softmax": "log_softmax", "logsumexp": "logsumexp"}.get(call.name, "softmax")
        carrier = softmax_like(pz, dims, self.n_pairs, kind).x
        if logsumexp and not _arg(call, "keepdim", 2, False):
            carrier = carrier.squeeze(dims)
        return self.join(graft(value, carrier, self.n_pairs))

    def _norm(self, call: Call):
        """Layer / RMS norm as mean, shift, square, rsqrt and product rules (exact summation to delta)."""
        if len(call.varying) != 1 or call.varying[0] != first_tensor(call):
            raise Unruled(call.name)
        z = call.tensor()
        self._check_paired(z, call.name)
        named = dict(zip(("input", "normalized_shape", *NORMS[call.name]), call.args, strict=False)) | call.kwargs
        shape = named.get("normalized_shape")
        shape = (shape,) if isinstance(shape, int) else tuple(shape or ())
        if not shape or len(shape) >= z.dim():
            raise Unruled(f"{call.name} (over the cells)")
        dims = tuple(range(z.dim() - len(shape), z.dim()))
        eps = named.get("eps", 1e-5 if call.name == "layer_norm" else None)  # the defaults of F.layer_norm, F.rms_norm
        eps = float(torch.finfo(z.dtype).eps) if eps is None else float(eps)
        carrier = norm_like(self.paired(z), dims, self.n_pairs, eps, center=call.name != "rms_norm").x
        weight, bias = named.get("weight"), named.get("bias")
        if weight is not None:
            carrier = carrier * weight
        if bias is not None:
            carrier = carrier + bias
        value = call.run()
        if isinstance(value, Tensor):
            return self.join(graft(value, carrier, self.n_pairs))
        # aten.native_layer_norm: (out, mean, rstd); mean and rstd carry no rule (reported if they shape a value)
        self._mark_discrete(value[1:], f"{call.name} (mean, rstd)")
        return (self.join(graft(value[0], carrier, self.n_pairs)), *value[1:])

    def _max_pool(self, call: Call):
        match = MAX_POOL.match(call.name)
        adaptive, nd = bool(match.group(1)), int(match.group(2))
        if len(call.varying) != 1 or call.varying[0] != 0:
            raise Unruled(call.name)
        z = call.tensor()
        self._check_paired(z, call.name)
        base = getattr(F, f"{'adaptive_' if adaptive else ''}max_pool{nd}d")
        n_pos = 2 if adaptive else 6
        kwargs = {k: v for k, v in call.kwargs.items() if k != "return_indices"}
        value, index = base(*call.args[:n_pos], **kwargs, return_indices=True)
        pz = self.paired(z)
        flat = Paired(pz.x.flatten(-nd), pz.full.flatten(-nd))
        x, bg = select(flat, value.flatten(-nd), index.flatten(-nd), -1, self.n_pairs, largest=True)
        p = self.n_pairs
        out = self.join((x.view_as(value[:p]), bg.view_as(value[p:])))
        wants_index = bool(match.group(3)) or bool(call.kwargs.get("return_indices", False)) or (
            len(call.args) > n_pos and bool(call.args[n_pos])) or _returns(call) == 2  # aten.adaptive_max_pool1d
        return (out, index) if wants_index else out

    def _reduce_max(self, call: Call):
        name = call.name
        largest = name in {"max", "amax"}
        dim = _arg(call, "dim", 1, None if name in {"max", "min"} else ())
        if name in {"max", "min"} and (len(call.varying) == 2 or isinstance(dim, Tensor)):  # max(a, b): elementwise
            return self._elementwise(replace(call, name="maximum" if largest else "minimum"))
        if len(call.varying) != 1 or call.varying[0] != 0:
            raise Unruled(name)
        z = call.tensor()
        self._check_paired(z, name)
        dims = _dims(dim, z.dim())
        if len(dims) != 1 or dims[0] == 0:
            raise Unruled(f"{name} (over the cells)" if 0 in dims else f"{name} (several dims)")
        (d,) = dims
        keepdim = bool(_arg(call, "keepdim", 2, False))
        result = call.run()
        if name in {"amax", "amin"}:
            value = result if keepdim else result.unsqueeze(d)
            index = (torch.max if largest else torch.min)(z.detach(), d, keepdim=True).indices
        else:  # (values, indices): torch.return_types.max, or a tuple from aten.max.dim
            value = result[0] if keepdim else result[0].unsqueeze(d)
            index = result[1] if keepdim else result[1].unsqueeze(d)
        x, bg = select(self.paired(z), value, index, d, self.n_pairs, largest)
        out = self.join((x, bg) if keepdim else (x.squeeze(d), bg.squeeze(d)))
        if name in {"amax", "amin"}:
            return out
        return type(result)((out, result[1]))


# --- call helpers ------------------------------------------------------------------------------------------------


DIVISION = frozenset({"div", "divide", "true_divide"})
#: batch norms by name (``"F"``: ``F.batch_norm``): their positional parameters
_BATCH_NORMS = {
    "F": ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
    "batch_norm": ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps"),
    "native_batch_norm_legit_no_training": ("input", "weight", "bias", "running_mean", "running_var", "momentum",
                                            "eps"),
}
#: matrix products of the pair batch: name → position of the row-indexed input
_ROW_INPUT = {"linear": 0, "matmul": 0, "mm": 0, "bmm": 0, "addmm": 1, "conv1d": 0, "conv2d": 0, "conv3d": 0}
_CONV_DIMS = {"conv1d": 1, "conv2d": 2, "conv3d": 3}
#: ops that keep the values of their one varying input (when the shape is kept; dropout in eval mode)
_IDENTITY = frozenset(
    """dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout contiguous clone positive to type
    type_as float double view view_as reshape reshape_as flatten squeeze""".split()
)
#: concatenations that may join a varying matrix with constants along the columns
_COLUMN_CATS = frozenset({"cat", "concat", "concatenate", "hstack", "column_stack"})
_MASK_OPS = COMPARISONS | SELECTIONS | {"logical_not"}
#: linear elementwise ops (with row-aligned or row-broadcast arguments)
_ELEMENTWISE_LINEAR = frozenset(
    "add sub subtract rsub neg negative positive mul multiply div divide true_divide".split()
)


def _leaf_index(call: Call, position: int) -> int:
    """Index among the flattened leaves of positional argument ``position``."""
    return len(tree_flatten(call.args[:position])[0])



def _run_with(call: Call, func: Callable[[Tensor], Tensor], replace: dict[int, Tensor]) -> Tensor:
    """``func`` applied to the (replaced) first varying tensor of ``call``."""
    pos = call.varying[0]
    return func(replace.get(pos, call.leaves[pos]))


def _returns(call: Call) -> int | None:
    """Number of results of an ATen operator (``None`` for other torch functions)."""
    return len(call.func._schema.returns) if isinstance(call.func, OpOverload) else None


def first_tensor(call: Call) -> int:
    """Leaf index of the first tensor argument."""
    return next(i for i, t in enumerate(call.leaves) if isinstance(t, Tensor))


def _arg(call: Call, name: str, position: int, default=None):
    """A parameter given by keyword or position (positions count ``self``/``input`` as 0)."""
    if name in call.kwargs:
        return call.kwargs[name]
    return call.args[position] if len(call.args) > position else default


def _dims(dim, ndim: int) -> tuple[int, ...]:
    """Normalised reduction dims (``None``/``()`` → all)."""
    if dim is None or (isinstance(dim, tuple | list) and len(dim) == 0):
        return tuple(range(ndim))
    dims = dim if isinstance(dim, tuple | list) else (dim,)
    return tuple(sorted(int(d) % ndim for d in dims))


def _softmax_dim(call: Call, ndim: int) -> int:
    dim = _arg(call, "dim", 1)
    if dim is None:  # torch's legacy implicit choice
        dim = 0 if ndim in (0, 1, 3) else 1
    return dim


def training_flag(call: Call) -> bool:
    pos, default = TRAINING_ARG[call.name]
    if "train" in call.kwargs:  # torch.dropout(input, p, train)
        return bool(call.kwargs["train"])
    return bool(_arg(call, "training", pos, default))


def _has_float(result: Any) -> bool:
    return any(isinstance(t, Tensor) and (t.is_floating_point() or t.is_complex()) for t in tree_flatten(result)[0])


def inplace_base(name: str) -> str | None:
    if name.endswith("_") and not name.startswith("_"):
        return name[:-1]
    return None


def inplace_target(call: Call) -> Tensor | None:
    """The tensor an in-place call writes into (``x.exp_()``, ``x[i] = v``, ``F.relu(x, inplace=True)``, ``out=``)."""
    out = call.kwargs.get("out")
    if isinstance(out, Tensor):
        return out
    if inplace_base(call.name) is not None or call.name == "__setitem__" or _inplace_kwarg(call):
        first = call.args[0] if call.args else None
        return first if isinstance(first, Tensor) else None
    return None


def _inplace_kwarg(call: Call) -> bool:
    try:
        params = inspect.signature(call.func).parameters
    except (TypeError, ValueError):
        return False
    if "inplace" not in params:
        return False
    bound = inspect.signature(call.func).bind_partial(*call.args, **call.kwargs)
    return bool(bound.arguments.get("inplace", False))


def _out_of_place(call: Call) -> tuple[Call, Tensor] | None:
    """For an in-place or ``out=`` call: the same call out of place and the target to write into; else ``None``."""
    target = inplace_target(call)
    if target is None:
        return None
    name, kwargs = call.name, {k: v for k, v in call.kwargs.items() if k != "out"}
    func, args = call.func, call.args
    base = inplace_base(name)
    if base is not None:
        func = next((f for f in (getattr(torch.Tensor, base, None), getattr(torch, base, None),
                                 getattr(F, base, None)) if f is not None), None)
        if func is None:
            raise Unruled(name)
        name = base
    elif _inplace_kwarg(call):
        bound = inspect.signature(call.func).bind_partial(*call.args, **kwargs)
        bound.arguments["inplace"] = False
        args, kwargs = bound.args, bound.kwargs
    leaves, spec = tree_flatten((args, kwargs))
    return Call(func, name, args, kwargs, leaves, spec), target


def linear_layer(call: Call) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """``(input, weight K × D, bias)`` of ``linear`` / ``addmm`` / ``matmul`` / ``mm`` with a constant matrix."""
    name, args, kwargs = call.name, call.args, call.kwargs
    if not args:
        return None
    if name == "linear":
        x, weight = args[0], kwargs.get("weight", args[1] if len(args) > 1 else None)
        bias = kwargs.get("bias", args[2] if len(args) > 2 else None)
    elif name == "addmm" and not ({"beta", "alpha"} & set(kwargs)) and len(args) == 3:
        bias, x, weight = args[0], args[1], args[2].T
    elif name in {"matmul", "mm"} and len(args) == 2 and not kwargs:
        (x, weight), bias = args, None
        weight = weight.T if isinstance(weight, Tensor) else weight
    else:
        return None
    if not isinstance(weight, Tensor) or weight.dim() != 2 or (bias is not None and (
            not isinstance(bias, Tensor) or bias.dim() > 1)):
        return None
    return x, weight, bias
