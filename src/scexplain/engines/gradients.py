"""Gradient attributions: SmoothGrad, VarGrad and integrated gradients (pure numerics, no AnnData inside).

Every function takes ``forward(x, cov) -> outputs`` (rows × outputs), a chunk of cells ``x`` (n × G), their
covariates ``cov`` (n × k or ``None``) and ``classes`` (n × C output indices explained for each cell), and returns
n × C × G attributions. Rows are assumed independent (a model in eval mode: no batch statistics), so the gradient
of Σ_rows f[row, class(row)] is every row's own gradient; all C targets come from one batched backward
(``torch.autograd.grad(..., is_grads_batched=True)``) over one forward of all noisy / interpolated rows. Work is
cut into blocks of cells so that the C × rows × G gradient tensor stays under ``budget`` elements.

Covariates of a cell are repeated for each of its noisy or interpolated rows: gradients are with respect to the
model's inputs with covariates fixed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from numbers import Real

import numpy as np
import torch

__all__ = [
    "DEFAULT_BUDGET",
    "IG_METHODS",
    "NoiseSampler",
    "check_integration",
    "check_noise",
    "input_gradients",
    "integrated_gradients",
    "noise_scale",
    "quadrature",
    "smoothgrad",
    "vargrad",
]

#: default maximum number of elements of the C × rows × G gradient tensor evaluated at once (64 MiB in float32):
#: large enough that few, large operations run (fewer thread synchronisations on a busy CPU), small enough to
#: bound memory whatever the number of genes, samples and targets
DEFAULT_BUDGET = 2**24

#: quadrature rules on α ∈ [0, 1] for integrated gradients
IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right")

Forward = Callable[..., torch.Tensor]


# --- parameter checks (raise before anything runs) ---------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def _is_real(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool | np.bool_)


def check_noise(
    n_samples, noise_level, stdev, *, min_samples: int = 1, default_level: float = 0.1
) -> tuple[float | None, float | None]:
    """Validate the noise parameters; return ``(noise_level, stdev)`` with exactly one of them set.

    ``noise_level=None`` and ``stdev=None`` mean ``noise_level=default_level``. Raises :class:`TypeError` for
    non-numbers and :class:`ValueError` for ``n_samples < min_samples``, negative or non-finite noise, or both
    ``noise_level`` and ``stdev`` given.
    """
    if not _is_int(n_samples):
        raise TypeError(f"`n_samples` must be an integer, got {n_samples!r}.")
    if n_samples < min_samples:
        raise ValueError(f"`n_samples` must be at least {min_samples}, got {n_samples}.")
    if noise_level is not None and stdev is not None:
        raise ValueError(
            "Pass either `noise_level` (σ relative to each cell's input range) or `stdev` (absolute σ), not both."
        )
    for name, v in (("noise_level", noise_level), ("stdev", stdev)):
        if v is None:
            continue
        if not _is_real(v):
            raise TypeError(f"`{name}` must be a number, got {v!r}.")
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"`{name}` must be a finite non-negative number, got {v!r}.")
    if stdev is not None:
        return None, float(stdev)
    return float(default_level if noise_level is None else noise_level), None


def check_integration(n_steps, method: str) -> None:
    """Validate ``n_steps`` (≥ 1, ≥ 2 for the trapezoid rule) and the quadrature ``method``."""
    if not _is_int(n_steps):
        raise TypeError(f"`n_steps` must be an integer, got {n_steps!r}.")
    if method not in IG_METHODS:
        raise ValueError(f"Unknown integration `method={method!r}`; choose one of {list(IG_METHODS)}.")
    least = 2 if method == "riemann_trapezoid" else 1
    if n_steps < least:
        raise ValueError(f"`n_steps` must be at least {least} for method={method!r}, got {n_steps}.")


def quadrature(n_steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """Nodes α and weights w on [0, 1] with Σ_k w_k g(α_k) ≈ ∫₀¹ g(α) dα.

    ``"gausslegendre"``: Gauss–Legendre nodes (exact for polynomials of degree 2·n_steps − 1; the same nodes and
    weights as captum). ``"riemann_trapezoid"``: n_steps equally spaced nodes from 0 to 1 with weights
    1/(n_steps − 1), halved at both ends, so that they sum to 1 (captum uses 1/n_steps, whose weights sum to
    1 − 1/n_steps). ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``: weights 1/n_steps at the left
    ends, right ends or midpoints of n_steps equal intervals (as captum).
    """
    check_integration(n_steps, method)
    n = int(n_steps)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (1.0 + nodes), 0.5 * weights
    if method == "riemann_trapezoid":
        weights = np.full(n, 1.0 / (n - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, n), weights
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[method]
    return (np.arange(n) + offset) / n, np.full(n, 1.0 / n)


# --- gradients of all targets at once ----------------------------------------------------------------------------
def _class_gradients(forward: Forward, rows: torch.Tensor, cov, classes: torch.Tensor) -> torch.Tensor:
    """C × R × G: gradient of output ``classes[r, c]`` at row ``r`` with respect to that row, one backward."""
    n_cls = classes.shape[1]
    with torch.enable_grad():
        rows = rows.detach().requires_grad_(True)
        out = forward(rows, cov)
        if out.ndim != 2 or out.shape[0] != rows.shape[0]:
            raise ValueError(f"The model returned shape {tuple(out.shape)}; expected (rows, outputs).")
        # one-hot selections: C × R × K, selection c picks output classes[r, c] of row r
        sel = torch.zeros((n_cls, *out.shape), dtype=out.dtype, device=out.device)
        sel.scatter_(2, classes.T.unsqueeze(-1), 1.0)
        if n_cls == 1:
            return torch.autograd.grad(out, rows, sel[0])[0].unsqueeze(0)
        try:  # retain_graph: the fallback needs the graph if vmap fails midway (freed on return anyway)
            return torch.autograd.grad(out, rows, sel, is_grads_batched=True, retain_graph=True)[0]
        except RuntimeError:  # an op without a batching rule: one backward per target
            return torch.stack(
                [torch.autograd.grad(out, rows, sel[c], retain_graph=c < n_cls - 1)[0] for c in range(n_cls)]
            )


def input_gradients(forward: Forward, x: torch.Tensor, classes: torch.Tensor, cov=None) -> torch.Tensor:
    """Gradients ∂f_{classes[i, c]}(x_i)/∂x_i, n × C × G (plain saliency, signed)."""
    return _class_gradients(forward, x, cov, classes).permute(1, 0, 2)


def _cell_blocks(n_cells: int, per_cell: int, budget: int) -> Iterator[slice]:
    """Consecutive slices of cells, each costing at most ``budget`` elements (at least one cell)."""
    step = max(1, int(budget) // max(1, per_cell))
    for start in range(0, n_cells, step):
        yield slice(start, min(start + step, n_cells))


# --- noise --------------------------------------------------------------------------------------------------------
def noise_scale(x: torch.Tensor, noise_level: float | None, stdev: float | None) -> torch.Tensor:
    """σ per cell (n): ``noise_level · (max_g x − min_g x)`` over the cell's inputs, or the absolute ``stdev``."""
    if stdev is not None:
        return torch.full((x.shape[0],), float(stdev), dtype=x.dtype, device=x.device)
    return float(noise_level) * (x.amax(dim=1) - x.amin(dim=1))


