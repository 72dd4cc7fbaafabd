"""The one data flow every per-cell attribution method follows (DESIGN.md "Data flow").

validate → adapter → background → predictions and targets → engine over chunks of cells → one :func:`_store.write`.

An *engine* is a callable ``engine(x, cov, classes) -> EngineOutput`` on torch tensors of one chunk of cells:
``x`` (n × G, the model's inputs), ``cov`` (n × k covariates or ``None``) and ``classes`` (n × C output indices to
explain for each cell). The ``tl`` functions build their engine from an :class:`EngineContext` and call
:func:`explain_cells`.

Latent mode: an adapter with ``explains_latent = True`` (scVI/scANVI with ``explain="latent"``) has latent
dimensions as outputs and no per-cell target; :func:`explain_cells` then hands over to :func:`_explain_latent`,
which explains every cell toward every (listed) dimension and stores genes × dimensions summaries instead of a
``layers`` entry (see its docstring for the keys).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _inputs, _store
from .._keys import Key
from .._progress import progress_iter
from ..models import ModelAdapter, adapt

__all__ = ["EngineContext", "EngineOutput", "explain_cells"]

logger = logging.getLogger("scexplain")


@dataclass
class EngineOutput:
    """What an engine returns for one chunk of ``n`` cells and ``C`` explained outputs each.

    Attributes
    ----------
    attributions
        ``n × C × G`` tensor.
    output
        ``n × C`` model outputs f(x), when the method has a completeness property (else ``None``).
    reference
        ``n × C`` reference values (e.g. mean over the background of f(b)) such that
        ``attributions.sum(-1) == output - reference``; ``None`` when the method has none.
    """

    attributions: Any
    output: Any = None
    reference: Any = None


@dataclass
class EngineContext:
    """What an engine factory may use: the adapter, device, dtype, the background and the seed."""

    adapter: ModelAdapter
    device: Any
    dtype: Any
    background: Any | None  # torch tensor (B × G) on device, or None
    random_state: int | None
    n_outputs: int


EngineFactory = Callable[[EngineContext], Callable[..., EngineOutput]]


def _tensor(a: np.ndarray, device, dtype):
    import torch

    return torch.as_tensor(a, device=device, dtype=dtype)


def _forward_all(adapter: ModelAdapter, adata: AnnData, X, *, batch_size: int, device, dtype) -> np.ndarray:
    """Model outputs for every cell (n_obs × n_outputs), no gradients."""
    import torch

    outs = []
    with torch.no_grad():
        for start in range(0, X.shape[0], batch_size):
            rows = np.arange(start, min(start + batch_size, X.shape[0]))
            x = _tensor(_inputs.dense_rows(X, rows), device, dtype)
            cov = adapter.covariates(adata, rows)
            cov = None if cov is None else cov.to(device=device, dtype=dtype)
            outs.append(adapter.forward(x, cov).detach().cpu().double().numpy())
    return np.concatenate(outs, axis=0)


def _own_targets(targets: _inputs.Targets, label_targets: np.ndarray | None, predicted: np.ndarray) -> np.ndarray:
    """Each cell's own target: its label when labels match outputs, else the prediction."""
    if targets.per_cell is not None:
        return targets.per_cell
    if label_targets is not None:
        return label_targets
    return predicted


def _column_map(names: pd.Index, var_names: pd.Index) -> np.ndarray | None:
    """Positions of the model's genes in ``adata.var_names`` (``None`` when identical)."""
    if len(names) == len(var_names) and (np.asarray(names) == np.asarray(var_names)).all():
        return None
    pos = pd.Index(var_names).get_indexer(names)
    return pos


