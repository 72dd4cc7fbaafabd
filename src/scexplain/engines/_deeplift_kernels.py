"""CPU kernels of the gene-level sums (:mod:`._deeplift_genes`): sparse loops that torch would run as many passes.

Single-threaded (``nogil``) loops over numpy views of torch tensors, called between the GEMMs torch runs on its
own threads. Each writes every output element in a fixed order, so results do not depend on anything but the
inputs.
"""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["add_rows", "scaled_rows", "scatter_presence"]


@nb.njit(cache=True, nogil=True)
def scaled_rows(out: np.ndarray, src: np.ndarray, rows: np.ndarray, scale: np.ndarray) -> None:  # pragma: no cover
    """``out[r] = src[rows[r]] · scale[r]`` for ``r < len(rows)`` (a gather and a scaling in one pass)."""
    width = src.shape[1]
    for r in range(rows.shape[0]):
        g = rows[r]
        s = scale[r]
        for k in range(width):
            out[r, k] = src[g, k] * s


@nb.njit(cache=True, nogil=True)
def add_rows(out: np.ndarray, rows: np.ndarray, src: np.ndarray) -> None:  # pragma: no cover - compiled
    """``out[rows[r]] += src[r]`` for ``r < len(rows)``, in order (``src`` may have more rows)."""
    width = src.shape[1]
    for r in range(rows.shape[0]):
        g = rows[r]
        for k in range(width):
            out[g, k] += src[r, k]


@nb.njit(cache=True, nogil=True)
def scatter_presence(below: np.ndarray, corr: np.ndarray, part: np.ndarray, genes: np.ndarray, b: np.ndarray,
                     inv: np.ndarray, x_t: np.ndarray, u_t: np.ndarray, consts: np.ndarray,
                     n_classes: int) -> None:  # pragma: no cover - compiled
    """For one background cell: ``below[genes[r]] += part[r]`` and the presence correction, in one pass.

    ``part``: the GEMM's rows ``u_b[g] · M_ib[g]`` (genes × (cell, class)) for the genes ``genes``; ``b`` and
    ``inv`` (``1 / u_b[g]``) per row (both 0 where ``u_b[g] = 0``). The correction adds ``κ_ib[g] · φ_ib[g]``
    to ``corr`` with ``κ = 1[x_ig > 0] − 1[x_ig > b_g]`` (``1`` for ``0 < x_ig ≤ b_g``, ``−1`` for
    ``b_g < x_ig ≤ 0``, else 0) and ``φ_ib[g] = (u_i[g] · inv − 1) · part``. ``x_t``, ``u_t``: the cells'
    values, genes × cells; ``consts``: ``[0, 1, −1]`` in the dtype of the sums. The loop over cells is branchless
    and contiguous (it vectorises).
    """
    n_cells = x_t.shape[1]
    zero, one, minus = consts[0], consts[1], consts[2]
    for r in range(genes.shape[0]):
        g = genes[r]
        bv = b[r]
        iv = inv[r]
        if bv > zero:
            lo, hi, sign = zero, bv, one
        else:
            lo, hi, sign = bv, zero, minus
        out, fix, src, x_row, u_row = below[g], corr[g], part[r], x_t[g], u_t[g]
        if n_classes == 1:
            for i in range(n_cells):
                v = src[i]
                xv = x_row[i]
                kappa = sign if (xv > lo) & (xv <= hi) else zero
                out[i] += v
                fix[i] += kappa * (u_row[i] * iv - one) * v
        else:
            for i in range(n_cells):
                xv = x_row[i]
                kappa = sign if (xv > lo) & (xv <= hi) else zero
                coef = kappa * (u_row[i] * iv - one)
                base = i * n_classes
                for c in range(n_classes):
                    v = src[base + c]
                    out[base + c] += v
                    fix[base + c] += coef * v
