"""The block function of ``tl.tree_shap_gpu`` (see :mod:`scexplain.tl._blocks`).

A block of cells in; their exact TreeSHAP values, presence parts, group sums, bootstrap partials and
(``to_genes``) gene attributions out.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .. import _inputs
from ._blocks import BlockOutput
from ._bootstrap import BootstrapSpec, cell_partials
from ._driver import OwnTargets
from ._tree_genes import GeneMap, check_reproduces, compose_interventional, compose_path_dependent

__all__ = ["GenesPart", "TreeBlocks", "call_engine", "engine_module"]

#: float64 elements of the largest per-batch array of the gene composition (cells × B × genes and the like)
GENE_BATCH_ELEMENTS = 1 << 22


def engine_module(name: str):
    """The engine module of a device name (``"cpu"``: Numba, ``"cuda"``: CuPy)."""
    from ..engines import treeshap_cpu, treeshap_gpu

    return treeshap_gpu if name == "cuda" else treeshap_cpu


def call_engine(engine, fn: str, *args, **kwargs):
    """Call an engine function; the GPU engine gets CuPy as its array module."""
    if engine.__name__.endswith("treeshap_gpu"):
        kwargs["xp"] = engine.get_cupy()
    return getattr(engine, fn)(*args, **kwargs)


def check_no_inf(X, what: str) -> None:
    """Raise if ``X`` (dense, sparse or dask) has an infinite value; NaN (missing) is allowed for trees."""
    from scipy import sparse

    data = X.data if sparse.issparse(X) else X
    if hasattr(data, "compute"):
        data = data.compute()
    if np.isinf(np.asarray(data)).any():
        raise ValueError(f"The {what} contains infinite values; trees accept finite values and NaN (missing) only.")


@dataclass
class GenesPart:
    """What a block needs to carry the embedding's attributions back to genes (``to_genes``).

    ``embedding`` (all cells × the model's embedding columns, as stored) and ``cov`` (all cells × covariates) are
    indexed by global cell index; the blocks themselves are rows of the gene matrix.
    """

    gmap: GeneMap
    embedding: np.ndarray
    cov: np.ndarray | None
    background: np.ndarray  # background cells × the map's genes
    offset: np.ndarray  # the PCA centre μ·L (zeros for an encoder), for the check of each block
    pos: np.ndarray | None  # adata.var columns of the map's genes
    n_vars: int
    use_rep: str
    where: str


class TreeBlocks:
    """Block function of TreeSHAP: predictions, own targets and exact SHAP values of a block of cells.

    Layers: ``"own"`` (cells × matrix columns, or genes with ``to_genes``), ``"presence"`` (its presence part), with
    ``to_genes`` also ``"dims"``/``"dims_presence"`` (the embedding's), and with ``keep_all`` ``"out{j}"`` per
    listed output ``j``. Sums (with ``groupby``): ``group_sum``, ``group_abs``, ``group_presence``,
    ``group_count`` (and ``dims_*`` with ``to_genes``); with a bootstrap ``boot_T``, ``boot_V``, ``boot_S`` (and
    ``dims_boot_*``). Per cell: ``summary`` (f(x), expected value, Σφ and |error| of the own target), ``abs``
    (max |error| over the explained outputs), ``interactions``; with ``to_genes`` ``genes_rel`` (relative error
    of Σ_genes against Σ_dims), and the sum ``fallback_pairs`` (pairs split by the pooled weights).
    """

    def __init__(self, *, paths, engine: str, cols, n_cols: int, background, reference, targets: OwnTargets,
                 keep_all: bool, interactions: bool, codes, n_groups: int, check_rows: bool,
                 bootstrap: BootstrapSpec | None = None, genes: GenesPart | None = None):
        self.paths, self.engine_name = paths, engine
        self.cols, self.n_cols = cols, n_cols
        self.background = background  # prepared rows (interventional), else None
        self.reference = reference  # prepared rows whose mean is the presence reference (path-dependent)
        self.ref_mean = None if reference is None else np.nanmean(reference, axis=0)
        self.targets = targets
        self.keep_all, self.interactions = keep_all, interactions
        self.codes, self.n_groups = codes, n_groups
        self.check_rows = check_rows
        self.bootstrap = bootstrap
        self.genes = genes
        #: expected value per output (mean over the background, or over the trees' covers)
        self.expected = np.asarray(call_engine(engine_module(engine), "expected_value", paths, background),
                                   dtype=np.float64)
        self._lock = threading.Lock()
        #: blocks this process explained; tests count them
        self.calls = 0

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- inputs ---------------------------------------------------------------------------------------------------
    def _inputs(self, x_block, rows):
        """``(model inputs, gene rows or None)`` of the block."""
        if self.genes is None:
            dense = _inputs.dense_rows(x_block, None, np.float64)
            if self.check_rows:
                check_no_inf(dense, "input matrix")
            return self.paths.prepare_input(dense if self.cols is None else dense[:, self.cols]), None
        g = self.genes
        xg = _inputs.dense_rows(x_block, None, np.float64)
        if self.check_rows:
            if hasattr(g.gmap, "adapter"):
                g.gmap.adapter.check_rows(xg)
            elif not np.isfinite(xg).all():
                raise ValueError(f"{g.where} has NaN or infinite values; the PCA's genes must be finite.")
        z = g.embedding[rows]
        cov = None if g.cov is None else g.cov[rows]
        with self._lock:
            check_reproduces(g.gmap, xg, cov, z, g.offset, use_rep=g.use_rep, where=g.where)
        return self.paths.prepare_input(z), xg

    # -- the block ------------------------------------------------------------------------------------------------
    def __call__(self, x_block, rows: np.ndarray) -> BlockOutput:
        engine = engine_module(self.engine_name)
        x, xg = self._inputs(x_block, rows)
        n = len(rows)
        i = np.arange(n)
        fx = np.asarray(call_engine(engine, "predict", self.paths, x))
        classes, own_col = self.targets.resolve(rows, fx.argmax(axis=1))
        own_class = classes[i, own_col]
        pairs = None
        if self.background is not None and self.genes is not None:  # the pairs carry the split to genes
            pairs = call_engine(engine, "pair_values", self.paths, x, own_class, background=self.background)
            own = pairs.mean(axis=1)
            presence = (pairs * (x[:, None, :] > self.background[None])).mean(axis=1)
            phi = own[:, None] if classes.shape[1] == 1 else \
                call_engine(engine, "shap_values", self.paths, x, classes, background=self.background)
        elif self.background is not None:
            phi, split = call_engine(engine, "split_values", self.paths, x, classes, background=self.background)
            own, presence = phi[i, own_col], split[i, own_col]
        else:
            phi = call_engine(engine, "shap_values", self.paths, x, classes)
            own = phi[i, own_col]
            presence = np.where(x > self.ref_mean, own, 0.0)  # sign of x − mean(background); NaN: absence
        self.calls += 1
        errors = phi.sum(-1) + self.expected[classes] - np.take_along_axis(fx, classes, axis=1)
        cells = {
            "summary": np.stack([fx[i, own_class], self.expected[own_class], own.sum(-1),
                                 np.abs(errors[i, own_col])], axis=1),
            "abs": np.abs(errors).max(axis=1),
        }
        if self.interactions:
            cells["interactions"] = call_engine(engine, "interaction_values", self.paths, x, own_class[:, None])[:, 0]
        scatter = lambda v: _inputs.scatter_columns(v, self.cols, self.n_cols)  # noqa: E731
        layers = {}
        if self.keep_all:
            layers.update({f"out{c}": scatter(phi[:, j]).astype(np.float32)
                           for j, c in enumerate(self.targets.listed)})
        onehot = self._onehot(rows)
        sums: dict[str, np.ndarray] = {}
        dims, dims_presence = scatter(own), scatter(presence)
        if self.genes is None:
            values, values_presence = dims, dims_presence
            if self.bootstrap is not None and onehot is not None:
                S = call_engine(engine, "group_sums", self.paths, x, own_class, self.codes[rows], self.n_groups,
                                background=self.background)
                sums["boot_S"] = scatter(S)
        else:
            values, values_presence = self._genes(xg, rows, own, pairs, onehot, cells, sums)
            layers.update({"dims": dims.astype(np.float32), "dims_presence": dims_presence.astype(np.float32)})
            self._tables(rows, onehot, dims, dims_presence, "dims_", sums)
            if self.bootstrap is not None and onehot is not None:
                sums["dims_boot_S"] = scatter(np.einsum("ki,ibf->kbf", onehot, pairs))
        layers.update({"own": values.astype(np.float32), "presence": values_presence.astype(np.float32)})
        self._tables(rows, onehot, values, values_presence, "", sums)
        return BlockOutput(layers=layers, sums=sums, cells=cells)

    def _onehot(self, rows):
        if self.codes is None:
            return None
        onehot = np.zeros((self.n_groups, len(rows)))
        onehot[self.codes[rows], np.arange(len(rows))] = 1.0
        return onehot

    def _tables(self, rows, onehot, values, presence, prefix: str, sums: dict) -> None:
        """Per-group sums of the values, their absolute values and presence parts; bootstrap partials."""
        if onehot is None:
            return
        sums.update({f"{prefix}group_sum": onehot @ values, f"{prefix}group_abs": onehot @ np.abs(values),
                     f"{prefix}group_presence": onehot @ presence})
        sums.setdefault("group_count", onehot.sum(axis=1))
        if self.bootstrap is not None:
            part = cell_partials(self.bootstrap, rows, self.codes, self.n_groups, values)
            sums.update({f"{prefix}{k}": v for k, v in part.items()})

    def _genes(self, xg, rows, own, pairs, onehot, cells, sums):
        """Gene attributions (and presence parts) of the block's cells, in batches; per-cell additivity."""
        g = self.genes
        n, G = xg.shape
        D = own.shape[1]
        B = g.background.shape[0]
        if hasattr(g.gmap, "adapter"):  # one background cell at a time: contributions and pooled sums
            per_cell = 4 * G * D + 3 * B * D
        else:  # all background cells at once: differences, gene terms, pooled sums
            per_cell = 3 * G * B + 2 * G * D
        step = max(1, GENE_BATCH_ELEMENTS // per_cell)
        genes, presence = np.zeros((n, G)), np.zeros((n, G))
        S = None
        fallback = 0
        for s in range(0, n, step):
            part = slice(s, min(n, s + step))
            cov = None if g.cov is None else g.cov[rows[part]]
            with self._lock:  # the encoder's caches and module are shared by the threads of a worker
                if pairs is not None:
                    oh = None if onehot is None or self.bootstrap is None else onehot[:, part]
                    c = compose_interventional(g.gmap, xg[part], cov, g.background, pairs[part], oh)
                else:
                    c = compose_path_dependent(g.gmap, xg[part], cov, g.background, own[part])
            genes[part], presence[part] = c.genes, c.presence
            fallback += c.fallback_pairs
            if c.S is not None:
                S = c.S if S is None else S + c.S
        total = own.sum(-1)
        cells["genes_rel"] = np.abs(genes.sum(-1) - total) / np.maximum(np.abs(total), 1e-12)
        sums["fallback_pairs"] = np.asarray([float(fallback)])
        if S is not None:
            sums["boot_S"] = _inputs.scatter_columns(S, g.pos, g.n_vars)
        return (_inputs.scatter_columns(genes, g.pos, g.n_vars), _inputs.scatter_columns(presence, g.pos, g.n_vars))
