"""The data flow of every attribution method on a differentiable model (DESIGN.md "Data flow").

validate → adapter → background → block function → :func:`~scexplain.tl._blocks.map_reduce` over blocks of cells
→ one :func:`_store.write`.

An *engine* is a callable ``engine(x, cov, classes, rows, own_col, codes) -> EngineOutput`` on torch tensors of one
batch of cells: ``x`` (n × G, the model's inputs), ``cov`` (n × k covariates or ``None``), ``classes`` (n × C output
indices to explain for each cell), ``rows`` (the cells' global indices, for per-cell seeds), ``own_col`` (n, the
column of ``classes`` that is each cell's own target) and ``codes`` (n group codes, or ``None``). The ``tl``
functions build their engine from an :class:`EngineContext` and call :func:`explain_cells`.

Presence/absence: every stored attribution is split into the part from genes above the reference ("presence") and
below it (absence = φ − presence). An engine built on (cell, background cell) pairs returns the split itself
(``EngineOutput.presence``: each pair's term by the sign of ``x_g − b_g``); for the others the driver splits by
the sign of ``x_g`` minus the reference (the mean of the background cells, or the integrated-gradients baseline).

The block function (:class:`CellBlocks`, or :class:`LatentBlocks` for scVI/scANVI latent dimensions) holds
everything a block needs — adapter, background, each cell's covariates, targets and group — and nothing of the
AnnData, so that it can travel to dask workers; it computes predictions, targets and attributions of its cells in
one go and returns their per-group sums and per-cell summaries along with the attributions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _inputs, _store
from .._keys import Key
from ..models import ModelAdapter, adapt
from ._blocks import BlockOutput, is_dask, iter_batches, map_reduce

__all__ = ["CellBlocks", "EngineContext", "EngineOutput", "LatentBlocks", "explain_cells"]

logger = logging.getLogger("scexplain")


@dataclass
class EngineOutput:
    """What an engine returns for one batch of ``n`` cells and ``C`` explained outputs each.

    Attributes
    ----------
    attributions
        ``n × C × G`` tensor.
    output
        ``n × C`` model outputs f(x), when the method has a completeness property (else ``None``).
    reference
        ``n × C`` reference values (e.g. mean over the background of f(b)) such that
        ``attributions.sum(-1) == output - reference``; ``None`` when the method has none.
    presence
        ``n × C × G`` presence part of the attributions, from engines that split each (cell, background cell)
        pair's term themselves; ``None``: the driver splits by the sign of ``x − reference``.
    background_sums
        ``n_groups × B × G`` per-(group, background cell) sums of the cells' own-target per-pair attributions
        (for the bootstrap), when the context asks for them (``EngineContext.n_groups``); else ``None``.
    """

    attributions: Any
    output: Any = None
    reference: Any = None
    presence: Any = None
    background_sums: Any = None


@dataclass
class EngineContext:
    """What an engine factory may use: the adapter, device, dtype, the background and the seed."""

    adapter: ModelAdapter
    device: Any
    dtype: Any
    background: Any | None  # torch tensor (B × G) on device, or None
    random_state: int | None
    n_outputs: int
    #: split each pair's term into presence/absence (engines on pairs; others leave it to the driver)
    split: bool = True
    #: groups to return per-(group, background cell) sums for (0: none)
    n_groups: int = 0


EngineFactory = Callable[[EngineContext], Callable[..., EngineOutput]]


def _tensor(a: np.ndarray, device, dtype):
    import torch

    return torch.as_tensor(a, device=device, dtype=dtype)


# --- targets -----------------------------------------------------------------------------------------------------
@dataclass
class OwnTargets:
    """Which outputs each cell is explained toward.

    Attributes
    ----------
    listed
        Output indices explained for every cell (``target="all"`` or a list), or ``None`` (one per cell).
    labels
        Global per-cell own target (the label's output, or the only output of a single-output model), ``-1``
        where the cell's prediction is its own target; ``None``: every cell's prediction.
    """

    listed: np.ndarray | None
    labels: np.ndarray | None

    def needs_prediction(self, rows: np.ndarray) -> bool:
        """Whether some of the cells ``rows`` take their prediction as own target."""
        return self.labels is None or bool((self.labels[rows] < 0).any())

    def resolve(self, rows: np.ndarray, predicted: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``(classes n × C, own_col n)``: explained outputs of the cells ``rows`` and the column of their own one."""
        own = self.labels[rows] if self.labels is not None else predicted
        if self.labels is not None and (own < 0).any():
            own = np.where(own < 0, predicted, own)
        n = len(rows)
        if self.listed is None:
            return own[:, None], np.zeros(n, dtype=np.int64)
        hit = self.listed[None, :] == own[:, None]
        extra = ~hit.any(axis=1)
        classes = np.tile(self.listed, (n, 1))
        if extra.any():  # some cell's own target is not listed: explain it too, in one more column
            classes = np.concatenate([classes, own[:, None]], axis=1)
        return classes, np.where(extra, len(self.listed), hit.argmax(axis=1))


def own_targets(targets: _inputs.Targets, label_targets: np.ndarray | None) -> OwnTargets:
    """:class:`OwnTargets` of resolved ``targets`` (``label_targets``: the labels' outputs when they are outputs)."""
    if targets.per_cell_mode:
        return OwnTargets(None, None if targets.mode == "predicted" else targets.per_cell)
    return OwnTargets(np.asarray(targets.classes, dtype=np.int64), label_targets)


# --- block functions ---------------------------------------------------------------------------------------------
class _Blocks:
    """Shared state of the block functions: the adapter on its device, the engine (built once per process)."""

    #: how many block functions this process received from another one (dask workers: once per call)
    unpickled = 0

    def __init__(self, *, adapter, engine_factory, background, random_state, n_outputs, device, dtype, batch_size,
                 cov, codes, n_groups, pos, n_vars, check_rows, reference=None, bootstrap=None, split=True):
        self.adapter = adapter
        self.engine_factory = engine_factory
        self.background = background  # numpy (B × G) or None
        self.random_state = random_state
        self.n_outputs = n_outputs
        self.device, self.dtype = device, dtype
        self.batch_size = batch_size
        self.cov = cov  # numpy (n_obs × k) or None
        self.codes, self.n_groups = codes, n_groups
        self.pos, self.n_vars = pos, n_vars
        self.check_rows = check_rows
        #: per-gene reference of the presence/absence split when the engine does not split pairs itself
        self.reference = reference
        #: :class:`~scexplain.tl._bootstrap.BootstrapSpec` or ``None``
        self.bootstrap = bootstrap
        #: whether to split attributions into presence/absence
        self.split = split
        self._engine = None
        self._lock = threading.Lock()
        #: engine calls (batches) this process ran; tests count them
        self.calls = 0

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_engine"] = None  # every process builds its own engine (and its background cache)
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
        _Blocks.unpickled += 1

    @property
    def np_dtype(self):
        import torch

        return np.float64 if self.dtype == torch.float64 else np.float32

    def engine(self):
        if self._engine is None:
            ctx = EngineContext(
                adapter=self.adapter, device=self.device, dtype=self.dtype,
                background=None if self.background is None else _tensor(self.background, self.device, self.dtype),
                random_state=self.random_state, n_outputs=self.n_outputs,
                n_groups=self.n_groups if self.bootstrap is not None else 0, split=self.split,
            )  # fmt: skip
            self._engine = self.engine_factory(ctx)
        return self._engine

    def rows_of(self, x_block) -> np.ndarray:
        x = _inputs.dense_rows(x_block, None, self.np_dtype)
        if self.check_rows:
            self.adapter.check_rows(x)
        return x

    def cov_of(self, rows: np.ndarray):
        return None if self.cov is None else _tensor(self.cov[rows], self.device, self.dtype)

    def call(self, x, cov, classes, rows, own_col):
        """One engine call (serialised: the engine's background cache is shared by the threads of a worker)."""
        import torch

        engine = self.engine()
        own = torch.as_tensor(own_col, device=self.device, dtype=torch.long)
        codes = None if self.codes is None else torch.as_tensor(self.codes[rows], device=self.device,
                                                                 dtype=torch.long)
        with self._lock:
            out = engine(x, cov, classes, rows, own, codes)
            self.calls += 1
        return out

    def presence(self, out: EngineOutput, attr: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Presence part (m × C × G) of a batch's attributions: the engine's own split, else by ``x > reference``."""
        if out.presence is not None:
            return out.presence.detach().cpu().double().numpy()
        return attr * (x > self.reference)[:, None, :]

    def group_sums(self, rows: np.ndarray, values: np.ndarray, name: str, out: dict) -> None:
        """Add per-group sums of ``values`` (cells × ...) over the cells ``rows`` to ``out[name]``."""
        if self.codes is None:
            return
        onehot = np.zeros((self.n_groups, len(rows)))
        onehot[self.codes[rows], np.arange(len(rows))] = 1.0
        flat = values.reshape(len(rows), -1).astype(np.float64)
        out[name] = (onehot @ flat).reshape(self.n_groups, *values.shape[1:])
        out.setdefault("group_count", onehot.sum(axis=1))


class CellBlocks(_Blocks):
    """Block function of the per-cell methods: each cell toward its own target (and the listed outputs).

    Layers: ``"own"`` (cells × ``n_vars``), its presence part ``"presence"``, and, with ``keep_all``, ``"out{j}"``
    per listed output ``j``. Sums (with ``groupby``): ``group_sum``, ``group_abs``, ``group_presence``,
    ``group_count``, and with a bootstrap its partial sums (``boot_T``, ``boot_V``, ``boot_S``). Per cell:
    ``summary`` (output, reference, Σφ, relative error of the own target) and the additivity errors ``rel``/``abs``
    (methods with a completeness property).
    """

    def __init__(self, *, targets: OwnTargets, keep_all: bool, **kwargs):
        super().__init__(**kwargs)
        self.targets = targets
        self.keep_all = keep_all and targets.listed is not None

    def __call__(self, x_block, rows: np.ndarray) -> BlockOutput:
        import torch

        x_all = self.rows_of(x_block)
        n, n_genes = x_all.shape
        own_attr, own_presence = np.zeros((n, n_genes)), np.zeros((n, n_genes))
        kept = {int(c): np.zeros((n, n_genes)) for c in self.targets.listed} if self.keep_all else {}
        summary = np.full((n, 4), np.nan)
        rel, err_abs = np.full(n, np.nan), np.full(n, np.nan)
        bg_sums = None
        checked = False
        for part in iter_batches(n, self.batch_size):
            r = rows[part]
            x = _tensor(x_all[part], self.device, self.dtype)
            cov = self.cov_of(r)
            predicted = None
            if self.targets.needs_prediction(r):
                with torch.no_grad():
                    predicted = self.adapter.forward(x, cov).argmax(1).cpu().numpy()
            classes, own_col = self.targets.resolve(r, predicted)
            cls = torch.as_tensor(classes, device=self.device, dtype=torch.long)
            out = self.call(x, cov, cls, r, own_col)
            attr = out.attributions.detach().cpu().double().numpy()  # m × C × G
            i = np.arange(len(r))
            own_attr[part] = attr[i, own_col]
            if self.split:
                own_presence[part] = self.presence(out, attr, x_all[part])[i, own_col]
            for j, c in enumerate(self.targets.listed if kept else ()):
                kept[int(c)][part] = attr[:, j]
            if out.background_sums is not None:
                s = out.background_sums.detach().cpu().double().numpy()
                bg_sums = s if bg_sums is None else bg_sums + s
            if out.output is not None and out.reference is not None:
                checked = True
                fx, ref, delta, err = _summation_errors(out, attr)
                rel[part] = np.linalg.norm(err, axis=1) / np.maximum(np.linalg.norm(delta, axis=1), 1e-12)
                err_abs[part] = np.abs(err).max(axis=1)
                summary[part] = np.stack([fx[i, own_col], ref[i, own_col], attr[i, own_col].sum(-1),
                                          np.abs(err[i, own_col]) / np.maximum(np.abs(delta[i, own_col]), 1e-12)],
                                         axis=1)
        own_genes = _inputs.scatter_columns(own_attr, self.pos, self.n_vars)
        presence = _inputs.scatter_columns(own_presence, self.pos, self.n_vars)
        layers = {"own": own_genes.astype(np.float32)}
        if self.split:
            layers["presence"] = presence.astype(np.float32)
        layers.update({f"out{c}": _inputs.scatter_columns(v, self.pos, self.n_vars).astype(np.float32)
                       for c, v in kept.items()})
        sums: dict[str, np.ndarray] = {}
        self.group_sums(rows, own_genes, "group_sum", sums)
        self.group_sums(rows, np.abs(own_genes), "group_abs", sums)
        if self.split:
            self.group_sums(rows, presence, "group_presence", sums)
        if self.bootstrap is not None and self.codes is not None:
            from ._bootstrap import cell_partials

            sums.update(cell_partials(self.bootstrap, rows, self.codes, self.n_groups, own_genes))
            if bg_sums is not None:
                sums["boot_S"] = _inputs.scatter_columns(bg_sums, self.pos, self.n_vars)
        cells = {"summary": summary, "rel": rel, "abs": err_abs} if checked else {}
        return BlockOutput(layers=layers, sums=sums, cells=cells)


class LatentBlocks(_Blocks):
    """Block function of latent mode: every cell toward every explained latent dimension.

    Sums: ``latent_sum``/``latent_abs``/``latent_presence`` (dims × ``n_vars``) over all cells and, with ``groupby``,
    ``group_abs``
    (groups × dims × ``n_vars``) and ``group_count``. Per cell: the references ``expected`` (cells × dims) and the
    additivity errors ``rel``/``abs``. Layers only with ``keep_all``: ``"out{d}"`` per dimension.
    """

    def __init__(self, *, dims: np.ndarray, keep_all: bool, **kwargs):
        super().__init__(**kwargs)
        self.dims = np.asarray(dims, dtype=np.int64)
        self.keep_all = keep_all

    def __call__(self, x_block, rows: np.ndarray) -> BlockOutput:
        import torch

        x_all = self.rows_of(x_block)
        n, n_genes = x_all.shape
        n_dims = len(self.dims)
        attr_all = np.zeros((n, n_dims, n_genes))
        presence_all = np.zeros((n, n_dims, n_genes))
        expected = np.full((n, n_dims), np.nan)
        rel, err_abs = np.full(n, np.nan), np.full(n, np.nan)
        checked = False
        for part in iter_batches(n, self.batch_size):
            r = rows[part]
            x = _tensor(x_all[part], self.device, self.dtype)
            cls = torch.as_tensor(np.tile(self.dims, (len(r), 1)), device=self.device, dtype=torch.long)
            out = self.call(x, self.cov_of(r), cls, r, np.zeros(len(r), dtype=np.int64))
            attr = out.attributions.detach().cpu().double().numpy()  # m × D × G
            attr_all[part] = attr
            if self.split:
                presence_all[part] = self.presence(out, attr, x_all[part])
            if out.output is not None and out.reference is not None:
                checked = True
                _, ref, delta, err = _summation_errors(out, attr)
                rel[part] = np.linalg.norm(err, axis=1) / np.maximum(np.linalg.norm(delta, axis=1), 1e-12)
                err_abs[part] = np.abs(err).max(axis=1)
                expected[part] = ref
        genes = _inputs.scatter_columns(attr_all, self.pos, self.n_vars)  # n × D × n_vars
        sums = {"latent_sum": genes.sum(axis=0), "latent_abs": np.abs(genes).sum(axis=0)}
        if self.split:
            sums["latent_presence"] = _inputs.scatter_columns(presence_all, self.pos, self.n_vars).sum(axis=0)
        self.group_sums(rows, np.abs(genes), "group_abs", sums)
        layers = {f"out{d}": genes[:, j].astype(np.float32) for j, d in enumerate(self.dims)} if self.keep_all else {}
        cells = {"expected": expected, "rel": rel, "abs": err_abs} if checked else {}
        return BlockOutput(layers=layers, sums=sums, cells=cells)


# --- the driver ------------------------------------------------------------------------------------------------------
def _summation_errors(out: EngineOutput, attr: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(f(x), reference, f(x) − reference, Σ attributions − (f(x) − reference))`` of one call, float64."""
    fx = out.output.detach().cpu().double().numpy()
    ref = out.reference.detach().cpu().double().numpy()
    return fx, ref, fx - ref, attr.sum(-1) - (fx - ref)


def explain_cells(
    adata: AnnData,
    model,
    *,
    method: str,
    engine_factory: EngineFactory,
    groupby: str | None,
    layer: str | None,
    use_raw: bool,
    target,
    background=None,
    n_background: int | None = None,
    output_names=None,
    batch_size: int = 128,
    device: str = "auto",
    dtype: str = "float32",
    random_state: int | None = 0,
    key_added: str | None = None,
    copy: bool = False,
    progress: bool = True,
    keep_all: bool = False,
    explain: str | None = None,
    params: dict[str, Any] | None = None,
    expected_of: str = "background",
    presence_reference: str = "background",
    bootstrap=None,
    split: bool = True,
) -> AnnData | None:
    """Run a per-cell attribution method on every cell of ``adata`` and store the result.

    Parameters are those of the ``tl`` functions (see :func:`scexplain.tl.deep_shap`); in addition:

    method
        Name stored in ``uns[key]["params"]["method"]`` and the default key.
    engine_factory
        Builds the engine from an :class:`EngineContext`.
    n_background
        ``None`` when the method needs no background (then ``background`` is ignored).
    keep_all
        With ``target="all"`` or a list: also store ``layers[Key.output_layer(key, j)]`` per explained output.
    explain
        scvi-tools models: ``"classifier"`` or ``"latent"``; passed to :func:`scexplain.models.adapt` (which
        rejects it for other models) and stored in the params.
    params
        Method-specific parameters stored with the common ones.
    expected_of
        What ``uns[key]["expected_value"]`` is the model output of (models without covariates): the mean over
        the background cells (``"background"``) or the output at the mean background cell
        (``"background_mean"``, integrated gradients' baseline of that name).
    presence_reference
        ``"pairs"``: the engine splits each (cell, background cell) pair's term by the sign of ``x_g − b_g``. For
        engines that do not: a gene is "present" when the cell is above the mean of the background cells
        (``"background"``; methods without a background draw 100 cells for it) or above 0 (``"zeros"``,
        integrated gradients' zero baseline).
    split
        Store the presence/absence split (``False``: only the attributions, e.g. to halve an atlas' output).
    bootstrap
        A :class:`~scexplain.tl._bootstrap.BootstrapSpec`: also store percentile intervals and rank stability of
        the group summaries (needs ``groupby``).

    A dask-backed input matrix is explained block by block over its own chunks (on a ``distributed`` cluster when
    a client is active) and the layers stay dask arrays, read back from a spill store (see
    :mod:`scexplain.tl._blocks`).
    """
    import torch

    from .._device import check_device, resolve_device, resolve_dtype

    # 1. validate: raise before touching anything
    _inputs.check_adata(adata)
    check_device(device)
    if not isinstance(batch_size, int | np.integer) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    _inputs.check_seed(random_state)
    key = Key.default(method, key_added)
    adapter = adapt(model, output_names=output_names, **({} if explain is None else {"explain": explain}))
    X, names = adapter.input_matrix(adata, layer=layer, use_raw=use_raw)
    lazy = is_dask(X)
    if not lazy:  # a dask input is checked block by block, in the one pass over it
        _inputs.check_finite(X, "input matrix")
    latent = bool(getattr(adapter, "explains_latent", False))
    dims = _latent_targets(adapter, target) if latent else None
    if groupby is None:
        groupby = adapter.default_groupby
        if groupby is not None and groupby not in adata.obs.columns:
            # a query without the model's labels column: no per-group summaries, and every cell is unlabeled,
            # so target="label" explains each cell's predicted class (as for cells in the unlabeled category)
            if not latent and isinstance(target, str) and target == "label":
                logger.info("adata.obs has no %r (the model's labels): explaining each cell's predicted class.",
                            groupby)
                target = "predicted"
            groupby = None
    groups = _inputs.get_groups(adata, groupby)
    params = {
        "groupby": groupby,
        "layer": layer,
        "use_raw": bool(use_raw),
        "target": target if isinstance(target, str) else [str(t) for t in target],
        "explain": explain,
        "batch_size": int(batch_size),
        **(params or {}),
    }
    dev, tdtype = resolve_device(device), resolve_dtype(dtype)
    np_dtype = np.float64 if tdtype == torch.float64 else np.float32
    bg = bg_idx = None
    if n_background is not None:
        bg, bg_idx = _inputs.select_background(
            X,
            background=background,
            n_background=n_background,
            groups=groups,
            random_state=random_state,
            matrix_of=lambda b: adapter.input_matrix(b, layer=layer, use_raw=use_raw)[0],
            dtype=np_dtype,
        )
    if bootstrap is not None and groups is None:
        raise ValueError("`n_bootstrap` bootstraps the group summaries and needs `groupby=` (or a model with a labels "
                         "key).")
    reference = None
    if split:
        reference, params["presence_reference"] = _presence_reference(X, bg, groups, random_state,
                                                                      presence_reference, np_dtype)
    if bootstrap is not None:
        params["bootstrap"] = bootstrap.params()
    pos = _inputs.column_map(pd.Index(names), adata.var_names)
    if pos is not None and (pos < 0).all():
        raise ValueError("None of the model's genes are in adata.var_names; cannot store gene attributions.")
    cov = adapter.covariates(adata, None)
    cov = None if cov is None else cov.detach().cpu().double().numpy()
    n_obs = adata.n_obs

    with adapter.explaining(dev, tdtype):
        n_outputs = _n_outputs(adapter, X, bg, cov, dev, tdtype)
        common = dict(
            adapter=adapter, engine_factory=engine_factory, background=bg, random_state=random_state,
            n_outputs=n_outputs, device=dev, dtype=tdtype, batch_size=int(batch_size), cov=cov,
            codes=None if groups is None else np.asarray(groups.codes),
            n_groups=0 if groups is None else len(groups.categories), pos=pos, n_vars=adata.n_vars,
            check_rows=lazy, reference=reference, bootstrap=bootstrap, split=bool(split),
        )  # fmt: skip
        if latent:
            out_names = [str(n) for n in adapter.output_names]
            blocks = LatentBlocks(dims=dims, keep_all=keep_all, **common)
        else:
            out_names = _inputs.resolve_output_names(adapter.output_names or output_names, n_outputs, groups)
            unlabeled = adapter.unlabeled_category
            targets = _inputs.resolve_targets(target, output_names=out_names, groups=groups, unlabeled=unlabeled,
                                              n_obs=n_obs)
            label_targets = None
            if not targets.per_cell_mode and groups is not None:
                try:
                    label_targets = _inputs.resolve_targets("label", output_names=out_names, groups=groups,
                                                            unlabeled=unlabeled, n_obs=n_obs).per_cell
                except ValueError:
                    label_targets = None
            blocks = CellBlocks(targets=own_targets(targets, label_targets),
                                keep_all=keep_all and not targets.per_cell_mode, **common)
            if targets.mode == "single":
                params["single_output"] = True
        reduced = map_reduce(X, blocks, block_rows=int(batch_size), desc=method, progress=progress)
        expected = None
        if bg is not None and not adapter.has_covariates:
            ref = bg.mean(axis=0, keepdims=True) if expected_of == "background_mean" else bg
            expected = _background_mean(adapter, _tensor(ref, dev, tdtype))

    run_params = {**_run_params(model, bg, bg_idx, random_state, np_dtype, dev), **params}
    if latent:
        result = _latent_result(reduced, dims, out_names, groups, expected, key=key, method=method,
                                params={**run_params, "explain": "latent"})
    else:
        result = _cell_result(reduced, out_names, groups, expected, adata, key=key, method=method,
                              params=run_params, bootstrap=bootstrap, n_background=0 if bg is None else len(bg))
    return _store.write(adata, result, copy=copy)


#: how the presence/absence split is made, stored in ``params["presence_reference"]``
PAIR_SPLIT = "each (cell, background cell) pair: presence where x_g > b_g"


def _presence_reference(X, bg, groups, random_state, mode: str, dtype) -> tuple[np.ndarray, str]:
    """``(reference per model gene, description)`` of the driver's presence/absence split."""
    if mode == "pairs":  # the engine splits each (cell, background cell) pair's term itself
        return None, PAIR_SPLIT
    if mode == "zeros":
        return np.zeros(X.shape[1], dtype=dtype), "x_g > 0 (the zero baseline)"
    if mode != "background":  # pragma: no cover - programming error
        raise ValueError(f"Unknown presence reference {mode!r}.")
    if bg is None:
        idx = _inputs.stratified_indices(groups, X.shape[0], min(100, X.shape[0]), random_state)
        bg = _inputs.dense_rows(X, idx, dtype)
    return bg.mean(axis=0), f"x_g > the mean of {len(bg)} background cells"


def _n_outputs(adapter: ModelAdapter, X, bg, cov, device, dtype) -> int:
    """The model's number of outputs, from one forward pass on the first background row (or cell)."""
    import torch

    x = bg[:1] if bg is not None else _inputs.dense_rows(X, slice(0, 1))
    c = None if cov is None else _tensor(cov[:1], device, dtype)
    with torch.no_grad():
        out = adapter.forward(_tensor(x, device, dtype), c)
    return int(out.shape[1])


def _group_tables(sums: dict[str, np.ndarray], groups, names: dict[str, str]) -> tuple[dict, list[str] | None]:
    """Features × groups tables (``names``: table name → sum name) of the non-empty groups, and their names."""
    if groups is None or "group_count" not in sums:
        return {}, None
    counts = sums["group_count"]
    keep = counts > 0
    tables = {t: (sums[s][keep] / counts[keep, None]).T for t, s in names.items()}
    return tables, [str(c) for c, k in zip(groups.categories, keep, strict=True) if k]


def _additivity(cells: dict[str, np.ndarray], what: str) -> dict[str, float] | None:
    """Max and median relative error over cells, max absolute error; logged. ``None`` if nothing was checked."""
    if "rel" not in cells:
        return None
    out = {
        "max_relative_error": float(np.max(cells["rel"])),
        "median_relative_error": float(np.median(cells["rel"])),
        "max_abs_error": float(np.max(cells["abs"])),
    }
    logger.info("%s: max relative additivity error %.3g (median %.3g)", what, out["max_relative_error"],
                out["median_relative_error"])
    return out


def _cell_result(reduced, out_names, groups, expected, adata, *, key, method, params, bootstrap=None,
                 n_background: int = 0) -> _store.Result:
    uns: dict[str, Any] = {Key.uns.output_names: out_names}
    additivity = _additivity(reduced.cells, method)
    if additivity is not None:
        uns[Key.uns.additivity] = additivity
    if expected is not None:
        uns[Key.uns.expected_value] = expected
    obsm = None
    if "summary" in reduced.cells:
        obsm = pd.DataFrame(reduced.cells["summary"], index=adata.obs_names,
                            columns=["output", "expected_value", "sum_attributions", "relative_error"])
    names = {Key.table.mean: "group_sum", Key.table.mean_abs: "group_abs"}
    if "group_presence" in reduced.sums:
        names[Key.table.presence] = "group_presence"
    tables, group_names = _group_tables(reduced.sums, groups, names)
    if bootstrap is not None and tables:
        tables.update(_bootstrap_tables(reduced.sums, bootstrap, n_background))
    return _store.Result(
        method=method,
        key=key,
        params=params,
        layer=reduced.layers["own"],
        presence=reduced.layers.get("presence"),
        obsm=obsm,
        groups=group_names,
        group_tables=tables,
        ranking=None if not tables else (tables[Key.table.mean], group_names),
        output_layers={int(k[3:]): v for k, v in reduced.layers.items() if k.startswith("out")},
        uns=uns,
    )


def _bootstrap_tables(sums: dict[str, np.ndarray], spec, n_background: int) -> dict[str, np.ndarray]:
    """``ci_low``, ``ci_high``, ``rank_stability`` (features × non-empty groups) from the pass's partial sums."""
    from ._bootstrap import summarise

    return summarise(spec, sums["boot_T"], sums["boot_V"], sums.get("boot_S"), sums["group_count"], n_background)


def _latent_targets(adapter: ModelAdapter, target) -> np.ndarray:
    """Latent dimensions to explain: all for ``"all"`` (and the default ``"label"``), or the listed ones."""
    names = list(adapter.output_names)
    if isinstance(target, str) and target in ("label", "all"):
        return np.arange(len(names))
    if isinstance(target, str) and target == "predicted":
        raise ValueError(
            "Latent dimensions have no predicted class; with explain='latent' use target='all' or a list of "
            f"latent dimensions among {names}."
        )
    return _inputs.resolve_targets(target, output_names=names, groups=None).classes


def _latent_result(reduced, dims, out_names, groups, expected, *, key, method, params) -> _store.Result:
    """Latent mode's result: genes × dims tables instead of ``layers[key]``.

    Stores ``varm[Key.latent(key)]`` (signed mean over cells), ``varm[Key.latent_abs(key)]`` (mean |φ|, also ranked
    into ``uns[key]["names"/"scores"]`` with the dimensions as groups, so that ``sc.get.rank_genes_groups_df(adata,
    "latent_0", key=key)`` lists each dimension's top genes), ``varm[Key.latent_groups(key)]`` with ``groupby``
    (genes × groups × dims mean |φ|), ``obsm[key]`` (per-cell ``relative_error``) and
    ``obsm[Key.expected_values(key)]`` (per-cell references) for methods with a completeness property, and
    ``layers[Key.output_layer(key, d)]`` per dimension with ``keep_all``.
    """
    sums, cells = reduced.sums, reduced.cells
    dim_names = [out_names[d] for d in dims]
    uns: dict[str, Any] = {Key.uns.output_names: out_names, Key.uns.latent_dims: dim_names}
    additivity = _additivity(cells, f"{method} (latent)")
    if additivity is not None:
        uns[Key.uns.additivity] = additivity
    if expected is not None and additivity is not None:
        uns[Key.uns.expected_value] = expected[dims]
    n = float(reduced.n_rows)
    varm_extra = {Key.latent(key): sums["latent_sum"].T / n, Key.latent_abs(key): sums["latent_abs"].T / n}
    if "latent_presence" in sums:
        varm_extra[Key.latent_presence(key)] = sums["latent_presence"].T / n
    if "group_count" in sums:
        counts = sums["group_count"]
        keep = np.flatnonzero(counts > 0)
        cube = sums["group_abs"][keep] / counts[keep, None, None]  # groups × D × n_vars
        varm_extra[Key.latent_groups(key)] = cube.transpose(2, 0, 1).astype(np.float32)
        uns[Key.uns.groups] = [str(groups.categories[g]) for g in keep]
    obsm = obsm_extra = None
    if additivity is not None:
        obsm = pd.DataFrame({"relative_error": cells["rel"]})
        obsm_extra = {Key.expected_values(key): cells["expected"]}
    return _store.Result(
        method=method,
        key=key,
        params=params,
        obsm=obsm,
        obsm_extra=obsm_extra or {},
        varm_extra=varm_extra,
        output_layers={int(k[3:]): v for k, v in reduced.layers.items() if k.startswith("out")},
        ranking=(varm_extra[Key.latent_abs(key)], dim_names),
        uns=uns,
    )


def _run_params(model, bg, bg_idx, random_state, np_dtype, device) -> dict[str, Any]:
    """Parameters every run stores: model class, background, seed, dtype, device, versions."""
    return {
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "n_background": None if bg is None else int(bg.shape[0]),
        "background_obs_indices": bg_idx,
        "random_state": random_state,
        "dtype": str(np_dtype.__name__),
        "device": str(device.type),
        "versions": _store.versions("torch", "anndata"),
    }


def _background_mean(adapter: ModelAdapter, bg) -> np.ndarray:
    """mean_b f(b) per output (models without covariates); ``bg`` is a tensor on the model's device."""
    import torch

    with torch.no_grad():
        out = adapter.forward(bg, None)
    return out.detach().cpu().double().numpy().mean(axis=0)