def _scatter_columns(values: np.ndarray, pos: np.ndarray | None, n_vars: int) -> np.ndarray:
    """Put model-gene columns at their AnnData positions; genes the model does not see get 0."""
    if pos is None:
        return values
    out = np.zeros((values.shape[0], n_vars), dtype=values.dtype)
    keep = pos >= 0
    out[:, pos[keep]] = values[:, keep]
    return out


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
        With ``target="all"`` or a list: also store ``layers[f"{key}_{output}"]`` for every explained output.
    explain
        scvi-tools models: ``"classifier"`` or ``"latent"``; passed to :func:`scexplain.models.adapt` (which
        rejects it for other models) and stored in the params.
    params
        Method-specific parameters stored with the common ones.
    """
    import torch

    from .._device import check_device, resolve_device, resolve_dtype

    # 1. validate: raise before touching anything
    _inputs.check_adata(adata)
    check_device(device)
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    _inputs.check_seed(random_state)
    key = Key.default(method, key_added)
    adapter = adapt(model, output_names=output_names, **({} if explain is None else {"explain": explain}))
    X, names = adapter.input_matrix(adata, layer=layer, use_raw=use_raw)
    _inputs.check_finite(X, "input matrix")
    latent = bool(getattr(adapter, "explains_latent", False))
    latent_classes = _latent_targets(adapter, target) if latent else None
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
    pos = _column_map(pd.Index(names), adata.var_names)
    if pos is not None and (pos < 0).all():
        raise ValueError("None of the model's genes are in adata.var_names; cannot store gene attributions.")

    if latent:
        return _explain_latent(
            adata,
            model,
            adapter,
            X,
            latent_classes,
            method=method,
            engine_factory=engine_factory,
            key=key,
            groups=groups,
            pos=pos,
            bg=bg,
            bg_idx=bg_idx,
            batch_size=batch_size,
            device=dev,
            dtype=tdtype,
            random_state=random_state,
            copy=copy,
            progress=progress,
            keep_all=keep_all,
            params=params,
        )

    n_obs = adata.n_obs
    with adapter.explaining(dev, tdtype):
        # 2. predictions, output names and targets
        fx_all = _forward_all(adapter, adata, X, batch_size=batch_size, device=dev, dtype=tdtype)
        n_outputs = fx_all.shape[1]
        out_names = _inputs.resolve_output_names(adapter.output_names or output_names, n_outputs, groups)
        unlabeled = adapter.unlabeled_category
        targets = _inputs.resolve_targets(target, output_names=out_names, groups=groups, unlabeled=unlabeled,
                                          n_obs=n_obs)
        predicted = fx_all.argmax(axis=1)
        if targets.mode == "predicted" or (targets.per_cell is not None and (targets.per_cell < 0).any()):
            targets = targets.with_predictions(predicted)
        label_targets = None
        if not targets.per_cell_mode and groups is not None:
            try:
                labels = _inputs.resolve_targets("label", output_names=out_names, groups=groups, unlabeled=unlabeled,
                                                 n_obs=n_obs)
                label_targets = np.where(labels.per_cell < 0, predicted, labels.per_cell)
            except ValueError:
                label_targets = None
        own = _own_targets(targets, label_targets, predicted)
        # per cell: the explained classes, own target last when it is not already among them
        if targets.per_cell_mode:
            classes = own[:, None]
            own_col = np.zeros(n_obs, dtype=np.int64)
        else:
            listed = targets.classes
            hit = listed[None, :] == own[:, None]
            extra = ~hit.any(axis=1)
            classes = np.tile(listed, (n_obs, 1))
            if extra.any():  # some cell's own target is not listed: explain it too, in one more column
                classes = np.concatenate([classes, own[:, None]], axis=1)
            own_col = np.where(extra, len(listed), hit.argmax(axis=1))

        # 3. engine over chunks of cells
        ctx = EngineContext(
            adapter=adapter,
            device=dev,
            dtype=tdtype,
            background=None if bg is None else _tensor(bg, dev, tdtype),
            random_state=random_state,
            n_outputs=n_outputs,
        )
        engine = engine_factory(ctx)
        n_model_genes = X.shape[1]
        own_attr = np.zeros((n_obs, n_model_genes), dtype=np.float32)
        all_attr = (
            {c: np.zeros((n_obs, n_model_genes), dtype=np.float32) for c in targets.classes}
            if keep_all and not targets.per_cell_mode
            else {}
        )
        summary_cols = ("output", "expected_value", "sum_attributions", "relative_error")
        summary = np.full((n_obs, 4), np.nan)
        check = _AdditivityCheck()
        chunks = range(0, n_obs, batch_size)
        for start in progress_iter(chunks, total=len(chunks), desc=method, enabled=progress):
            rows = np.arange(start, min(start + batch_size, n_obs))
            x = _tensor(_inputs.dense_rows(X, rows, np_dtype), dev, tdtype)
            cov = adapter.covariates(adata, rows)
            cov = None if cov is None else cov.to(device=dev, dtype=tdtype)
            cls = torch.as_tensor(classes[rows], device=dev, dtype=torch.long)
            out = engine(x, cov, cls)
            attr = out.attributions.detach().cpu().double().numpy()  # n × C × G
            sel = own_col[rows]
            own_attr[rows] = attr[np.arange(len(rows)), sel]
            for j, c in enumerate(targets.classes if all_attr else ()):
                all_attr[c][rows] = attr[:, j]
            checked = check.update(attr, out)
            if checked is not None:
                fx, ref, delta, err = checked
                i = np.arange(len(rows))
                summary[rows] = np.stack(
                    [fx[i, sel], ref[i, sel], attr[i, sel].sum(-1), np.abs(err[i, sel]) / np.maximum(
                        np.abs(delta[i, sel]), 1e-12)],
                    axis=1,
                )
        expected = None
        if bg is not None and not adapter.has_covariates:
            expected = _background_mean(adapter, ctx.background)

    # 4. assemble, then write once
    layer_values = _scatter_columns(own_attr, pos, adata.n_vars)
    uns: dict[str, Any] = {Key.uns.output_names: out_names}
    additivity = check.summary(method)
    if additivity is not None:
        uns[Key.uns.additivity] = additivity
    if expected is not None:
        uns[Key.uns.expected_value] = expected
    obsm = None
    if not np.isnan(summary).all():
        obsm = pd.DataFrame(summary, columns=list(summary_cols), index=adata.obs_names)
    if targets.mode == "single":
        params["single_output"] = True
    tables, group_names = _group_tables(layer_values, groups, adata.var_names)
    result = _store.Result(
        method=method,
        key=key,
        params={**_run_params(model, bg, bg_idx, random_state, np_dtype, dev), **params},
        layer=layer_values,
        obsm=obsm,
        groups=group_names,
        group_tables=tables,
        ranking=None if not tables else (tables[Key.table.mean], group_names),
        output_layers={int(c): _scatter_columns(v, pos, adata.n_vars) for c, v in all_attr.items()},
        uns=uns,
    )
    return _store.write(adata, result, copy=copy)


def _group_tables(values: np.ndarray, groups: pd.Categorical | None, feature_names) -> tuple[dict, list[str] | None]:
    """``({"mean": ..., "mean_abs": ...}, group names)``: features × groups means over each non-empty group."""
    if groups is None:
        return {}, None
    mean = _inputs.group_means(values, groups, feature_names)
    mean_abs = _inputs.group_means(np.abs(values), groups, feature_names)
    return {Key.table.mean: mean.to_numpy(), Key.table.mean_abs: mean_abs.to_numpy()}, [str(c) for c in mean.columns]


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


def _explain_latent(
    adata: AnnData,
    model,
    adapter: ModelAdapter,
    X,
    dims: np.ndarray,
    *,
    method: str,
    engine_factory: EngineFactory,
    key: str,
    groups: pd.Categorical | None,
    pos: np.ndarray | None,
    bg: np.ndarray | None,
    bg_idx: np.ndarray | None,
    batch_size: int,
    device,
    dtype,
    random_state: int | None,
    copy: bool,
    progress: bool,
    keep_all: bool,
    params: dict[str, Any],
) -> AnnData | None:
    """Latent mode (adapters with ``explains_latent``): attributions of each gene to each latent dimension.

    Every cell is explained toward every dimension in ``dims``; attributions are only accumulated over cells
    (never cells × genes × dims at once). Stores:

    - ``varm[Key.latent(key)]``: genes × dims signed mean attribution over all cells;
    - ``varm[Key.latent_abs(key)]``: genes × dims mean |attribution|; its columns are also ranked (highest first)
      into ``uns[key]["names"/"scores"]`` with the dimensions as groups, so that
      ``sc.get.rank_genes_groups_df(adata, "latent_0", key=key)`` lists each dimension's top genes;
    - ``varm[Key.latent_groups(key)]`` (with ``groupby``): genes × groups × dims, float32, the mean
      |attribution| over each group's cells (groups in ``uns[key]["groups"]``, groups without cells left out);
    - ``obsm[key]`` (methods with a completeness property): per-cell DataFrame ``relative_error``
      ‖Σφ − Δμ‖ / ‖Δμ‖ over the dimensions, and ``obsm[Key.expected_values(key)]``, cells × dims: the reference
      mean_b f(b, c) of each dimension;
    - ``uns[key]["additivity"]`` over all cells (relative error per cell over dimensions; max abs error over all
      (cell, dimension) pairs), ``uns[key]["expected_value"]`` per dimension when the model has no covariates;
    - nothing in ``layers[key]`` (a latent dimension is no cell's own target); with ``keep_all=True``,
      ``layers[f"{key}_{dim}"]`` per explained dimension.
    """
    import torch

    n_obs = adata.n_obs
    out_names = [str(n) for n in adapter.output_names]
    dim_names = [out_names[d] for d in dims]
    n_dims = len(dims)
    with adapter.explaining(device, dtype):
        ctx = EngineContext(
            adapter=adapter,
            device=device,
            dtype=dtype,
            background=None if bg is None else _tensor(bg, device, dtype),
            random_state=random_state,
            n_outputs=len(out_names),
        )
        engine = engine_factory(ctx)
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        n_model_genes = X.shape[1]
        sum_signed = np.zeros((n_dims, n_model_genes))
        sum_abs = np.zeros((n_dims, n_model_genes))
        codes = None if groups is None else np.asarray(groups.codes)
        n_groups = 0 if groups is None else len(groups.categories)
        group_abs = np.zeros((n_groups, n_dims * n_model_genes)) if groups is not None else None
        kept = {int(d): np.zeros((n_obs, n_model_genes), dtype=np.float32) for d in dims} if keep_all else {}
        expected_cells = np.full((n_obs, n_dims), np.nan)
        check = _AdditivityCheck()
        chunks = range(0, n_obs, batch_size)
        for start in progress_iter(chunks, total=len(chunks), desc=method, enabled=progress):
            rows = np.arange(start, min(start + batch_size, n_obs))
            x = _tensor(_inputs.dense_rows(X, rows, np_dtype), device, dtype)
            cov = adapter.covariates(adata, rows)
            cov = None if cov is None else cov.to(device=device, dtype=dtype)
            cls = torch.as_tensor(np.tile(dims, (len(rows), 1)), device=device, dtype=torch.long)
            out = engine(x, cov, cls)
            attr = out.attributions.detach().cpu().double().numpy()  # n × D × G
            sum_signed += attr.sum(axis=0)
            absval = np.abs(attr)
            sum_abs += absval.sum(axis=0)
            if group_abs is not None:
                onehot = np.zeros((n_groups, len(rows)))
                onehot[codes[rows], np.arange(len(rows))] = 1.0
                group_abs += onehot @ absval.reshape(len(rows), -1)
            for j, d in enumerate(dims if kept else ()):
                kept[int(d)][rows] = attr[:, j]
            checked = check.update(attr, out)
            if checked is not None:
                expected_cells[rows] = checked[1]
        expected = None
        if bg is not None and not adapter.has_covariates and check.rel:
            expected = _background_mean(adapter, ctx.background)[dims]

    # assemble, then write once
    def genes_by_dims(values: np.ndarray) -> np.ndarray:
        return _scatter_columns(values, pos, adata.n_vars).T  # n_vars × D

    mean_signed = genes_by_dims(sum_signed / n_obs)
    mean_abs = genes_by_dims(sum_abs / n_obs)
    uns: dict[str, Any] = {Key.uns.output_names: out_names, Key.uns.latent_dims: dim_names}
    additivity = check.summary(f"{method} (latent)")
    if additivity is not None:
        uns[Key.uns.additivity] = additivity
    if expected is not None:
        uns[Key.uns.expected_value] = expected
    varm_extra = {Key.latent(key): mean_signed, Key.latent_abs(key): mean_abs}
    if group_abs is not None:
        counts = np.bincount(codes, minlength=n_groups).astype(np.float64)
        keep = np.flatnonzero(counts > 0)
        means = (group_abs[keep] / counts[keep, None]).reshape(len(keep), n_dims, n_model_genes)
        cube = np.stack([_scatter_columns(m, pos, adata.n_vars).T for m in means], axis=1)  # genes × groups × D
        varm_extra[Key.latent_groups(key)] = cube.astype(np.float32)
        uns[Key.uns.groups] = [str(groups.categories[g]) for g in keep]
    obsm = obsm_extra = None
    if additivity is not None:
        obsm = pd.DataFrame({"relative_error": np.concatenate(check.rel)}, index=adata.obs_names)
        obsm_extra = {Key.expected_values(key): expected_cells}
    result = _store.Result(
        method=method,
        key=key,
        params={**_run_params(model, bg, bg_idx, random_state, np_dtype, device), **params, "explain": "latent"},
        obsm=obsm,
        obsm_extra=obsm_extra or {},
        varm_extra=varm_extra,
        output_layers={int(d): _scatter_columns(v, pos, adata.n_vars) for d, v in kept.items()},
        ranking=(mean_abs, dim_names),
        uns=uns,
    )
    return _store.write(adata, result, copy=copy)


class _AdditivityCheck:
    """Σφ against f(x) − reference, accumulated chunk by chunk (chunks arrive in cell order)."""

    def __init__(self) -> None:
        self.rel: list[np.ndarray] = []  # per cell: ‖Σφ − Δf‖ / ‖Δf‖ over the explained outputs
        self.abs: list[np.ndarray] = []  # per cell: max |Σφ − Δf| over the explained outputs

    def update(self, attr: np.ndarray, out: EngineOutput):
        """``(f(x), reference, Δf, Σφ − Δf)`` of one chunk, or ``None`` when the method has no completeness."""
        if out.output is None or out.reference is None:
            return None
        fx = out.output.detach().cpu().double().numpy()
        ref = out.reference.detach().cpu().double().numpy()
        delta = fx - ref
        err = attr.sum(-1) - delta
        self.rel.append(np.linalg.norm(err, axis=1) / np.maximum(np.linalg.norm(delta, axis=1), 1e-12))
        self.abs.append(np.abs(err).max(axis=1))
        return fx, ref, delta, err

    def summary(self, what: str) -> dict[str, float] | None:
        """Max and median relative error over cells, max absolute error; logged. ``None`` if nothing was checked."""
        if not self.rel:
            return None
        rel = np.concatenate(self.rel)
        out = {
            "max_relative_error": float(rel.max()),
            "median_relative_error": float(np.median(rel)),
            "max_abs_error": float(np.concatenate(self.abs).max()),
        }
        logger.info("%s: max relative additivity error %.3g (median %.3g)", what, out["max_relative_error"],
                    out["median_relative_error"])
        return out


def _run_params(model, bg, bg_idx, random_state, np_dtype, device) -> dict[str, Any]:
    """Parameters every run stores: model class, background, seed, dtype, device, versions."""
    return {
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "n_background": None if bg is None else int(bg.shape[0]),
        "background_obs_indices": bg_idx,
        "random_state": random_state,
        "dtype": str(np_dtype.__name__),
        "device": str(device.type),
        "versions": _versions(),
    }


def _background_mean(adapter: ModelAdapter, bg) -> np.ndarray:
    """mean_b f(b) per output (models without covariates); ``bg`` is a tensor on the model's device."""
    import torch

    with torch.no_grad():
        out = adapter.forward(bg, None)
    return out.detach().cpu().double().numpy().mean(axis=0)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {}
    for pkg in ("scexplain", "torch", "anndata"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = "unknown"
    return out
