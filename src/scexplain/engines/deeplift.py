"""Exact, batched DeepSHAP (DeepLIFT rescale rule averaged over a background) for torch models.

Pure numerics on torch tensors: no AnnData here. :func:`deeplift_shap` explains a chunk of cells against every
background cell, for several outputs per cell at once.

How it works
------------
For ``n`` cells and ``B`` background cells, the model runs on a doubled batch of pairs ``[x_i ; b]`` (rows ``r``
and ``r + P`` are partners; pairs are background-major, ``r = b·n + i``) under
:class:`~scexplain.engines._deeplift_rules.DeepLiftMode`, a torch function mode that gives every op its DeepLIFT
rule (modules and functional calls alike). The multipliers ``M(x_i, b)`` of all requested outputs come from a
walk along the model's chain of layers (:mod:`._deeplift_chain`: ``Linear``, per-column affine maps, rescaled
nonlinearities, kept factored so that no per-output tensor is formed near the output) or, for any other model,
from one batched backward pass; ``φ_i = mean_b (x_i − b) · M(x_i, b)``.

First-layer shortcut: when the input only goes through elementwise maps (``log1p``, scaling, ...) and a
concatenation with covariates before ``Linear`` layers and per-column affine maps (batch norm in eval mode, ...),
these run on the ``n + B`` distinct rows instead of the ``2·n·B`` pair rows (the model sees NaN-filled stand-ins
of the right shape, never materialised), the affine maps fold into the layer's weights ``W``, the multipliers
are taken at the input of the first nonlinearity, and the gene-level attributions are::

    φ[i, c, g] = 1/B · ( u_i[g] · Σ_k W[k, g] Σ_b M[b, i, c, k]  −  Σ_b Σ_k M[b, i, c, k] · u_b[g] W[k, g] )

with ``u = h(x)`` the elementwise map (``Δh`` replaces ``Δx``: the rescale rules of a chain of elementwise maps
compose to ``Δh / Δx``), so that no ``n × B × C × G`` tensor is formed. The second term is one GEMM per
background cell over the genes where ``u_b`` is not zero (the products ``u_b[g] W[k, g]`` are kept in a
:class:`BackgroundCache`). Any other model uses the generic path (and so does one that reads a stand-in in a way
the shortcut does not follow: NaN in its output shows it); all paths give the same numbers up to rounding.

Distinct rows all the way: DeepLIFT's forward values are the plain forward pass of the cell and of the background
cell, so when nothing per pair enters after the first layer (no covariates held at the cell's values there, no
products of two branches, ...) the whole chain of layers runs on the ``n + B`` distinct rows
(:class:`~._deeplift_chain.DistinctMultipliers`): the multipliers of a few background cells at a time are made
from the two rows of each pair, ``(h(z_i) − h(z_b)) / (z_i − z_b)`` per nonlinearity, and go straight into the
gene-level GEMMs. No tensor over all pairs exists at any layer; a model that needs the pairs (the tracker raises
``_NotDistinct``) is explained on the pair batch as above, and :class:`BackgroundCache` remembers which.

Linear models: when that chain has no nonlinearity at all (elementwise maps of the genes, then ``Linear`` layers
and per-column affine maps only: CellTypist's scaling, clip and decision function, scikit-learn's linear
classifiers), the multipliers are the same for every pair and the sums have a closed form,
``φ_i = W_eff ⊙ (u_i − mean_b u_b)`` (:mod:`._deeplift_linear`, which also gives the presence part and the
background sums): no per-pair work.

Besides the attributions, the gene-level sums (:mod:`._deeplift_genes`, which documents their algebra) can give
the presence part of each attribution (pairs with ``x_g > b_g``; ``split=True``) and per-(group, background cell)
sums of each cell's own attributions (``groups=``), for a bootstrap over background cells without reruns; both
keep the factored form (corrections over the genes a background cell expresses, one GEMM per cell over the genes
it expresses). :func:`deeplift_shap` returns a :class:`DeepShapOutput`.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from ._deeplift_chain import ChainTape, DistinctMultipliers, DistinctStep, TapMultipliers, chain_multipliers
from ._deeplift_genes import BackgroundCache, ChunkSums, SumsRequest, pair_sums, shortcut_sums
from ._deeplift_linear import linear_sums
from ._deeplift_rules import (
    DIVISION,
    ELEMENTWISE,
    PIECEWISE_LINEAR,
    TRAINING_ARG,
    Call,
    DeepLiftMode,
    first_tensor,
    inplace_target,
    is_metadata,
    linear_layer,
    training_flag,
)

__all__ = ["BackgroundCache", "DeepLiftWarning", "DeepShapOutput", "deeplift_shap"]

logger = logging.getLogger("scexplain")

Tensor = torch.Tensor

#: working-set target of one chunk, in tensor elements (2**26 float32 = 256 MiB)
_CHUNK_ELEMENTS = 2**26
#: explain models that mix no pairs after the first layer on the distinct rows (tests turn it off to check pairs)
_DISTINCT = True
#: explain models linear after the genes' elementwise maps in closed form (tests turn it off to compare)
_LINEAR = True

class DeepLiftWarning(UserWarning):
    """An op with no DeepLIFT rule was applied to a tensor derived from the explained input.

    It was computed with its ordinary gradient, so attributions may not sum to ``f(x) − mean_b f(b)``; the
    additivity error measures by how much. ``op`` holds the op's name (e.g. ``"group_norm"``).
    """

    def __init__(self, message: str, op: str | None = None):
        super().__init__(message)
        self.op = op


def deeplift_shap(
    forward,
    x: Tensor,
    background: Tensor,
    classes: Tensor,
    *,
    cov: Tensor | None = None,
    pair_budget: int | None = None,
    cache: BackgroundCache | None = None,
    shortcut: bool = True,
    chain: bool = True,
    split: bool = False,
    groups: Tensor | None = None,
    n_groups: int | None = None,
    own: Tensor | None = None,
) -> DeepShapOutput:
    """DeepSHAP attributions of a torch model: DeepLIFT's rescale rule averaged over background cells.

    Parameters
    ----------
    forward
        ``forward(x, cov) -> outputs``: cells × genes (and cells × covariates or ``None``) to cells × outputs
        (a 1-D output is one column). Must treat each row independently (eval mode: no batch statistics).
    x
        ``n × G`` cells to explain (device and dtype of the computation).
    background
        ``B × G`` background cells.
    classes
        ``n × C`` integer indices of the outputs to explain for each cell (``C ≥ 1``, the same for all cells).
    cov
        ``n × k`` covariates of each explained cell, or ``None``. Held fixed: a cell's row is used for the cell
        and for every one of its background pairs.
    pair_budget
        Maximum number of (cell, background cell) pairs per forward/backward chunk (bounds memory); ``None``
        picks one from the number of genes and outputs (about 256 MiB of float32 work space).
    cache
        A :class:`BackgroundCache` shared by calls with the same background (saves recomputing the first
        layer's products of the background cells); ``None``: one for this call.
    shortcut
        Evaluate the first ``Linear`` layer on distinct rows when the model allows it (same results up to
        rounding); ``False`` forces the generic path.
    chain
        Propagate multipliers along a chain of layers without autograd when the model is one (same results up
        to rounding); ``False`` forces the batched backward pass.
    split
        Also return :attr:`DeepShapOutput.presence`: the part of the attributions from the pairs where the
        cell's value of the gene is above the background cell's (``absence = attributions − presence``).
    groups, n_groups
        ``n`` integer group codes in ``[0, n_groups)`` (``−1``: in no group) and their number: also return
        :attr:`DeepShapOutput.background_sums`, for each group and background cell the sum over the group's
        cells of the pair's attributions toward each cell's own output (see ``own``).
    own
        ``n`` indices into the columns of ``classes``: each cell's own output, for ``groups`` (``None``: the
        first column, when ``C = 1``).

    Returns
    -------
    :class:`DeepShapOutput`; it unpacks as ``attributions, output, reference = deeplift_shap(...)``.

    Warns
    -----
    DeepLiftWarning
        Once per call for each op without a rule (e.g. ``group_norm``) that touched the input's computation.

    Examples
    --------
    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()
    >>> x, bg = torch.randn(4, 5, dtype=torch.float64), torch.randn(10, 5, dtype=torch.float64)
    >>> classes = torch.tensor([[0, 2]] * 4)
    >>> phi, fx, fb = deeplift_shap(lambda x, cov: net(x), x, bg, classes)
    >>> phi.shape
    torch.Size([4, 2, 5])
    >>> bool(torch.allclose(phi.sum(-1), fx - fb))
    True
    >>> out = deeplift_shap(lambda x, cov: net(x), x, bg, classes, split=True)
    >>> absence = out.attributions - out.presence
    >>> groups = torch.tensor([0, 1, 0, 1])
    >>> out = deeplift_shap(lambda x, cov: net(x), x, bg, classes, groups=groups, n_groups=2, own=torch.zeros(4, dtype=torch.long))
    >>> out.background_sums.shape  # groups × background cells × genes
    torch.Size([2, 10, 5])
    >>> bool(torch.allclose(out.background_sums.mean(1), torch.stack([out.attributions[groups == k, 0].sum(0) for k in (0, 1)])))
    True
    """
    _check(x, background, classes, cov)
    request = _request(x, classes, split, groups, n_groups, own)
    n_genes = x.shape[1]
    n_classes = classes.shape[1]
    background = background.to(device=x.device, dtype=x.dtype)
    cov = None if cov is None else cov.to(device=x.device)
    classes = classes.to(device=x.device, dtype=torch.long)
    if pair_budget is not None and (not isinstance(pair_budget, int) or pair_budget < 1):
        raise ValueError(f"`pair_budget` must be a positive integer or None, got {pair_budget!r}.")
    with torch.enable_grad():
        if shortcut:
            try:
                budget = pair_budget or _default_budget(n_genes, n_classes, shortcut=True)
                grown = None if pair_budget else _default_budget(n_genes, n_classes, shortcut=True, chain=True)
                wide = None if pair_budget else _distinct_budget(n_genes, n_classes, background.shape[0])
                cache = BackgroundCache() if cache is None else cache
                result, unruled = _explain(forward, x, background, classes, cov, request, budget,
                                           _Shortcut(cache), chain, grown, wide)
            except _NoShortcut as why:
                logger.debug("deeplift_shap: generic path (%s)", why)
                shortcut = False
        if not shortcut:
            budget = pair_budget or _default_budget(n_genes, n_classes, shortcut=False)
            result, unruled = _explain(forward, x, background, classes, cov, request, budget, None, chain)
    for op in unruled:
        warnings.warn(
            DeepLiftWarning(
                f"DeepLIFT has no rule for `{op}`; it got its ordinary gradient, so attributions may not sum to "
                "f(x) − E[f(background)] (see the additivity error).",
                op,
            ),
            stacklevel=2,
        )
    return result


@dataclass
class DeepShapOutput:
    """What :func:`deeplift_shap` returns.

    Attributes
    ----------
    attributions
        ``n × C × G``: ``φ_i = mean_b (x_i − b) · M(x_i, b)`` toward each explained output.
    output
        ``n × C``: the model's outputs ``f(x_i)``.
    reference
        ``n × C``: ``mean_b f(b, cov_i)``; ``attributions.sum(-1) == output − reference`` ("summation to
        delta") when every op has a rule.
    presence
        ``n × C × G`` with ``split=True``: the mean over background cells of the pair terms with
        ``x_g > b_g``; ``attributions − presence`` is the absence part (``x_g < b_g``; equal values contribute 0).
    background_sums
        ``n_groups × B × G`` with ``groups``: ``S[k, b] = Σ_{i in group k} φ_ib`` toward each cell's own output,
        with ``φ_i = mean_b φ_ib``, so that ``S.mean(1)[k]`` is the sum of the group's attributions and a
        resample of background cells (weights ``w_b``) gives ``Σ_b w_b S[k, b] / Σ_b w_b`` without a rerun.
    """

    attributions: Tensor
    output: Tensor
    reference: Tensor
    presence: Tensor | None = None
    background_sums: Tensor | None = None

    def __iter__(self):
        """``attributions, output, reference`` (the tuple :func:`deeplift_shap` returned before it had options)."""
        return iter((self.attributions, self.output, self.reference))


# --- planning and accumulation ---------------------------------------------------------------------------------


def _request(x: Tensor, classes: Tensor, split, groups, n_groups, own) -> SumsRequest:
    """Check the options for the extra sums."""
    if not isinstance(split, bool):
        raise TypeError(f"`split` must be True or False, got {split!r}.")
    if groups is None:
        if n_groups is not None or own is not None:
            raise ValueError("`n_groups` and `own` go with `groups` (per-cell group codes); pass `groups` too.")
        return SumsRequest(split)
    n = x.shape[0]
    if not isinstance(groups, Tensor) or groups.shape != (n,) or groups.is_floating_point():
        raise ValueError(f"`groups` must be a 1-D integer tensor with one code per cell ({n}), got "
                         f"{getattr(groups, 'shape', type(groups))}.")
    if not isinstance(n_groups, int) or isinstance(n_groups, bool) or n_groups < 1:
        raise ValueError(f"`n_groups` must be a positive integer (the number of groups), got {n_groups!r}.")
    groups = groups.to(device=x.device, dtype=torch.long)
    if n and (int(groups.max()) >= n_groups or int(groups.min()) < -1):
        raise ValueError(f"`groups` must hold codes in [0, {n_groups}) or −1 (in no group).")
    if own is None:
        if classes.shape[1] != 1:
            raise ValueError(f"`own` is needed with `groups` when C > 1 ({classes.shape[1]} explained columns): "
                             "pass each cell's own column of `classes`.")
        own = torch.zeros(n, dtype=torch.long, device=x.device)
    if not isinstance(own, Tensor) or own.shape != (n,) or own.is_floating_point():
        raise ValueError(f"`own` must be a 1-D integer tensor with one column index per cell ({n}).")
    own = own.to(device=x.device, dtype=torch.long)
    if n and (int(own.max()) >= classes.shape[1] or int(own.min()) < 0):
        raise ValueError(f"`own` must hold column indices of `classes`, in [0, {classes.shape[1]}).")
    return SumsRequest(split, own, groups, n_groups)


def _check(x, background, classes, cov) -> None:
    for name, t in (("x", x), ("background", background), ("classes", classes)):
        if not isinstance(t, Tensor) or t.dim() != 2:
            raise ValueError(f"`{name}` must be a 2-D torch tensor, got {getattr(t, 'shape', type(t))}.")
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a floating tensor, got {x.dtype}.")
    if background.shape[1] != x.shape[1] or background.shape[0] < 1:
        raise ValueError(f"`background` must be B × {x.shape[1]} with B ≥ 1, got {tuple(background.shape)}.")
    if classes.shape[0] != x.shape[0] or classes.shape[1] < 1:
        raise ValueError(f"`classes` must be {x.shape[0]} × C with C ≥ 1, got {tuple(classes.shape)}.")
    if classes.is_floating_point():
        raise TypeError("`classes` must hold integer output indices.")
    if cov is not None and (not isinstance(cov, Tensor) or cov.shape[0] != x.shape[0]):
        raise ValueError(f"`cov` must have one row per cell ({x.shape[0]}), got {getattr(cov, 'shape', cov)}.")


def _default_budget(n_genes: int, n_classes: int, *, shortcut: bool, chain: bool = False) -> int:
    """Pairs per chunk so that the chunk's main tensors take about :data:`_CHUNK_ELEMENTS` elements.

    Per pair: hidden activations and the ``C`` gradients of hidden layers (taken ≈ 128 wide; along a chain of
    layers only the one at the tap), and without the shortcut the pair inputs and their ``C`` gradients
    (``(3 + C) · G``).
    """
    per_pair = (128 if chain else 512) * n_classes + 1024
    if not shortcut:
        per_pair += (3 + n_classes) * n_genes
    return max(1, _CHUNK_ELEMENTS // per_pair)


def _distinct_budget(n_genes: int, n_classes: int, n_bg: int) -> int:
    """Pairs per chunk on the distinct rows.

    The chunk's per-cell sums (a few ``C × G``, and ``B × 128`` multipliers for the per-background sums) take about
    :data:`_CHUNK_ELEMENTS` elements; the multipliers are built a few background cells at a time.
    """
    return max(1, _CHUNK_ELEMENTS // (4 * n_classes * n_genes + 256 * n_bg)) * n_bg


@dataclass
class _Chunk:
    """Cells ``i0:i1`` against background rows ``b0:b1``; pair ``p = b * n + i`` (background-major)."""

    x: Tensor
    bg: Tensor
    classes: Tensor
    cov: Tensor | None
    b0: int
    request: SumsRequest

    def __post_init__(self):
        n, nb = self.x.shape[0], self.bg.shape[0]
        dev = self.x.device
        self.n_pairs = n * nb
        self.cell_of_pair = torch.arange(n, device=dev).repeat(nb)
        self.bg_of_pair = torch.arange(nb, device=dev).repeat_interleave(n)

    def cov_pairs(self) -> Tensor | None:
        """Covariates of the doubled batch: each cell's row for the cell and for its background partners."""
        if self.cov is None:
            return None
        return self.cov.index_select(0, self.cell_of_pair).repeat(2, *([1] * (self.cov.dim() - 1)))

    def outputs(self, out: Tensor, mode: DeepLiftMode) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Outputs of the cells' half and the outputs' sums over the background.

        Returns ``(P × n_out outputs with grad, P × C classes of each pair, n × C Σ_b f(x), n × C Σ_b f(b))``.
        """
        if not isinstance(out, Tensor) or out.dim() not in (1, 2) or out.shape[0] != 2 * self.n_pairs:
            raise ValueError(
                f"`forward` must return a tensor with one row of outputs per input row ({2 * self.n_pairs}), got "
                f"{tuple(getattr(out, 'shape', ()))}."
            )
        n_out = out.shape[1] if out.dim() == 2 else 1
        if int(self.classes.max()) >= n_out or int(self.classes.min()) < 0:
            raise ValueError(f"`classes` must be output indices in [0, {n_out}); the model has {n_out} outputs.")
        x_out = mode.x_half(out) if mode.is_varying(out) else out[: self.n_pairs]
        bg_out = out[self.n_pairs :].detach()
        if out.dim() == 1:
            x_out, bg_out = x_out.unsqueeze(1), bg_out.unsqueeze(1)
        n, nb = self.x.shape[0], self.bg.shape[0]
        index = self.classes.index_select(0, self.cell_of_pair)
        f_x = x_out.detach().gather(1, index).view(nb, n, -1).sum(0)
        f_bg = bg_out.gather(1, index).view(nb, n, -1).sum(0)
        return x_out, index, f_x, f_bg


def _explain(forward, x, background, classes, cov, request: SumsRequest, budget: int, shortcut: _Shortcut | None,
             chain: bool, chain_budget: int | None = None, distinct_budget: int | None = None):
    """All chunks; returns ``(DeepShapOutput, unruled op names)``.

    ``chain_budget`` / ``distinct_budget``: the pairs per chunk to use once a chunk was explained along a chain of
    layers (which needs less memory per pair than the backward pass) / on the distinct rows (which needs none).
    """
    n, n_bg = x.shape[0], background.shape[0]
    memory = None if shortcut is None else shortcut.cache
    chain = chain and not (memory is not None and memory.chain is False)
    distinct = chain and memory is not None and memory.distinct is not False and _DISTINCT
    block = min(n_bg, budget)
    cells = max(1, budget // block)
    if distinct and memory.distinct and distinct_budget is not None and block == n_bg:
        cells = max(cells, distinct_budget // block)
    n_classes, n_genes = classes.shape[1], x.shape[1]
    phi = x.new_zeros(n, n_classes, n_genes)
    presence = x.new_zeros(n, n_classes, n_genes) if request.split else None
    sums = x.new_zeros(request.n_groups, n_bg, n_genes) if request.sums else None
    f_x = x.new_zeros(n, n_classes)
    f_bg = x.new_zeros(n, n_classes)
    unruled: dict[str, None] = {}
    run = _generic if shortcut is None else shortcut.run
    i0 = 0
    while i0 < n:
        i1 = min(n, i0 + cells)
        for b0 in range(0, n_bg, block):
            chunk = _Chunk(x[i0:i1].detach(), background[b0 : b0 + block].detach(), classes[i0:i1],
                           None if cov is None else cov[i0:i1].detach(), b0, request.cells(i0, i1))
            result = shortcut.run_distinct(forward, chunk) if distinct else None
            if distinct and result is None:  # pairs mix after the first layer: pairs, for the next chunks too
                distinct = False
                memory.distinct = False
            if result is None:
                result = run(forward, chunk, True) if chain else None
            if result is None:  # not a chain of layers: the backward pass, for this chunk and the next ones
                chain = False
                result = run(forward, chunk, False)
            part, fx, fb, ops = result
            with torch.no_grad():
                phi[i0:i1] += part.phi
                f_x[i0:i1] += fx
                f_bg[i0:i1] += fb
                if presence is not None:
                    presence[i0:i1] += part.presence
                if sums is not None:
                    sums[:, b0 : b0 + chunk.bg.shape[0]] += part.background_sums
            unruled.update(dict.fromkeys(ops))
            if distinct:
                memory.distinct = True
            grown = distinct_budget if distinct else chain_budget if chain else None
            if grown is not None and block == n_bg:
                cells = max(cells, grown // block)
        i0 = i1
    if memory is not None:
        memory.chain = chain
    out = DeepShapOutput(phi.div_(n_bg), f_x.div_(n_bg), f_bg.div_(n_bg),
                         None if presence is None else presence.div_(n_bg), sums)
    return out, unruled


def _multipliers(chunk: _Chunk, mode: DeepLiftMode, out: Tensor, x_out: Tensor, index: Tensor,
                 taps: list[_Tap]) -> list[TapMultipliers] | None:
    """Multipliers of the explained outputs with respect to each tap: ``n_bg × n × C × width`` per tap.

    After a values-only forward pass (``mode.tape``): along the chain of layers (:mod:`._deeplift_chain`), or
    ``None`` when the model is not one. Otherwise one batched backward pass.
    """
    if mode.tape is not None:
        if len(taps) != 1:
            return None
        m = chain_multipliers(mode.tape, out, taps[0].full, chunk.classes, chunk.bg.shape[0])
        return None if m is None else [m]
    n, nb = chunk.x.shape[0], chunk.bg.shape[0]
    grads = _backward(x_out, index, [tap.leaf for tap in taps])
    return [TapMultipliers(nb, n, dense=g.view(g.shape[0], nb, n, -1).permute(1, 2, 0, 3)) for g in grads]


def _backward(out: Tensor, index: Tensor, inputs: list[Tensor]) -> list[Tensor]:
    """``d out[r, index[r, c]] / d input`` for every column ``c`` of ``index`` (``P × C``), in one backward pass.

    A list of ``C × input.shape`` tensors (zeros for an input the outputs do not depend on).
    """
    n_classes = index.shape[1]
    if not out.requires_grad:
        return [torch.zeros((n_classes, *t.shape), dtype=t.dtype, device=t.device) for t in inputs]
    if n_classes == 1:
        grads = torch.autograd.grad(out.gather(1, index).sum(), inputs, allow_unused=True)
        grads = [None if g is None else g.unsqueeze(0) for g in grads]
    else:  # one-hot output gradients, batched over the C targets (vmap over the backward pass)
        onehots = out.new_zeros(n_classes, *out.shape)
        onehots.scatter_(2, index.T.unsqueeze(2), 1.0)
        grads = torch.autograd.grad(out, inputs, grad_outputs=onehots, is_grads_batched=True, allow_unused=True)
    return [torch.zeros((n_classes, *t.shape), dtype=t.dtype, device=t.device) if g is None else g
            for g, t in zip(grads, inputs, strict=True)]


# --- generic path ----------------------------------------------------------------------------------------------


def _generic(forward, chunk: _Chunk, chain: bool):
    """Any row-wise model: multipliers at the genes of the x-half of the pair batch.

    With ``chain``, only if the model is a chain of layers (else ``None``).
    """
    x_half = chunk.x.index_select(0, chunk.cell_of_pair)
    bg_half = chunk.bg.index_select(0, chunk.bg_of_pair)
    mode = DeepLiftMode(chunk.n_pairs, tape=ChainTape(chunk.n_pairs) if chain else None)
    if chain:  # values only
        pairs = mode.mark(torch.cat([x_half, bg_half]))
    else:
        pairs = mode.join((x_half.requires_grad_(True), bg_half))
    with mode:
        out = forward(pairs, chunk.cov_pairs())
    x_out, index, f_x, f_bg = chunk.outputs(out, mode)
    multipliers = _multipliers(chunk, mode, out, x_out, index, [_Tap(x_half, [], pairs)])
    if multipliers is None:
        return None
    n, nb = chunk.x.shape[0], chunk.bg.shape[0]
    with torch.no_grad():
        diff = (x_half.detach() - bg_half).view(nb, n, 1, -1)
        terms = multipliers[0].materialise().mul_(diff)  # nb × n × C × G
        sums = pair_sums(terms, chunk.x, chunk.bg, chunk.request)
    return sums, f_x, f_bg, list(mode.unruled)


# --- first-layer shortcut ----------------------------------------------------------------------------------------


class _NoShortcut(BaseException):
    """The model does something to its input that the shortcut does not cover: use the generic path.

    A ``BaseException``, so that it passes through a model's own ``except Exception``.
    """


@dataclass
class _Genes:
    """A map of the input made of column blocks.

    ``("rows", u)``: an elementwise map of the genes evaluated on the distinct rows (``u``: ``(n + B) × G``);
    ``("pairs", t)``: per-pair constants (``2P × w``, covariates).
    """

    blocks: list[tuple[str, Tensor]]

    @property
    def width(self) -> int:
        return sum(t.shape[1] for _, t in self.blocks)


@dataclass
class _Hidden:
    """A hidden layer before any nonlinearity: ``values[index] + dense``, affine in the gene blocks.

    ``values`` lives on the distinct rows; ``weights`` holds per gene block ``(u, w)`` with ``w`` (``K × G``) the
    derivative with respect to ``u``.
    """

    values: Tensor
    dense: Tensor | None
    weights: list[tuple[Tensor, Tensor]]


@dataclass
class _Distinct:
    """Past the first nonlinearity, on the distinct rows.

    ``values`` ((n + B) × width), the first layer ``tap`` (:class:`_Hidden`, whose values are the chain's input) and
    the :class:`DistinctStep` s from it to here.
    """

    values: Tensor
    tap: _Hidden
    steps: tuple[DistinctStep, ...]


class _NotDistinct(BaseException):
    """The model mixes pairs after the first layer (or does what the distinct rows do not cover): use pairs."""


@dataclass
class _Tap:
    """Where the multipliers are taken.

    The cells' half of a hidden layer (``leaf``: with gradient for the backward pass), its ``weights`` (see
    :class:`_Hidden`) and the varying pair-batch tensor (``full``) it is part of.
    """

    leaf: Tensor
    weights: list[tuple[Tensor, Tensor]]
    full: Tensor


#: elementwise ops the shortcut applies to the distinct rows of a map of the genes
_GENEWISE = ELEMENTWISE | frozenset(
    "add sub subtract rsub neg negative positive mul multiply to type float double type_as contiguous clone dropout "
    "dropout1d alpha_dropout feature_alpha_dropout batch_norm".split()
)
#: per-column affine ops folded into a hidden layer's weights
_AFFINE = frozenset(
    "add sub subtract rsub neg negative positive mul multiply div divide true_divide contiguous clone dropout "
    "dropout1d alpha_dropout feature_alpha_dropout batch_norm".split()
)
_LINEAR_LAYERS = frozenset({"linear", "matmul", "mm", "addmm"})
#: reshaping ops, identities when they keep the shape
_RESHAPES = frozenset({"flatten", "view", "reshape", "squeeze", "contiguous"})
_CATS = frozenset({"cat", "concat", "concatenate", "hstack", "column_stack"})


@dataclass
class _Shortcut:
    """The first-layer shortcut for the chunks of one call."""

    cache: BackgroundCache

    def run(self, forward, chunk: _Chunk, chain: bool):
        """Explain one chunk; with ``chain``, only if the model is a chain of layers (else ``None``)."""
        n = chunk.x.shape[0]
        distinct = torch.cat([chunk.x, chunk.bg])
        tracker = _Tracker(torch.cat([chunk.cell_of_pair, n + chunk.bg_of_pair]), chunk.n_pairs)
        pairs = tracker.track(_Genes([("rows", distinct)]), (2 * chunk.n_pairs, distinct.shape[1]), distinct)
        mode = DeepLiftMode(chunk.n_pairs, tracker, tape=ChainTape(chunk.n_pairs) if chain else None)
        with mode:
            out = forward(pairs, chunk.cov_pairs())
            out = tracker.output(mode, out)
        if not tracker.taps:
            raise _NoShortcut("the input reaches the output without a Linear layer")
        if bool(torch.isnan(out.detach()).any()):
            raise _NoShortcut("NaN output: the model may read its input outside torch functions")
        x_out, index, f_x, f_bg = chunk.outputs(out, mode)
        multipliers = _multipliers(chunk, mode, out, x_out, index, tracker.taps)
        if multipliers is None:
            return None
        with torch.no_grad():
            parts = [self._sums(chunk, m, tap.weights, t)
                     for t, (tap, m) in enumerate(zip(tracker.taps, multipliers, strict=True))]
        for part in parts[1:]:
            parts[0].add(part)
        return parts[0], f_x, f_bg, list(mode.unruled)

    def run_distinct(self, forward, chunk: _Chunk):
        """Explain one chunk on the distinct rows, or ``None`` if pairs mix after the first layer."""
        n, nb = chunk.x.shape[0], chunk.bg.shape[0]
        distinct = torch.cat([chunk.x, chunk.bg])
        tracker = _Tracker(torch.cat([chunk.cell_of_pair, n + chunk.bg_of_pair]), chunk.n_pairs, distinct=True)
        pairs = tracker.track(_Genes([("rows", distinct)]), (2 * chunk.n_pairs, distinct.shape[1]), distinct)
        mode = DeepLiftMode(chunk.n_pairs, tracker)
        try:
            with mode:
                out = tracker.output(mode, forward(pairs, chunk.cov_pairs()))
        except _NotDistinct as why:
            logger.debug("deeplift_shap: pairs (%s)", why)
            return None
        record = tracker.distinct_output(out)
        if record is None or record.values.dim() != 2:
            return None
        values = record.values
        if bool(torch.isnan(values).any()):
            raise _NoShortcut("NaN output: the model may read its input outside torch functions")
        n_out = values.shape[1]
        if int(chunk.classes.max()) >= n_out or int(chunk.classes.min()) < 0:
            raise ValueError(f"`classes` must be output indices in [0, {n_out}); the model has {n_out} outputs.")
        f_x = values[:n].gather(1, chunk.classes) * nb
        f_bg = values[n:].sum(0)[chunk.classes]
        if not record.steps and record.tap.dense is not None:  # a linear model of the genes and covariates
            dense = record.tap.dense.detach().view(2, nb, n, n_out).sum(1)
            f_x = f_x + dense[0].gather(1, chunk.classes)
            f_bg = f_bg + dense[1].gather(1, chunk.classes)
        m = DistinctMultipliers(list(record.steps), chunk.classes, n_out, n, nb, values.dtype)
        with torch.no_grad():
            if m.constant and _LINEAR:  # no nonlinearity after the genes' elementwise maps: the closed form
                sums = linear_sums(m.head, record.tap.weights, chunk.x, chunk.bg, chunk.request)
            else:
                sums = self._sums(chunk, m, record.tap.weights, 0)
        return sums, f_x, f_bg, list(mode.unruled)

    def _sums(self, chunk: _Chunk, m, weights: list[tuple[Tensor, Tensor]], tap: int) -> ChunkSums:
        """The gene-level sums of one tap (:func:`~._deeplift_genes.shortcut_sums`)."""
        n = chunk.x.shape[0]
        products = [self.cache.products(u[n:], w, key=(tap, j, chunk.b0), bg=chunk.bg)
                    for j, (u, w) in enumerate(weights)]
        return shortcut_sums(m, chunk.classes.shape[1], weights, chunk.x, chunk.bg, products, chunk.request)


class _Tracker:
    """Follows the pair input on the distinct rows only, up to the first nonlinearity after a ``Linear`` layer.

    Covered: elementwise maps of the genes, concatenation with covariates, ``Linear`` layers and per-column
    affine maps (batch norm, scaling, ...).

    A tracked tensor is a stand-in of the right shape filled with NaN (never materialised): every op that reads it
    comes here. When a hidden layer meets anything else (a nonlinearity), it is materialised on the pair batch and
    becomes a tap; any other use of a map of the genes ends the shortcut (:class:`_NoShortcut`). Should a model
    read a stand-in some other way, NaN shows in its output and the generic path takes over.
    """

    def __init__(self, index: Tensor, n_pairs: int, *, distinct: bool = False):
        self.index = index
        self.n_pairs = n_pairs
        self.distinct = distinct
        self.taps: list[_Tap] = []
        self._records = WeakTensorKeyDictionary()
        self._materialised = WeakTensorKeyDictionary()

    def track(self, record: _Genes | _Hidden, shape: tuple[int, ...], like: Tensor) -> Tensor:
        stand_in = torch.full((), math.nan, dtype=like.dtype, device=like.device).expand(shape)
        self._records[stand_in] = record
        return stand_in

    def owns_tensor(self, t) -> bool:
        return isinstance(t, Tensor) and t in self._records

    def owns(self, call: Call) -> bool:
        return any(self.owns_tensor(t) for t in call.leaves)

    def output(self, mode: DeepLiftMode, out):
        """The model's output, materialised if it is a hidden layer."""
        if not self.owns_tensor(out):
            return out
        record = self._records[out]
        if isinstance(record, _Genes):
            raise _NoShortcut("the output is an elementwise map of the input")
        if isinstance(record, _Distinct):
            return out
        if self.distinct:  # a linear model: a chain without steps
            return self._distinct_result(_Distinct(record.values.detach(), record, ()))
        return self._materialise(mode, out, record)

    def distinct_output(self, out) -> _Distinct | None:
        """The record of the model's output if it was computed on the distinct rows."""
        record = self._records.get(out) if self.owns_tensor(out) else None
        return record if isinstance(record, _Distinct) else None

    def handle(self, mode: DeepLiftMode, call: Call):
        name = call.name
        if is_metadata(name):
            return call.run()
        records = {i: self._records[t] for i, t in enumerate(call.leaves) if self.owns_tensor(t)}
        others_vary = any(mode.is_varying(t) for t in call.leaves)
        plain = inplace_target(call) is None and not (name in TRAINING_ARG and training_flag(call))
        if name in _RESHAPES and plain and len(records) == 1 and not others_vary:
            (pos,) = records
            if _result_shape(call, pos) == call.leaves[pos].shape:  # e.g. nn.Flatten() of a matrix
                return call.leaves[pos]
        if any(isinstance(r, _Genes) for r in records.values()):
            if not plain or others_vary or (len(records) > 1 and name not in _CATS):
                raise _NoShortcut(f"`{name}` on the input (in place, in training mode or with another input)")
            return self._genes_op(mode, call, records)
        if any(isinstance(r, _Distinct) for r in records.values()):
            if not plain or others_vary or len(records) > 1:
                raise _NotDistinct(f"`{name}` (in place, in training mode or with another varying tensor)")
            ((pos, record),) = records.items()
            return self._distinct_op(call, pos, record)
        if plain and len(records) == 1 and not others_vary:
            ((pos, record),) = records.items()
            out = self._hidden_op(call, pos, record)
            if out is not None:
                return out
            if self.distinct and record.dense is None:  # the first nonlinearity
                step = _secant_step(call, pos, record.values)
                if step is not None:
                    return self._distinct_result(_Distinct(step.y, record, (step,)))
        # anything else (a nonlinearity, in place or not) sees the hidden layer on the pair batch
        stand_ins = {i: self._materialise(mode, call.leaves[i], r) for i, r in records.items()}
        return mode.dispatch(call.replaced(stand_ins))

    # --- maps of the genes
    def _genes_op(self, mode: DeepLiftMode, call: Call, records: dict[int, _Genes]):
        name = call.name
        if name in _LINEAR_LAYERS:
            return self._first_layer(call, records)
        if name in _CATS:
            return self._cat(mode, call)
        if name in _GENEWISE:
            ((pos, record),) = records.items()
            if len(record.blocks) != 1 or record.blocks[0][0] != "rows":
                raise _NoShortcut(f"`{name}` on covariates joined to the input")
            values = _apply_to_rows(call, pos, record.blocks[0][1])
            if values is None:
                raise _NoShortcut(f"`{name}` is not elementwise here")
            return self.track(_Genes([("rows", values)]), call.leaves[pos].shape, values)
        raise _NoShortcut(f"`{name}` on the input")

    def _cat(self, mode: DeepLiftMode, call: Call) -> Tensor:
        tensors = call.args[0] if call.args else call.kwargs.get("tensors")
        dim = 1 if call.name in {"hstack", "column_stack"} else _cat_dim(call)
        if not isinstance(tensors, list | tuple) or any(not isinstance(t, Tensor) or t.dim() != 2 for t in tensors):
            raise _NoShortcut(f"`{call.name}` of non-matrices with the input")
        if dim % 2 != 1:
            raise _NoShortcut(f"`{call.name}` of the input along the cells")
        blocks: list[tuple[str, Tensor]] = []
        for t in tensors:
            record = self._records.get(t) if self.owns_tensor(t) else None
            if isinstance(record, _Genes):
                blocks.extend(record.blocks)
            elif record is None and not mode.is_varying(t) and t.shape[0] == 2 * self.n_pairs:
                blocks.append(("pairs", t))
            else:
                raise _NoShortcut(f"`{call.name}` of the input with a tensor that is not a per-pair constant")
        record = _Genes(blocks)
        return self.track(record, (2 * self.n_pairs, record.width), tensors[0])

    def _first_layer(self, call: Call, records: dict[int, _Genes]) -> Tensor:
        layer = linear_layer(call)
        if layer is None or len(records) != 1 or not self.owns_tensor(layer[0]):
            raise _NoShortcut(f"`{call.name}` of the input is not a plain Linear layer")
        x, weight, bias = layer
        record = self._records[x]
        if record.width != weight.shape[1]:
            raise _NoShortcut(f"`{call.name}`: shapes do not match")
        values = dense = None
        weights, col = [], 0
        for kind, t in record.blocks:
            w = weight[:, col : col + t.shape[1]]
            col += t.shape[1]
            if kind == "rows":
                weights.append((t, w))
                values = t @ w.T if values is None else values + t @ w.T
            else:
                t = t.to(w.dtype)  # a per-pair constant joined by torch.cat may be an integer one-hot
                dense = t @ w.T if dense is None else dense + t @ w.T
        if values is None:
            raise _NoShortcut("a Linear layer of covariates only")
        if bias is not None:
            values = values + bias
        return self.track(_Hidden(values, dense, weights), (2 * self.n_pairs, weight.shape[0]), values)

    # --- hidden layers before any nonlinearity
    def _hidden_op(self, call: Call, pos: int, record: _Hidden) -> Tensor | None:
        """A per-column affine op or a Linear layer on the distinct rows; ``None`` if it is neither."""
        name, stand_in = call.name, call.leaves[pos]
        if name in _LINEAR_LAYERS:
            layer = linear_layer(call)
            if layer is None or layer[0] is not stand_in:
                return None
            _, weight, bias = layer
            values = torch.nn.functional.linear(record.values, weight, bias)
            dense = None if record.dense is None else record.dense @ weight.T
            weights = [(u, weight @ w) for u, w in record.weights]
        elif name in _AFFINE and not (name in DIVISION and pos != first_tensor(call)):
            values = _apply_to_rows(call, pos, record.values)
            if values is None:
                return None
            probe = torch.stack([torch.zeros_like(values[0]), torch.ones_like(values[0])])
            ends = call.run({pos: probe})
            scale = ends[1] - ends[0]
            dense = None if record.dense is None else record.dense * scale
            weights = [(u, scale[:, None] * w) for u, w in record.weights]
        else:
            return None
        return self.track(_Hidden(values, dense, weights), (2 * self.n_pairs, values.shape[1]), values)

    # --- past the first nonlinearity, on the distinct rows
    def _distinct_op(self, call: Call, pos: int, record: _Distinct) -> Tensor:
        """A ``Linear`` layer, per-column affine map or elementwise nonlinearity of the distinct rows."""
        name, stand_in = call.name, call.leaves[pos]
        step = None
        if name in _CATS:
            tensors = call.args[0] if call.args else call.kwargs.get("tensors")
            if isinstance(tensors, list | tuple) and len(tensors) == 1 and tensors[0] is stand_in:
                return stand_in  # scvi-tools' FCLayers joins no covariates: a concatenation of one
        elif name in _LINEAR_LAYERS:
            layer = linear_layer(call)
            if layer is not None and layer[0] is stand_in and not self._varies(layer[1:]):
                _, weight, bias = layer
                values = torch.nn.functional.linear(record.values, weight, bias)
                step = DistinctStep("matrix", weight.detach())
        elif (name in _AFFINE and not (name in DIVISION and pos != first_tensor(call))
              and call.kwargs.get("rounding_mode") is None):
            values = _apply_to_rows(call, pos, record.values)
            if values is not None:
                probe = torch.stack([torch.zeros_like(values[0]), torch.ones_like(values[0])])
                ends = call.run({pos: probe})
                scale = (ends[1] - ends[0]).detach()
                step = None if bool((scale == 1).all()) else DistinctStep("scale", scale)
                steps = record.steps if step is None else (*record.steps, step)
                return self._distinct_result(_Distinct(values.detach(), record.tap, steps))
        else:
            step = _secant_step(call, pos, record.values)
            values = None if step is None else step.y
        if step is None:
            raise _NotDistinct(f"`{name}` on a hidden layer")
        return self._distinct_result(_Distinct(values.detach(), record.tap, (*record.steps, step)))

    def _varies(self, tensors) -> bool:
        return any(self.owns_tensor(t) for t in tensors)

    def _distinct_result(self, record: _Distinct) -> Tensor:
        """A stand-in (the shape of the pair batch) for a layer on the distinct rows."""
        return self.track(record, (2 * self.n_pairs, *record.values.shape[1:]), record.values)

    def _materialise(self, mode: DeepLiftMode, stand_in: Tensor, record: _Hidden) -> Tensor:
        """The hidden layer on the pair batch; its cells' half becomes a tap (once per stand-in)."""
        done = self._materialised.get(stand_in)
        if done is not None:
            return done
        if self.distinct:
            raise _NotDistinct("a hidden layer is needed on the pairs")
        p = self.n_pairs
        if mode.tape is not None:  # values only
            full = record.values.index_select(0, self.index)
            if record.dense is not None:
                full = full + record.dense
            leaf = full[:p]
            mode.mark(full)
        else:
            z_x, z_bg = record.values.index_select(0, self.index[:p]), record.values.index_select(0, self.index[p:])
            if record.dense is not None:
                z_x, z_bg = z_x + record.dense[:p], z_bg + record.dense[p:]
            leaf = z_x.detach().requires_grad_(True)
            full = mode.join((leaf, z_bg))
        self.taps.append(_Tap(leaf, record.weights, full))
        self._materialised[stand_in] = full
        return full


def _secant_step(call: Call, pos: int, z: Tensor) -> DistinctStep | None:
    """An elementwise nonlinearity of the distinct rows ``z`` (the stand-in at ``pos``), or ``None``."""
    name = call.name
    if (name not in ELEMENTWISE or (name in DIVISION and pos == first_tensor(call))
            or call.kwargs.get("rounding_mode") is not None):
        return None
    z = z.detach()
    y = _apply_to_rows(call, pos, z)
    if y is None:
        return None
    return DistinctStep("secant", z=z, y=y.detach(), fn=partial(_run_at, call, pos),
                        piecewise_linear=name in PIECEWISE_LINEAR)


def _run_at(call: Call, pos: int, t: Tensor) -> Tensor:
    return call.run({pos: t})


def _result_shape(call: Call, pos: int) -> torch.Size | None:
    """Shape of ``call``'s result with a meta tensor in place of the stand-in at ``pos`` (``None`` if it fails)."""
    t = call.leaves[pos]
    try:
        out = call.run({pos: torch.empty(t.shape, dtype=t.dtype, device="meta")})
    except (RuntimeError, TypeError, ValueError):
        return None
    return out.shape if isinstance(out, Tensor) else None


def _cat_dim(call: Call) -> int:
    return call.kwargs.get("dim", call.args[1] if len(call.args) > 1 else 0)


def _apply_to_rows(call: Call, pos: int, values: Tensor) -> Tensor | None:
    """``call`` on the distinct rows ``values`` instead of the stand-in at ``pos``.

    ``None`` unless it maps each row on its own (constants broadcast along the rows) and keeps shape and dtype.
    """
    for i, other in enumerate(call.leaves):
        if i != pos and isinstance(other, Tensor) and other.dim() >= 2 and other.shape[0] != 1:
            return None
    out = call.run({pos: values})
    if not isinstance(out, Tensor) or out.shape != values.shape or out.dtype != values.dtype:
        return None
    return out
