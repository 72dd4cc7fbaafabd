"""From a tree's attributions on an embedding back to genes (``tl.tree_shap_gpu(..., to_genes=True)``).

A tree ensemble trained on an embedding z = e(x) (PCA scores, an scVI latent space) is explained on the embedding's
dimensions d. The attribution of dimension d is carried back to genes by splitting it as the genes move z_d,
DeepSHAP-style, so that per cell Σ_g ψ_g = Σ_d φ_d = f(z) − E[f]. This explains the *embedding* — which genes,
through the embedding, drive the tree — not a gene-level model.

Per (cell i, background cell b) pair, the embedding's map gives each gene's contribution to the pair's difference,
C_ib[d, g] with Σ_g C_ib[d, g] = Δ_ib[d] = z_i[d] − z_b[d]:

- PCA, z = (x − μ)·L: C_ib[d, g] = L[g, d]·(x_ig − x_bg), exact (the map is linear; μ cancels);
- scVI / scANVI latent means: the encoder's DeepLIFT (rescale rule) contributions of the pair, toward each latent
  dimension (:func:`scexplain.engines.deeplift.deeplift_shap` against the single background cell b, covariates
  held at the cell's values as in latent mode); they sum to the encoder's own Δ_ib[d].

**Interventional** TreeSHAP has the pairs' own attributions φ_ib[d] (each background cell is one reference). The
pair's share is split by the pair's own differences, the DeepSHAP chain rule with the tree's multiplier
m_ib[d] = φ_ib[d] / Δ_ib[d]::

    ψ_ib[g] = Σ_d m_ib[d] · C_ib[d, g],        ψ_i = mean_b ψ_ib,

so Σ_g ψ_ib = Σ_d φ_ib[d] = f(z_i) − f(z_b) for every pair. A pair with z_i[d] = z_b[d] has φ_ib[d] = 0 (the
trees cannot tell the two apart): nothing is divided there. A pair whose Δ_ib[d] is not zero but tiny next to the
contributions it sums (|Δ_ib[d]| ≤ :data:`RTOL` · Σ_g |C_ib[d, g]|: the genes' moves cancel to a thousandth) would
get gene attributions up to 1/RTOL times its φ, cancelling each other; its φ_ib[d] is split by the cell's
*pooled weights* instead (below), which sum to one and stay bounded.

**Path-dependent** TreeSHAP has no pairs: φ_i[d] is relative to the trees' training distribution (their covers).
Its reference for the split is the background (``n_background`` cells drawn as usual): φ_i[d] is split by the
pooled weights, the average over the background cells of the per-pair splits C_ib[d, g] / Δ_ib[d], pair b
weighted by |Δ_ib[d]|::

    w_i[d, g] = Σ_b sign(Δ_ib[d]) · C_ib[d, g] / Σ_b |Δ_ib[d]|,        ψ_i[g] = Σ_d φ_i[d] · w_i[d, g].

Σ_g w_i[d, g] = 1 exactly, and no single pair's Δ is divided by: the denominator is the cell's mean distance to
the background along d. When all background cells lie on one side of the cell along d, this is the chain rule
against the background mean, (x_ig − x̄_g)·L[g, d] / (z_i[d] − z̄[d]) for PCA. Should even Σ_b |Δ_ib[d]| be tiny
next to Σ_b Σ_g |C_ib[d, g]| (the cell sits at the background along d in every pair), the weights are
Σ_b |C_ib[d, g]| normalised (bounded, summing to one).

Presence / absence at the gene level: interventional — each pair's term ψ_ib[g] goes to presence when
x_ig > x_bg; path-dependent — ψ_i[g] goes to presence when x_ig exceeds the background mean of gene g.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

__all__ = ["RTOL", "EncoderMap", "LinearMap", "compose_interventional", "compose_path_dependent", "gene_map"]

#: a pair is split by its own differences when |Δz| > RTOL · Σ_g |C_g| (else by the cell's pooled weights)
RTOL = 1e-3
#: elements of the largest per-background-cell block (cells × dims × genes) an encoder map forms at once
ENCODER_BLOCK = 1 << 22
#: relative disagreement between the map applied to the genes and the stored embedding that is an error
REPRODUCE_RTOL = 1e-3


class LinearMap:
    """PCA scores ``z = (x − μ)·L``: contributions ``C_ib[d, g] = L[g, d]·(x_ig − x_bg)`` (never formed).

    Parameters
    ----------
    loadings
        ``genes × dims`` (``varm["PCs"]``, columns of the explained dimensions).
    """

    kind = "pca"

    def __init__(self, loadings: np.ndarray):
        self.L = np.ascontiguousarray(loadings, dtype=np.float64)
        self.absL = np.abs(self.L)

    def embed(self, x: np.ndarray, cov=None) -> np.ndarray:
        """``x·L`` (the scores up to the constant μ·L)."""
        return x @ self.L

    def stream(self, xc: np.ndarray, cov, xb: np.ndarray, state: dict):
        """One chunk: all background cells ``(0, Δ, Σ_g |C|, contract)``, cells × B × dims each.

        ``contract(m)`` = ``Σ_d m[i, b, d] C_ib[d, :]`` (cells × B × genes), one GEMM.
        """
        diff = xc[:, None, :] - xb[None]  # cells × B × genes
        n, B, G = diff.shape
        delta = (xc @ self.L)[:, None, :] - (xb @ self.L)[None]
        scale = (np.abs(diff).reshape(n * B, G) @ self.absL).reshape(n, B, -1)  # Σ_g |C_ib[d, g]|

        def contract(m):
            return diff * (m.reshape(n * B, -1) @ self.L.T).reshape(n, B, G)

        yield 0, delta, scale, contract

    def pooled(self, xc: np.ndarray, xb: np.ndarray, sign: np.ndarray, state: dict,
               cells: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(Σ_b sign_ib[d] C_ib[d, g], Σ_b |C_ib[d, g]|)``, cells × dims × genes (of ``cells`` of the batch)."""
        if cells is not None:
            xc, sign = xc[cells], sign[cells]
        n, B, D = sign.shape
        moved = (sign.transpose(0, 2, 1).reshape(n * D, B) @ xb).reshape(n, D, -1)
        signed = self.L.T[None] * (sign.sum(1)[:, :, None] * xc[:, None, :] - moved)
        absolute = self.absL.T[None] * np.abs(xc[:, None, :] - xb[None]).sum(1)[:, None, :]
        return signed, absolute


