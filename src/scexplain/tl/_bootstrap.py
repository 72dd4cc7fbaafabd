"""Uncertainty of the group summaries in the same pass: a two-way bootstrap over cells and background cells.

A group summary is the mean attribution of the group's cells toward their group, m_k[g] = 1/n_k Σ_{i∈k} φ_i[g], with
φ_i = 1/B Σ_b φ_ib the average over background cells b of per-pair terms. Rerunning with other background cells, or
on other cells of the same type, changes it; scanvi-explainer's bootstrapper reruns everything 25 times. Here the
replicates come from partial sums kept during the one pass over the cells:

- cells are resampled by the *Poisson bootstrap*: replicate r gives cell i the weight v_ri ~ Poisson(1), drawn from
  a hash of (seed, r, the cell's global index) — so each block computes its share without knowing the others, on
  any worker, in any order; the block keeps T[r, k, g] = Σ_{i∈k} v_ri φ_i[g] and V[r, k] = Σ_{i∈k} v_ri;
- background cells are resampled with replacement (multinomial weights w_rb, Σ_b w_rb = B) from the per-(group,
  background cell) sums S[k, b, g] = Σ_{i∈k} φ_ib[g] that the engine returns;
- replicate r of the summary is the linearised two-way bootstrap
  ``m_rk = T[r, k] / V[r, k] + 1/(n_k B) Σ_b (w_rb − 1) S[k, b]``: the resampled cells' mean with the background
  fixed, plus the change a resampled background makes with the cells fixed (the interaction of the two
  resamplings, of second order, is left out).

From the R replicates: a percentile interval (``ci_low``, ``ci_high``) and ``rank_stability``, the fraction of
replicates in which a feature is among the group's top ``n_top`` by its replicate mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BootstrapSpec", "background_weights", "cell_partials", "cell_weights", "summarise"]

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = (np.asarray(z, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)) & _M64
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
    return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class BootstrapSpec:
    """How to bootstrap: ``n_bootstrap`` replicates, a ``level`` percentile interval, top-``n_top`` stability."""

    n_bootstrap: int
    seed: int
    level: float = 0.95
    n_top: int = 20

    def __post_init__(self):
        if not isinstance(self.n_bootstrap, int | np.integer) or isinstance(self.n_bootstrap, bool) \
                or self.n_bootstrap < 2:
            raise ValueError(f"`n_bootstrap` must be an integer ≥ 2 (or 0/None for none), got {self.n_bootstrap!r}.")
        if not 0 < self.level < 1:
            raise ValueError(f"`ci_level` must lie strictly between 0 and 1, got {self.level!r}.")
        if not isinstance(self.n_top, int | np.integer) or self.n_top < 1:
            raise ValueError(f"`n_top` must be a positive integer, got {self.n_top!r}.")

    def params(self) -> dict:
        """The entries of ``uns[key]["params"]["bootstrap"]``."""
        return {"n_bootstrap": int(self.n_bootstrap), "ci_level": float(self.level), "n_top": int(self.n_top),
                "method": "two-way (Poisson over cells, multinomial over background cells), linearised"}


def cell_weights(spec: BootstrapSpec, rows: np.ndarray) -> np.ndarray:
    """Poisson(1) weights (R × n) of the cells with global indices ``rows``; the same for any chunking."""
    rows = np.asarray(rows, dtype=np.uint64)
    base = _splitmix64(np.asarray([spec.seed % 2**64], dtype=np.uint64))[0]
    out = np.empty((spec.n_bootstrap, len(rows)), dtype=np.float64)
    for r in range(spec.n_bootstrap):
        seeds = _splitmix64(base ^ _splitmix64(rows * np.uint64(spec.n_bootstrap) + np.uint64(r)))
        # inverse-CDF Poisson(1) from one uniform per cell (exact: the CDF is tabulated)
        u = (seeds >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        out[r] = np.searchsorted(_POISSON1_CDF, u, side="right")
    return out


#: CDF of Poisson(1) at 0, 1, …, 19 (the tail beyond has probability < 1e-18)
_POISSON1_CDF = np.cumsum([np.exp(-1.0) / np.prod(np.arange(1, k + 1, dtype=np.float64)) for k in range(20)])


def background_weights(spec: BootstrapSpec, n_background: int) -> np.ndarray:
    """Multinomial resampling weights (R × B) of the background cells, Σ_b w_rb = B."""
    rng = np.random.default_rng([spec.seed, 0x5EED])
    return rng.multinomial(n_background, np.full(n_background, 1.0 / n_background), size=spec.n_bootstrap) \
        .astype(np.float64)


def cell_partials(spec: BootstrapSpec, rows: np.ndarray, codes: np.ndarray, n_groups: int,
                  values: np.ndarray) -> dict[str, np.ndarray]:
    """A block's share of the cell resampling: ``T`` (R × groups × features) and ``V`` (R × groups).

    ``values`` are the block's per-cell attributions (n × features), ``codes`` the groups of all cells.
    """
    v = cell_weights(spec, rows)  # R × n
    onehot = np.zeros((n_groups, len(rows)))
    onehot[np.asarray(codes)[rows], np.arange(len(rows))] = 1.0
    weighted = (v[:, None, :] * onehot[None]).reshape(-1, len(rows))  # (R·K) × n
    T = (weighted @ np.asarray(values, dtype=np.float64)).reshape(spec.n_bootstrap, n_groups, -1)
    return {"boot_T": T, "boot_V": weighted.sum(axis=1).reshape(spec.n_bootstrap, n_groups)}


def summarise(spec: BootstrapSpec, T: np.ndarray, V: np.ndarray, S: np.ndarray, counts: np.ndarray,
              n_background: int) -> dict[str, np.ndarray]:
    """``ci_low``, ``ci_high``, ``rank_stability`` (features × groups with cells) from the pass's partial sums.

    Parameters
    ----------
    T, V
        Cell-resampling sums over all blocks (:func:`cell_partials`).
    S
        Per-(group, background cell) sums of the per-pair attributions (groups × B × features), or ``None``
        (a method without background cells: cells are resampled only).
    counts
        Cells per group.
    n_background
        B.
    """
    keep = counts > 0
    T, V, counts = T[:, keep], V[:, keep], counts[keep]
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = T / V[..., None]  # R × K × F
    # a replicate that drew no cell of a group (possible for tiny groups) falls back to the group's mean
    mean = T.sum(axis=0) / V.sum(axis=0)[:, None]
    reps = np.where(np.isfinite(reps), reps, mean[None])
    if S is not None:
        w = background_weights(spec, n_background)  # R × B
        shift = np.einsum("rb,kbf->rkf", w - 1.0, S[keep]) / (counts[None, :, None] * n_background)
        reps = reps + shift
    alpha = (1.0 - spec.level) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha], axis=0)  # K × F
    n_top = min(spec.n_top, reps.shape[2])
    top = np.argsort(-reps, axis=2, kind="stable")[..., :n_top]  # R × K × n_top
    hits = np.zeros(reps.shape)
    np.put_along_axis(hits, top, 1.0, axis=2)
    return {"ci_low": low.T, "ci_high": high.T, "rank_stability": hits.mean(axis=0).T}
