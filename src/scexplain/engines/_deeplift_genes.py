"""Gene-level sums of DeepSHAP: attributions, their presence part and per-(group, background cell) sums.

For a cell ``i``, a background cell ``b`` and an explained output, the pair's term for gene ``g`` is::

    φ_ib[g] = (u_i[g] − u_b[g]) · M_ib[g],    M_ib[g] = Σ_k m[b, i, k] · W[k, g]

with ``u = h(x)`` the elementwise map of the genes before the first layer ``W`` (``K × G``) and ``m`` the
multipliers at that layer's output; ``φ_i = mean_b φ_ib``. Three sums of these terms are formed here, never the
``n × B × G`` terms themselves (see :func:`shortcut_sums`; :func:`pair_sums` forms them, for the generic path).

Attributions (the first-layer shortcut)::

    Σ_b φ_ib = u_i ⊙ (Σ_b m_ib) W − Σ_b (m_ib W) ⊙ u_b

The second term is one GEMM per background cell over the genes ``E_b`` where ``u_b ≠ 0`` (``u_b ⊙ W`` is kept
per background cell in a :class:`BackgroundCache`; counts are mostly zeros).

Presence (``x_g > b_g``) and absence (``x_g < b_g``) split each pair's term by the sign of ``x_g − b_g`` (raw
input values); ``absence = φ − presence``. Where ``b_g = 0`` the indicator ``1[x_g > b_g] = 1[x_g > 0]`` does not
depend on ``b``, so::

    Σ_b 1[x_ig > b_g] φ_ib[g] = 1[x_ig > 0] · Σ_b φ_ib[g] − Σ_{b: b_g ≠ 0} κ_ib[g] · φ_ib[g],
    κ_ib[g] = 1[x_ig > 0] − 1[x_ig > b_g] ∈ {−1, 0, 1}   (for b_g > 0: 1[0 < x_ig ≤ b_g])

exactly, for any signs. The correction needs ``φ_ib[g]`` only where the background cell expresses ``g``, where the
shortcut's GEMM already formed ``u_b[g] · M_ib[g]``: ``φ_ib[g] = (u_i[g] / u_b[g] − 1) · u_b[g] M_ib[g]``
(genes with ``b_g ≠ 0`` but ``u_b[g] = 0`` get one more small GEMM of ``W[:, g]`` itself). A gene a cell does not
express is pure absence for non-negative data (``1[x_ig > 0] = 0`` and ``κ = 0``).

Per-(group, background cell) sums of each cell's own output, ``S[k, b, g] = Σ_{i ∈ k} φ_ib[g]``::

    S[k, b] = Σ_{i ∈ k} u_i ⊙ (m_ib W)  −  u_b ⊙ ((Σ_{i ∈ k} m_ib) W)

The second term is one GEMM over all (group, background cell) rows; the first needs ``M_ib`` only on the genes
``E_i`` the cell expresses: one GEMM per cell, ``(u_i ⊙ W)[:, E_i]ᵀ`` times the cell's multipliers with every
background cell. ``Σ_b S[k, b] / B`` is the sum of ``φ_i`` over the group's cells.

On a GPU, and for the generic path, the terms are formed for a few background cells at a time instead (dense
GEMMs, no scatter: CUDA's ``index_add_`` does not sum in a fixed order).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["BackgroundCache", "ChunkSums", "SumsRequest", "pair_sums", "shortcut_sums"]

Tensor = torch.Tensor

#: largest block of multipliers built at once (2**18 float32 = 1 MiB, near the size of a core's cache)
_BLOCK_ELEMENTS = 2**18
#: largest block of gene-level terms formed at once on the dense route (2**24 float32 = 64 MiB)
_TERMS_ELEMENTS = 2**24
#: largest cache of first-layer products ``u_b[g] · w[k, g]`` kept across chunks, in elements (2**26 float32 =
#: 256 MiB; scANVI on pbmc68k counts with 557 background cells needs 128 · 139 000 expressed genes ≈ 2**24.1)
_CACHE_ELEMENTS = 2**26
#: a background row with more than this fraction of non-zero genes is multiplied as a dense row
_DENSE_ROW = 0.5


@dataclass(frozen=True)
class SumsRequest:
    """What to sum besides the attributions.

    ``split``: also the presence part. ``own`` (``n``, the explained column of each cell's own output),
    ``groups`` (``n`` codes in ``[0, n_groups)``, ``−1``: in no group) and ``n_groups``: also the
    per-(group, background cell) sums of the own output.
    """

    split: bool = False
    own: Tensor | None = None
    groups: Tensor | None = None
    n_groups: int = 0

    @property
    def sums(self) -> bool:
        return self.groups is not None

    def onehot(self, dtype: torch.dtype) -> Tensor:
        """``n × n_groups`` membership (rows of cells in no group are zero)."""
        hit = self.groups.unsqueeze(1) == torch.arange(self.n_groups, device=self.groups.device)
        return hit.to(dtype)

    def cells(self, i0: int, i1: int) -> SumsRequest:
        """The request for cells ``i0:i1``."""
        if not self.sums:
            return self
        return SumsRequest(self.split, self.own[i0:i1], self.groups[i0:i1], self.n_groups)


@dataclass
class ChunkSums:
    """Sums over the background cells of a chunk, nothing divided by their number.

    ``phi`` (``n × C × G``), ``presence`` (same, or ``None``) and ``background_sums`` (``n_groups × n_bg × G``, or
    ``None``).
    """

    phi: Tensor
    presence: Tensor | None = None
    background_sums: Tensor | None = None

    def add(self, other: ChunkSums) -> None:
        self.phi += other.phi
        if other.presence is not None:
            self.presence += other.presence
        if other.background_sums is not None:
            self.background_sums += other.background_sums


# --- the first-layer products of the background cells ------------------------------------------------------------


@dataclass
class _SplitRow:
    """What the presence correction needs of a background cell, row by row of its products.

    ``genes`` (the products' genes), ``b`` and ``inv`` (``1 / u_b``) there (both 0 where ``u_b = 0``);
    ``zero_genes`` / ``zero_wt``: genes with ``b_g ≠ 0`` but ``u_b[g] = 0`` and ``w[:, genes]ᵀ`` (or ``None``).
    """

    genes: Tensor
    b: Tensor
    inv: Tensor
    zero_genes: Tensor | None = None
    zero_wt: Tensor | None = None


@dataclass
class RowProducts:
    """One background cell's first-layer products: ``prod_t = (u_b ⊙ w)[:, genes]ᵀ`` (``|genes| × K``).

    ``genes``: where ``u_b ≠ 0`` (``None``: every gene, a dense row); ``prod_t`` is ``None`` for an all-zero row.
    ``split``: its :class:`_SplitRow` (made when a call asks for the presence split).
    """

    genes: Tensor | None
    prod_t: Tensor | None
    split: _SplitRow | None = None

    def split_row(self, u_b: Tensor, b: Tensor, w: Tensor) -> _SplitRow:
        if self.split is None:
            self.split = _split_row(self.genes, u_b, b, w)
        return self.split


def _row_products(u_b: Tensor, w: Tensor, count: int, sparse: bool) -> RowProducts:
    """:class:`RowProducts` of one background row with ``count`` non-zero genes."""
    if count == 0:
        return RowProducts(None, None)
    if not sparse:
        return RowProducts(None, (w * u_b).T.contiguous())
    genes = u_b.nonzero().squeeze(1)
    return RowProducts(genes, (w[:, genes] * u_b[genes]).T.contiguous())


def _split_row(genes: Tensor | None, u_b: Tensor, b: Tensor, w: Tensor) -> _SplitRow:
    mapped = u_b != 0
    if genes is None:
        genes = torch.arange(u_b.shape[0], device=u_b.device)
    u_rows, b_rows = u_b[genes], b[genes]
    ok = u_rows != 0
    inv = torch.where(ok, 1.0 / torch.where(ok, u_rows, 1.0), 0.0)
    row = _SplitRow(genes, torch.where(ok, b_rows, 0.0), inv)
    zero = ((b != 0) & ~mapped).nonzero().squeeze(1)
    if zero.numel():
        row.zero_genes, row.zero_wt = zero, w[:, zero].T.contiguous()
    return row


class BackgroundCache:
    """Products ``u_b[g] · w[k, g]`` of the first-layer shortcut per background cell, kept across calls.

    Pass one instance to the calls of :func:`~scexplain.engines.deeplift.deeplift_shap` that share a background
    (e.g. the chunks of cells of one ``tl.deep_shap`` call). An entry is used only if the layer's weights and the
    background values it was made from are equal to the current ones, so a stale entry is never used. It also
    remembers whether the model turned out not to be a chain of layers (:attr:`chain`) or to need the pairs after
    its first layer (:attr:`distinct`), so that later calls go straight to the way that works.

    Parameters
    ----------
    max_elements
        Largest number of tensor elements kept (``None``: 2**26, 256 MiB of float32); beyond it, products are
        computed when needed and not kept.
    """

    def __init__(self, max_elements: int | None = None):
        self.max_elements = _CACHE_ELEMENTS if max_elements is None else max_elements
        #: whether the last call explained the model along a chain of layers (``None``: not known yet)
        self.chain: bool | None = None
        #: whether the last call explained the model on the distinct rows (``None``: not known yet)
        self.distinct: bool | None = None
        self._entries: dict = {}
        self._size = 0

    def products(self, u_bg: Tensor, w: Tensor, key, bg: Tensor) -> list[RowProducts] | Iterator[RowProducts]:
        """:class:`RowProducts` of each background row ``u_b`` (rows of ``u_bg``) with the weights ``w``.

        ``bg``: the background cells' input values (``u_bg`` is a map of them), which the presence split uses.
        """
        hit = self._entries.get(key)
        if hit is not None and torch.equal(hit[0], w) and torch.equal(hit[1], u_bg) and torch.equal(hit[4], bg):
            return hit[2]
        if hit is not None:  # stale: the weights or the background changed
            del self._entries[key]
            self._size -= hit[3]
        # on a GPU every row is dense: one GEMM per row, and no index_add_ (whose CUDA sums are not deterministic)
        dense_row = _DENSE_ROW if u_bg.device.type == "cpu" else 0.0
        counts = (u_bg != 0).sum(1).tolist()
        sparse = [0 < c <= dense_row * u_bg.shape[1] for c in counts]
        size = sum(c if s else (u_bg.shape[1] if c else 0) for c, s in zip(counts, sparse, strict=True)) * w.shape[0]
        rows = zip(u_bg, counts, sparse, strict=True)
        if self._size + size > self.max_elements:
            return (_row_products(u, w, c, s) for u, c, s in rows)
        products = [_row_products(u, w, c, s) for u, c, s in rows]
        self._entries[key] = (w, u_bg, products, size, bg)
        self._size += size
        return products


# --- sums from blocks of multipliers (the first-layer shortcut) ----------------------------------------------------


def shortcut_sums(m, n_classes: int, weights: list[tuple[Tensor, Tensor]], x: Tensor, bg: Tensor,
                  products: list[list[RowProducts] | Iterator[RowProducts]], request: SumsRequest) -> ChunkSums:
    """Sums of the pair terms of ``n`` cells with ``B`` background cells, from multipliers at the first layer.

    Parameters
    ----------
    m, n_classes
        The multipliers: ``m.block(b0, b1)`` is ``(b1 − b0) × n × C × K`` (``m.n_bg``, ``m.n_cells``).
    weights
        Per block of input columns ``(u, w)``: ``u`` the elementwise map of the genes on the distinct rows
        (``(n + B) × G``, cells first) and ``w`` (``K × G``) the layer's weights for it.
    x, bg
        The cells' and background cells' input values (``n × G``, ``B × G``), for the presence split.
    products
        Per block of ``weights``: the :class:`RowProducts` of the background rows (``BackgroundCache.products``).
    request
        What to sum besides the attributions.
    """
    n, n_bg = m.n_cells, m.n_bg
    k_width = weights[0][1].shape[0]
    if _dense_route(x) and (request.split or request.sums):
        return _dense_shortcut_sums(m, n_classes, weights, x, bg, request)
    products = [iter(p) for p in products]
    nc = n * n_classes
    below = [x.new_zeros(w.shape[1], nc) for _, w in weights]  # genes × (cell, class): Σ_b (m_ib W) ⊙ u_b
    corr = x.new_zeros(x.shape[1], nc) if request.split else None
    cells = _CellsByGene(x, [u[:n] for u, _ in weights]) if request.split else None
    m_own = x.new_empty(n, k_width, n_bg) if request.sums else None  # cell × K × background
    total = None
    step = max(1, _BLOCK_ELEMENTS // (nc * k_width))
    for s0 in range(0, n_bg, step):
        s1 = min(n_bg, s0 + step)
        block = m.block(s0, s1)
        total = block.sum(0) if total is None else total.add_(block.sum(0))
        if m_own is not None:
            m_own[:, :, s0:s1] = _own_columns(block, request.own).permute(1, 2, 0)
        rows = block.view(s1 - s0, nc, k_width)
        for j, (u, w) in enumerate(weights):
            for r in range(s1 - s0):
                row, p = rows[r], next(products[j])
                part = None if p.prod_t is None else torch.mm(p.prod_t, row.T)  # genes × (cell, class)
                if corr is not None:  # the scatter and the presence correction in one pass
                    b = s0 + r
                    split = p.split_row(u[n + b], bg[b], w)
                    cells.scatter(below[j], corr, part, split, row, bg[b], j, n_classes)
                elif part is not None:
                    if p.genes is None:
                        below[j].add_(part)
                    else:
                        below[j].index_add_(0, p.genes, part)
    phi = x.new_zeros(n, n_classes, x.shape[1])
    for (u, w), part in zip(weights, below, strict=True):
        phi.addcmul_(total @ w, u[:n].unsqueeze(1)).sub_(part.T.view(phi.shape))
    out = ChunkSums(phi)
    if corr is not None:
        out.presence = (x > 0).to(phi.dtype).unsqueeze(1).mul(phi).sub_(corr.T.view(phi.shape))
    if m_own is not None:
        out.background_sums = _background_sums(m_own, weights, request, n)
    return out


def _dense_route(x: Tensor) -> bool:
    """Whether the extra sums form the terms densely (on a GPU: GEMMs only, no scatter, no CPU kernels)."""
    return x.device.type != "cpu"


def _own_columns(block: Tensor, own: Tensor) -> Tensor:
    """``blk × n × K``: each cell's own column of a ``blk × n × C × K`` block."""
    if block.shape[2] == 1:
        return block[:, :, 0]
    return block[:, torch.arange(block.shape[1], device=block.device), own]


class _CellsByGene:
    """The chunk's cells as genes × cells, for the presence correction.

    ``x`` and, per block of input columns, ``u`` (see :func:`._deeplift_kernels.scatter_presence`).
    """

    def __init__(self, x: Tensor, us: list[Tensor]):
        self.n = x.shape[0]
        self.x_t = x.T.contiguous()
        self.u_t = [u.T.contiguous() for u in us]
        self.consts = torch.tensor([0.0, 1.0, -1.0], dtype=x.dtype)

    def scatter(self, below: Tensor, corr: Tensor, part: Tensor | None, split: _SplitRow, row: Tensor, b: Tensor,
                j: int, n_classes: int) -> None:
        """Add ``part`` to the rows of ``below``, and the presence correction to ``corr``.

        Both are genes × (cell, class); the correction is ``κ_ib[g] · φ_ib[g]`` over the genes with ``b_g ≠ 0``.
        ``part``: the GEMM's ``u_b[g] · M_ib[g]`` on the background cell's products' genes (``None``: it has
        none); ``row``: ``m_b`` (``nC × K``).
        """
        from ._deeplift_kernels import scatter_presence

        if part is not None:
            scatter_presence(_np(below), _np(corr), _np(part), _np(split.genes), _np(split.b), _np(split.inv),
                             _np(self.x_t), _np(self.u_t[j]), _np(self.consts), n_classes)
        if split.zero_genes is not None:  # b_g ≠ 0 but u_b[g] = 0: φ_ib[g] = u_i[g] · M_ib[g]
            genes = split.zero_genes
            xs = self.x_t.index_select(0, genes)
            kappa = (xs > 0).to(row.dtype).sub_((xs > b[genes].unsqueeze(1)).to(row.dtype))
            coef = self.u_t[j].index_select(0, genes).mul_(kappa)
            terms = torch.mm(split.zero_wt, row.T).view(-1, self.n, n_classes).mul_(coef.unsqueeze(2))
            corr.index_add_(0, genes, terms.view(-1, self.n * n_classes))


def _np(t: Tensor):
    return t.detach().numpy()


def _background_sums(m_own: Tensor, weights: list[tuple[Tensor, Tensor]], request: SumsRequest, n: int) -> Tensor:
    """``n_groups × B × G``: ``Σ_{i ∈ k} u_i ⊙ (m_ib W) − u_b ⊙ ((Σ_{i ∈ k} m_ib) W)`` for each cell's own output.

    ``m_own``: ``n × K × B``, each cell's multipliers toward its own output with every background cell. The first
    term is one GEMM per cell over the genes it expresses, ``(u_i ⊙ w)[:, E_i]ᵀ @ m_own[i]``.
    """
    from ._deeplift_kernels import add_rows, scaled_rows

    k_width, n_bg = m_own.shape[1], m_own.shape[2]
    n_genes = weights[0][1].shape[1]
    groups = request.groups
    first_t = m_own.new_zeros(request.n_groups, n_genes, n_bg)  # group × genes × background: the first term
    targets = [_np(t) for t in first_t]
    cells = torch.nonzero(groups >= 0).squeeze(1)
    cells = cells[torch.argsort(groups[cells], stable=True)].tolist()  # by group: its sums stay in cache
    group_of = groups.tolist()
    for u, w in weights:
        w_t = _np(w.detach().T.contiguous())  # G × K
        nonzero = u[:n].nonzero()
        values = _np(u[:n][nonzero[:, 0], nonzero[:, 1]].contiguous())
        genes = _np(nonzero[:, 1].contiguous())
        ptr = [0, *torch.cumsum(torch.bincount(nonzero[:, 0], minlength=n), 0).tolist()]
        longest = max(ptr[i + 1] - ptr[i] for i in range(n))
        scaled = m_own.new_empty(longest, k_width)  # (u_i ⊙ w)[:, E_i]ᵀ of one cell
        terms = m_own.new_empty(longest, n_bg)
        scaled_np, terms_np = _np(scaled), _np(terms)
        for i in cells:
            lo, hi = ptr[i], ptr[i + 1]
            if hi > lo:
                scaled_rows(scaled_np, w_t, genes[lo:hi], values[lo:hi])
                torch.mm(scaled[: hi - lo], m_own[i], out=terms[: hi - lo])
                add_rows(targets[group_of[i]], genes[lo:hi], terms_np)
    sums = first_t.transpose(1, 2).contiguous()
    present = torch.unique(groups[groups >= 0])
    onehot = request.onehot(m_own.dtype)[:, present]  # n × present groups
    m_sum = (onehot.T @ m_own.view(n, -1)).view(-1, k_width, n_bg).transpose(1, 2).reshape(-1, k_width)
    for u, w in weights:  # the second term, for the groups with cells: (group, b) × G
        second = (m_sum @ w).view(present.shape[0], n_bg, n_genes).mul_(u[n:].unsqueeze(0))
        sums.index_add_(0, present, second, alpha=-1)
    return sums


def _dense_shortcut_sums(m, n_classes: int, weights, x: Tensor, bg: Tensor, request: SumsRequest) -> ChunkSums:
    """The sums with the terms formed for a few background cells at a time (GEMMs only)."""
    n, n_bg = m.n_cells, m.n_bg
    acc = _empty_sums(x, n_classes, n_bg, request)
    step = max(1, _TERMS_ELEMENTS // (n * n_classes * x.shape[1]))
    for s0 in range(0, n_bg, step):
        s1 = min(n_bg, s0 + step)
        block = m.block(s0, s1)
        terms = None
        for u, w in weights:
            t = (block @ w).mul_(u[:n].unsqueeze(0).unsqueeze(2) - u[n + s0 : n + s1].unsqueeze(1).unsqueeze(2))
            terms = t if terms is None else terms.add_(t)
        _add_terms(acc, terms, x, bg[s0:s1], request, s0)
    return acc


# --- sums from the pair terms (the generic path) --------------------------------------------------------------------


def pair_sums(terms: Tensor, x: Tensor, bg: Tensor, request: SumsRequest) -> ChunkSums:
    """The sums of the pair terms ``terms`` (``B × n × C × G``: ``(x_i − b) ⊙ M_ib``)."""
    acc = _empty_sums(x, terms.shape[2], terms.shape[0], request)
    _add_terms(acc, terms, x, bg, request, 0)
    return acc


def _empty_sums(x: Tensor, n_classes: int, n_bg: int, request: SumsRequest) -> ChunkSums:
    n, n_genes = x.shape
    out = ChunkSums(x.new_zeros(n, n_classes, n_genes))
    if request.split:
        out.presence = x.new_zeros(n, n_classes, n_genes)
    if request.sums:
        out.background_sums = x.new_zeros(request.n_groups, n_bg, n_genes)
    return out


def _add_terms(acc: ChunkSums, terms: Tensor, x: Tensor, bg: Tensor, request: SumsRequest, b0: int) -> None:
    """Add the sums of ``terms`` (``blk × n × C × G``, background cells ``b0 : b0 + blk``) to ``acc``."""
    acc.phi += terms.sum(0)
    if request.split:
        above = (x.unsqueeze(0) > bg.unsqueeze(1)).unsqueeze(2)
        acc.presence += torch.where(above, terms, 0.0).sum(0)
    if request.sums:
        own = _own_columns(terms, request.own)  # blk × n × G
        onehot = request.onehot(terms.dtype)
        acc.background_sums[:, b0 : b0 + terms.shape[0]] += torch.einsum("ik,big->kbg", onehot, own)