class EncoderMap:
    """scVI / scANVI latent means: per-pair DeepLIFT contributions of the encoder toward each latent dimension.

    Parameters
    ----------
    adapter
        The :class:`~scexplain.models._scvi.ScviAdapter` of the model in latent mode.
    dims
        Latent dimensions explained (the embedding columns the tree reads).
    """

    kind = "encoder"

    def __init__(self, adapter, dims: np.ndarray):
        self.adapter = adapter
        self.dims = np.asarray(dims, dtype=np.int64)
        self._caches: dict[int, Any] = {}  # first-layer products per background cell (callers hold a lock)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_caches"] = {}  # rebuilt by each process
        return state

    def _tensor(self, a):
        import torch

        return None if a is None else torch.as_tensor(np.asarray(a), dtype=torch.float64)

    def embed(self, x: np.ndarray, cov=None) -> np.ndarray:
        """The encoder's latent means of ``x`` (counts) with covariates ``cov``."""
        import torch

        with self.adapter.explaining(torch.device("cpu"), torch.float64), torch.no_grad():
            z = self.adapter.forward(self._tensor(x), self._tensor(cov))
        return z.numpy()[:, self.dims]

    def contributions(self, xc: np.ndarray, cov, xb_row: np.ndarray, b: int) -> np.ndarray:
        """``C_ib[d, g]`` of the cells ``xc`` against one background cell: cells × dims × genes."""
        import torch

        from ..engines.deeplift import BackgroundCache, deeplift_shap

        cache = self._caches.setdefault(b, BackgroundCache())
        classes = torch.as_tensor(np.tile(self.dims, (xc.shape[0], 1)))
        attr, _, _ = deeplift_shap(self.adapter.forward, self._tensor(xc), self._tensor(xb_row[None]), classes,
                                   cov=self._tensor(cov), cache=cache)
        return attr.numpy()

    def stream(self, xc: np.ndarray, cov, xb: np.ndarray, state: dict):
        """Chunks of one background cell ``(b, Δ, Σ_g |C|, contract)`` (Δ = Σ_g C, the encoder's own difference).

        The pooled sums are accumulated into ``state`` on the way (the pairs' contributions are not kept).
        """
        import torch

        with self.adapter.explaining(torch.device("cpu"), torch.float64):
            for b in range(xb.shape[0]):
                C = self.contributions(xc, cov, xb[b], b)[:, None]  # cells × 1 × dims × genes
                delta = C.sum(-1)
                if "signed" not in state:
                    state["signed"], state["absolute"] = np.zeros_like(C[:, 0]), np.zeros_like(C[:, 0])
                state["signed"] += np.sign(delta[:, 0])[:, :, None] * C[:, 0]
                state["absolute"] += np.abs(C[:, 0])
                yield b, delta, np.abs(C).sum(-1), (lambda m, C=C: np.einsum("ibd,ibdg->ibg", m, C))

    def pooled(self, xc: np.ndarray, xb: np.ndarray, sign: np.ndarray, state: dict,
               cells: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The pooled sums accumulated by :meth:`stream` into ``state`` (with the signs of its Δ)."""
        if cells is None:
            return state["signed"], state["absolute"]
        return state["signed"][cells], state["absolute"][cells]


GeneMap = LinearMap | EncoderMap


def _pooled_weights(signed: np.ndarray, absolute: np.ndarray, abs_delta_sum: np.ndarray,
                    abs_scale_sum: np.ndarray) -> np.ndarray:
    """Cells × dims × genes weights summing to one over genes (see the module docstring)."""
    ok = (abs_delta_sum > RTOL * abs_scale_sum) & (abs_scale_sum > 0)  # (Δ of equal rows may round to ±1e-16)
    w = signed / np.where(ok, abs_delta_sum, 1.0)[:, :, None]
    if not ok.all():
        total = absolute.sum(-1, keepdims=True)
        uniform = np.full(absolute.shape[-1], 1.0 / absolute.shape[-1])
        fallback = np.where(total > 0, absolute / np.where(total > 0, total, 1.0), uniform)
        w = np.where(ok[:, :, None], w, fallback)
    return w


@dataclass
class Composed:
    """Gene attributions of a batch of cells.

    ``genes``, ``presence`` (cells × genes) and, with groups, the per-(group, background cell) sums ``S``
    (groups × B × genes) of the pairs' gene terms; ``fallback_pairs`` counts the (pair, dim) entries split by
    the pooled weights.
    """

    genes: np.ndarray
    presence: np.ndarray
    S: np.ndarray | None = None
    fallback_pairs: int = 0


def compose_interventional(gmap: GeneMap, xc: np.ndarray, cov, xb: np.ndarray, phi: np.ndarray,
                           onehot: np.ndarray | None = None) -> Composed:
    """Gene attributions from the pairs' tree attributions ``phi`` (cells × B × dims), one background cell at a time.

    ``onehot`` (groups × cells) also accumulates the per-(group, background cell) sums.
    """
    n, B, D = phi.shape
    G = xc.shape[1]
    genes = np.zeros((n, G))
    presence = np.zeros((n, G))
    S = None if onehot is None else np.zeros((onehot.shape[0], B, G))
    rest = np.zeros((n, B, D))  # φ of the ill-conditioned pairs, split by the pooled weights afterwards
    sign = np.zeros((n, B, D))
    abs_delta = np.zeros((n, D))
    abs_scale = np.zeros((n, D))
    state: dict = {}
    for b0, delta, scale, contract in gmap.stream(xc, cov, xb, state):
        b1 = b0 + delta.shape[1]
        sign[:, b0:b1] = np.sign(delta)
        abs_delta += np.abs(delta).sum(1)
        abs_scale += scale.sum(1)
        p = phi[:, b0:b1]
        ok = (np.abs(delta) > RTOL * scale) & (scale > 0)
        rest[:, b0:b1] = np.where(ok, 0.0, p)
        m = np.where(ok, p / np.where(ok, delta, 1.0), 0.0)
        if m.any():
            _add_pairs(contract(m), xc, xb[b0:b1], b0, genes, presence, S, onehot)
    cells = np.flatnonzero((rest != 0).any(axis=(1, 2)))  # cells with an ill-conditioned pair
    if cells.size:
        signed, absolute = gmap.pooled(xc, xb, sign, state, cells)
        w = _pooled_weights(signed, absolute, abs_delta[cells], abs_scale[cells])
        part = np.zeros_like(genes[cells]), np.zeros_like(genes[cells])
        S_part = None if S is None else np.zeros_like(S)
        _add_pairs(np.matmul(rest[cells], w), xc[cells], xb, 0, *part, S_part,
                   None if onehot is None else onehot[:, cells])
        genes[cells] += part[0]
        presence[cells] += part[1]
        if S is not None:
            S += S_part
    return Composed(genes / B, presence / B, S, int(np.count_nonzero(rest)))


def _add_pairs(psi, xc, xb, b0, genes, presence, S, onehot) -> None:
    """Add the pairs' gene terms ``psi`` (cells × pairs × genes, background cells ``b0 …``)."""
    genes += psi.sum(1)
    presence += np.where(xc[:, None, :] > xb[None], psi, 0.0).sum(1)
    if S is not None:
        n, nb, G = psi.shape
        S[:, b0 : b0 + nb] += (onehot @ psi.reshape(n, nb * G)).reshape(-1, nb, G)


def compose_path_dependent(gmap: GeneMap, xc: np.ndarray, cov, xb: np.ndarray, phi: np.ndarray) -> Composed:
    """Gene attributions from path-dependent tree attributions ``phi`` (cells × dims), by the pooled weights."""
    n, D = phi.shape
    B = xb.shape[0]
    sign = np.zeros((n, B, D))
    abs_delta = np.zeros((n, D))
    abs_scale = np.zeros((n, D))
    state: dict = {}
    for b0, delta, scale, _ in gmap.stream(xc, cov, xb, state):
        sign[:, b0 : b0 + delta.shape[1]] = np.sign(delta)
        abs_delta += np.abs(delta).sum(1)
        abs_scale += scale.sum(1)
    signed, absolute = gmap.pooled(xc, xb, sign, state)
    genes = np.matmul(phi[:, None, :], _pooled_weights(signed, absolute, abs_delta, abs_scale))[:, 0]
    presence = np.where(xc > xb.mean(axis=0), genes, 0.0)
    return Composed(genes, presence)


# --- building the map from the AnnData ------------------------------------------------------------------------------
@dataclass
class GeneSide:
    """What ``to_genes`` needs besides the tree: the map, the gene matrix it reads, covariates, a description."""

    gmap: GeneMap
    X: Any  # cells × genes (numpy, scipy sparse or dask), aligned to the map's genes
    pos: np.ndarray | None  # columns of adata.var the map's genes are (None: all, in order)
    cov: np.ndarray | None  # cells × covariates (encoder) or None
    where: str  # the gene matrix, for messages and params
    params: dict
    matrix_of: Any = None  # the same gene matrix of another AnnData (an external background)


def gene_map(adata: AnnData, *, use_rep: str, encoder, layer: str | None, cols: np.ndarray) -> GeneSide:
    """The map from genes to ``adata.obsm[use_rep]`` (its columns ``cols``), or a clear error.

    ``X_pca`` (or another PCA stored by scanpy under ``key_added``) with its loadings in ``varm``; a latent space
    with ``encoder=`` the scvi-tools model that computed it.
    """
    if encoder is not None:
        return _encoder_side(adata, encoder, use_rep, layer, cols)
    loadings_key, params_key = ("PCs", "pca") if use_rep == "X_pca" else (use_rep, use_rep)
    is_pca = use_rep == "X_pca" or (use_rep in adata.varm and isinstance(adata.uns.get(use_rep), dict)
                                    and "params" in adata.uns[use_rep])
    if not is_pca:
        raise ValueError(
            f"`to_genes=True` needs a map from genes to adata.obsm[{use_rep!r}]: `use_rep='X_pca'` (a PCA, with "
            "its loadings in adata.varm['PCs']) or `encoder=` the scvi-tools model whose latent space it is. "
            f"{use_rep!r} has no known map (UMAP, t-SNE and graph embeddings are not maps of the genes)."
        )
    if loadings_key not in adata.varm:
        raise ValueError(
            f"`to_genes=True` with use_rep={use_rep!r} needs the PCA loadings in adata.varm[{loadings_key!r}], "
            "which is missing: recompute the PCA with scanpy (`sc.pp.pca(adata)` stores them), or explain the "
            "embedding without `to_genes`."
        )
    L = np.asarray(adata.varm[loadings_key], dtype=np.float64)
    rep = adata.obsm[use_rep]
    if L.shape[1] < rep.shape[1]:
        raise ValueError(f"adata.varm[{loadings_key!r}] has {L.shape[1]} components but adata.obsm[{use_rep!r}] has "
                         f"{rep.shape[1]} columns; they are not the same PCA.")
    L = L[:, cols]
    if not np.isfinite(L).all():
        raise ValueError(f"adata.varm[{loadings_key!r}] has NaN or infinite loadings; recompute the PCA.")
    params = dict(adata.uns.get(params_key, {}).get("params", {}) or {})
    if layer is None:
        layer = params.get("layer")
    from .. import _inputs

    X, _ = _inputs.get_matrix(adata, layer=layer)
    where = f"layers[{layer!r}]" if layer is not None else "adata.X"
    return GeneSide(LinearMap(L), X, None, None, where,
                    {"map": "pca", "loadings": f"varm[{loadings_key!r}]", "gene_matrix": where},
                    lambda other: _inputs.get_matrix(other, layer=layer)[0])


def _encoder_side(adata, encoder, use_rep, layer, cols) -> GeneSide:
    from .. import _inputs
    from ..models._scvi import adapt_scvi

    try:
        adapter = adapt_scvi(encoder, explain="latent")
    except TypeError as err:
        raise TypeError(
            f"`encoder=` must be the scvi-tools model (scvi.model.SCVI or SCANVI) whose latent space is "
            f"adata.obsm[{use_rep!r}]; got a {type(encoder).__module__}.{type(encoder).__name__}."
        ) from err
    n_latent = len(adapter.output_names)
    width = adata.obsm[use_rep].shape[1]
    if n_latent != width:
        raise ValueError(
            f"The encoder has {n_latent} latent dimensions but adata.obsm[{use_rep!r}] has {width} columns: it is "
            "not this model's latent space (pass the model that computed it)."
        )
    X, names = adapter.input_matrix(adata, layer=layer, use_raw=False)
    pos = _inputs.column_map(pd.Index(names), adata.var_names)
    if pos is not None and (pos < 0).any():  # pragma: no cover - input_matrix raises on missing genes
        raise ValueError("Some of the encoder's genes are not in adata.var_names.")
    cov = adapter.covariates(adata, None)
    cov = None if cov is None else cov.detach().cpu().double().numpy()
    where = getattr(adapter, "_where", "counts")
    return GeneSide(EncoderMap(adapter, cols), X, pos, cov, where,
                    {"map": "encoder", "encoder_class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
                     "gene_matrix": where},
                    lambda other: adapter.input_matrix(other, layer=layer, use_raw=False)[0])


def check_reproduces(gmap: GeneMap, x: np.ndarray, cov, z: np.ndarray, offset: np.ndarray | None, *,
                     use_rep: str, where: str) -> np.ndarray:
    """Raise unless the map applied to the genes ``x`` gives the stored embedding ``z``.

    PCA scores are compared up to a constant offset (the centre μ·L), estimated here when ``offset`` is ``None``;
    returns it.
    """
    mapped = gmap.embed(x, cov)
    if offset is None:
        offset = (mapped - z).mean(axis=0) if gmap.kind == "pca" else np.zeros(z.shape[1])
    err = np.abs(mapped - offset - z).max(axis=0) if len(z) else np.zeros(z.shape[1])
    scale = np.abs(z).max(axis=0) if len(z) else np.ones(z.shape[1])
    bad = err > REPRODUCE_RTOL * np.maximum(scale, 1e-12)
    if bad.any():
        d = int(np.flatnonzero(bad)[0])
        what = ("the PCA loadings applied to " + where + " (centred)") if gmap.kind == "pca" else \
            ("the encoder's latent means of " + where)
        hint = ("pass `layer=` naming the matrix the PCA was computed on, or recompute the PCA"
                if gmap.kind == "pca" else "pass the model that computed this latent space (and its counts layer)")
        raise ValueError(
            f"adata.obsm[{use_rep!r}] is not {what}: dimension {d} differs by up to {err[d]:.3g} (values up to "
            f"{scale[d]:.3g}); {hint}."
        )
    return offset