_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (uint64 → well-mixed uint64), vectorised; wraps modulo 2**64."""
    with np.errstate(over="ignore"):
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


class NoiseSampler:
    """Gaussian input noise, reproducible per cell.

    The draws of the cell with global index ``i`` (its row in the AnnData) come from a generator seeded by a hash
    of ``(random_state, i)``: they do not depend on how cells are chunked or in which order blocks run (on a
    cluster too), on the device or on the dtype (standard normals are drawn on the CPU in float32, exact in float64
    too, then moved, cast and scaled). The sampler holds no state between calls.

    Parameters
    ----------
    n_samples
        Noisy samples per cell.
    noise_level, stdev
        σ relative to each cell's input range, or absolute (see :func:`noise_scale`).
    random_state
        Seed; ``None`` draws a fresh one.
    """

    def __init__(self, n_samples: int, *, noise_level: float | None, stdev: float | None, random_state: int | None):
        self.n_samples = int(n_samples)
        self.noise_level, self.stdev = noise_level, stdev
        base = np.random.SeedSequence().entropy if random_state is None else random_state
        self._base = _splitmix64(np.asarray([int(base) % 2**64], dtype=np.uint64))[0]

    def standard(self, rows: np.ndarray, n_genes: int) -> torch.Tensor:
        """Standard normal draws (n × S × G) of the cells with global indices ``rows`` (CPU, float32)."""
        idx = np.asarray(rows, dtype=np.uint64)
        seeds = _splitmix64(self._base ^ _splitmix64(idx))
        out = torch.empty((len(idx), self.n_samples, n_genes), dtype=torch.float32)
        gen = torch.Generator(device="cpu")
        for i, seed in enumerate(seeds.tolist()):
            gen.manual_seed(seed)
            torch.randn((self.n_samples, n_genes), generator=gen, dtype=torch.float32, out=out[i])
        return out

    def __call__(self, x: torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
        """Noise ε (n × S × G) for the cells ``x`` with global indices ``rows`` (default ``0 … n−1``)."""
        rows = np.arange(x.shape[0]) if rows is None else np.asarray(rows)
        if rows.shape != (x.shape[0],):
            raise ValueError(f"`rows` must give one global index per cell ({x.shape[0]}), got shape {rows.shape}.")
        eps = self.standard(rows, x.shape[1]).to(device=x.device, dtype=x.dtype)
        return eps.mul_(noise_scale(x, self.noise_level, self.stdev)[:, None, None])


# --- SmoothGrad / VarGrad ------------------------------------------------------------------------------------------
def _noisy_reduce(
    forward: Forward,
    x: torch.Tensor,
    classes: torch.Tensor,
    noise: torch.Tensor,
    cov,
    reduce: Callable[[torch.Tensor], torch.Tensor],
    budget: int,
) -> torch.Tensor:
    """The ``reduce`` (C × m × S × G → C × m × G, over samples) of the gradients at ``x + noise``, n × C × G."""
    n, n_samples, n_genes = noise.shape
    if x.shape != (n, n_genes):
        raise ValueError(f"`noise` has shape {tuple(noise.shape)}, expected ({x.shape[0]}, S, {x.shape[1]}).")
    n_cls = classes.shape[1]
    parts = []
    for block in _cell_blocks(n, n_samples * n_cls * n_genes, budget):
        m = block.stop - block.start
        rows = (x[block].unsqueeze(1) + noise[block]).reshape(m * n_samples, n_genes)
        rep_cov = None if cov is None else cov[block].repeat_interleave(n_samples, dim=0)
        rep_cls = classes[block].repeat_interleave(n_samples, dim=0)
        grads = _class_gradients(forward, rows, rep_cov, rep_cls).view(n_cls, m, n_samples, n_genes)
        parts.append(reduce(grads))
    return torch.cat(parts, dim=1).permute(1, 0, 2)


def vargrad(
    forward: Forward,
    x: torch.Tensor,
    classes: torch.Tensor,
    noise: torch.Tensor,
    cov=None,
    *,
    ddof: int = 0,
    budget: int = DEFAULT_BUDGET,
) -> torch.Tensor:
    """VarGrad: n × C × G variance over the S noisy samples of the input gradient.

    ``Σ_s (g_s − ḡ)² / (S − ddof)``: ``ddof=0`` is the population variance E[g²] − E[g]² (as captum's
    NoiseTunnel), ``ddof=1`` the unbiased one. Computed from centred gradients (no cancellation in float32).

    Parameters
    ----------
    forward
        ``forward(x, cov) -> rows × outputs``.
    x
        n × G inputs.
    classes
        n × C output indices (long) explained for each cell.
    noise
        n × S × G additive noise: sample ``s`` of cell ``i`` is ``x[i] + noise[i, s]``.
    cov
        n × k covariates (repeated for each sample of a cell) or ``None``.
    ddof
        Delta degrees of freedom of the variance.
    budget
        Maximum elements of the gradient tensor evaluated at once.
    """
    n_samples = noise.shape[1]
    if n_samples <= ddof:
        raise ValueError(f"VarGrad with ddof={ddof} needs more than {ddof} samples, got {n_samples}.")

    def reduce(g: torch.Tensor) -> torch.Tensor:  # g is a fresh buffer: centre it in place
        return g.sub_(g.mean(dim=2, keepdim=True)).square_().sum(dim=2).div_(n_samples - ddof)

    return _noisy_reduce(forward, x, classes, noise, cov, reduce, budget)


def smoothgrad(
    forward: Forward,
    x: torch.Tensor,
    classes: torch.Tensor,
    noise: torch.Tensor,
    cov=None,
    *,
    square: bool = False,
    multiply_by_inputs: bool = False,
    budget: int = DEFAULT_BUDGET,
) -> torch.Tensor:
    """SmoothGrad: n × C × G mean over the S noisy samples of the input gradient.

    ``square=True`` averages squared gradients (SmoothGrad², captum's ``"smoothgrad_sq"``);
    ``multiply_by_inputs=True`` multiplies the average by the noise-free input ``x``. Other parameters as in
    :func:`vargrad`.
    """

    def reduce(g: torch.Tensor) -> torch.Tensor:
        return g.square().mean(dim=2) if square else g.mean(dim=2)

    out = _noisy_reduce(forward, x, classes, noise, cov, reduce, budget)
    return out * x.unsqueeze(1) if multiply_by_inputs else out


# --- integrated gradients ---------------------------------------------------------------------------------------
def _gather(out: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return out.gather(1, classes)


def integrated_gradients(
    forward: Forward,
    x: torch.Tensor,
    classes: torch.Tensor,
    baselines: torch.Tensor,
    cov=None,
    *,
    n_steps: int = 50,
    method: str = "gausslegendre",
    budget: int = DEFAULT_BUDGET,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integrated gradients toward each of B baselines, averaged over the baselines.

    φ_i = mean_b (x_i − b) ⊙ Σ_k w_k ∇f(b + α_k (x_i − b)) with the quadrature (α_k, w_k) of :func:`quadrature`;
    with several baselines this is the expected-gradients estimate over a background. Completeness:
    Σ_g φ_ig → f(x_i) − mean_b f(b) as ``n_steps`` grows.

    Parameters
    ----------
    forward, x, classes, cov, budget
        As in :func:`vargrad`; a cell's covariates are used for its baselines too.
    baselines
        B × G reference inputs (e.g. one row of zeros, the background mean, or background cells).
    n_steps, method
        Quadrature (see :func:`quadrature`).

    Returns
    -------
    ``(attributions, output, reference)``: n × C × G, and n × C values f(x) and mean_b f(b) of the explained outputs.
    """
    alphas, weights = quadrature(n_steps, method)
    alphas_t = torch.as_tensor(alphas, dtype=x.dtype, device=x.device)
    weights_t = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
    n, n_genes = x.shape
    n_base, n_cls, n_k = baselines.shape[0], classes.shape[1], len(alphas)
    attr = torch.zeros((n_cls, n, n_genes), dtype=x.dtype, device=x.device)
    ref = torch.zeros((n, n_cls), dtype=x.dtype, device=x.device)
    # work items are (cell, baseline) pairs, cell-major; each costs n_steps rows
    for block in _cell_blocks(n * n_base, n_k * n_cls * n_genes, budget):
        pair = torch.arange(block.start, block.stop, device=x.device)
        cell, base = pair // n_base, pair % n_base
        diff = x[cell] - baselines[base]  # P × G
        rows = (baselines[base].unsqueeze(1) + alphas_t[None, :, None] * diff.unsqueeze(1)).reshape(-1, n_genes)
        pair_cov = None if cov is None else cov[cell]
        rep_cov = None if cov is None else pair_cov.repeat_interleave(n_k, dim=0)
        rep_cls = classes[cell].repeat_interleave(n_k, dim=0)
        grads = _class_gradients(forward, rows, rep_cov, rep_cls).view(n_cls, len(pair), n_k, n_genes)
        path = torch.einsum("cpkg,k->cpg", grads, weights_t).mul_(diff.unsqueeze(0))
        attr.index_add_(1, cell, path)
        with torch.no_grad():
            ref.index_add_(0, cell, _gather(forward(baselines[base], pair_cov), classes[cell]))
    with torch.no_grad():
        fx = _gather(forward(x, cov), classes)
    return attr.permute(1, 0, 2).div_(n_base), fx, ref.div_(n_base)
