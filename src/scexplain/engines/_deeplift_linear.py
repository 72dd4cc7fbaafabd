"""DeepSHAP of a model that is linear after an elementwise map of the genes, in closed form.

When the input goes through elementwise maps only (``u = h(x)``: scaling, clipping, ``log1p``, ...) and then
through ``Linear`` layers and per-column affine maps with no nonlinearity after them (CellTypist: ``min((x −
mean) / sd, 10)`` and a linear decision function; scikit-learn's linear classifiers behind a ``StandardScaler``),
the multipliers at the genes do not depend on the pair: the rescale rules of the elementwise maps compose to
``Δu / Δx`` and the rest is one linear map ``W_eff`` (``C × G`` per cell, the layers composed). Each pair's term
is then::

    φ_ib[c, g] = W_eff[c, g] · (u_i[g] − u_b[g])

and the sums over the background cells need no per-pair work (``O(n · C · G)``, with ``O(G · B log B)`` for the
presence part):

* attributions: ``Σ_b φ_ib = W_eff ⊙ (B · u_i − Σ_b u_b)``;
* presence (``x_g > b_g``): ``W_eff ⊙ (N_ig · u_i[g] − Σ_{b: b_g < x_ig} u_b[g])`` with ``N_ig`` the number of
  background cells below the cell in gene ``g``; the background is sorted per gene once and the partial sums of
  ``u_b`` in that order are read at each cell's rank (a binary search);
* per-(group, background cell) sums of each cell's own output ``o_i``:
  ``S[k, b] = Σ_{i ∈ k} W_eff[o_i] ⊙ u_i − u_b ⊙ Σ_{i ∈ k} W_eff[o_i]``.

These are the sums of :mod:`._deeplift_genes` with ``m_ib`` constant, computed without the per-background-cell
GEMMs; the engine takes this route when the chain of layers on the distinct rows has no nonlinearity.
"""

from __future__ import annotations

import torch

from ._deeplift_genes import ChunkSums, SumsRequest

__all__ = ["linear_sums"]

Tensor = torch.Tensor


def linear_sums(head: Tensor, weights: list[tuple[Tensor, Tensor]], x: Tensor, bg: Tensor,
                request: SumsRequest) -> ChunkSums:
    """Sums over the background of the pair terms of a model linear in ``u = h(x)``, nothing divided by ``B``.

    Parameters
    ----------
    head
        ``rows × C × K``: the (pair-independent) multipliers of the explained outputs at the first layer's output
        (``rows``: 1 when every cell explains the same outputs, else ``n``).
    weights
        Per block of input columns ``(u, w)``: ``u`` the elementwise map of the genes on the distinct rows
        (``(n + B) × G``, cells first) and ``w`` (``K × G``) the composed layer's weights for it.
    x, bg
        The cells' and background cells' input values (``n × G``, ``B × G``), for the presence split.
    request
        What to sum besides the attributions.

    Returns
    -------
    :class:`~._deeplift_genes.ChunkSums` as :func:`~._deeplift_genes.shortcut_sums` gives them.

    Examples
    --------
    >>> import torch
    >>> w = torch.tensor([[1.0, -2.0]])  # one output, two genes
    >>> x, bg = torch.tensor([[3.0, 1.0]]), torch.tensor([[1.0, 2.0], [2.0, 0.0]])
    >>> u = torch.cat([x, bg])  # h is the identity
    >>> out = linear_sums(torch.ones(1, 1, 1), [(u, w)], x, bg, SumsRequest(split=True))
    >>> out.phi / 2  # w ⊙ (x − mean_b b)
    tensor([[[1.5000, -0.0000]]])
    >>> out.presence / 2  # gene 2: only the second background cell is below the cell
    tensor([[[ 1.5000, -1.0000]]])
    """
    n, n_bg = x.shape[0], bg.shape[0]
    phi = presence = sums = None
    below = _Below(x, bg) if request.split else None
    for u, w in weights:
        u_x, u_b = u[:n], u[n:]
        eff = head @ w  # rows × C × G
        phi = _add(phi, eff * (n_bg * u_x - u_b.sum(0)).unsqueeze(1))
        if below is not None:
            presence = _add(presence, eff * below.sums(u_x, u_b).unsqueeze(1))
        if request.sums:
            sums = _add(sums, _group_sums(eff, u_x, u_b, request))
    return ChunkSums(phi, presence, sums)


def _add(total: Tensor | None, part: Tensor) -> Tensor:
    return part if total is None else total.add_(part)


class _Below:
    """The background sorted per gene: for each cell and gene, the background cells with ``b_g < x_g``."""

    def __init__(self, x: Tensor, bg: Tensor):
        bg_t = bg.T.contiguous()  # G × B
        self.order = bg_t.argsort(dim=1, stable=True)
        # the number of background cells strictly below each cell's value (searchsorted's left side)
        self.count = torch.searchsorted(bg_t.gather(1, self.order), x.T.contiguous()).T  # n × G

    def sums(self, u_x: Tensor, u_b: Tensor) -> Tensor:
        """``n × G``: ``Σ_{b: b_g < x_ig} (u_i[g] − u_b[g])``."""
        # partial sums in float64 (float32 inputs): the difference of two sums should not lose the small terms
        acc = torch.float64 if u_b.device.type != "mps" else u_b.dtype
        ranked = u_b.T.to(acc).gather(1, self.order)  # G × B, in the order of the background values
        partial = torch.cat([ranked.new_zeros(ranked.shape[0], 1), ranked.cumsum(1)], 1)  # G × (B + 1)
        below = partial.gather(1, self.count.T).T  # n × G
        return (self.count.to(acc) * u_x.to(acc) - below).to(u_x.dtype)


def _group_sums(eff: Tensor, u_x: Tensor, u_b: Tensor, request: SumsRequest) -> Tensor:
    """``n_groups × B × G``: ``Σ_{i ∈ k} W_eff[o_i] ⊙ u_i − u_b ⊙ Σ_{i ∈ k} W_eff[o_i]``."""
    n = u_x.shape[0]
    rows = torch.zeros(n, dtype=torch.long, device=eff.device) if eff.shape[0] == 1 else torch.arange(
        n, device=eff.device)
    own = eff[rows, request.own]  # n × G: each cell's own output
    onehot = request.onehot(eff.dtype)  # n × n_groups
    first = onehot.T @ (own * u_x)  # n_groups × G
    second = onehot.T @ own
    return first.unsqueeze(1) - u_b.unsqueeze(0) * second.unsqueeze(1)
