"""``tl.tree_shap_gpu``: exact TreeSHAP for tree ensembles on an embedding or on genes (CuPy GPU or Numba CPU)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .. import _inputs, _store
from .._docs import doc_params
from .._keys import Key
from ._blocks import BlockOutput, is_dask, map_reduce
from ._driver import OwnTargets, _group_tables, own_targets

__all__ = ["tree_shap_gpu"]

logger = logging.getLogger("scexplain")

METHOD = "tree_shap"
_PERTURBATIONS = ("tree_path_dependent", "interventional")
#: Largest cells × features² interaction array (float64 elements) computed at once.
_MAX_INTERACTION_ELEMENTS = 1 << 29
#: Dense float64 elements of one chunk of cells (rows × features × explained outputs).
_CHUNK_ELEMENTS = 1 << 25
#: Names of the dimensions of well-known embeddings (scanpy's plotting names), numbered from 1.
_REP_PREFIX = {"X_pca": "PC", "X_umap": "UMAP", "X_tsne": "tSNE", "X_diffmap": "DC", "X_draw_graph_fa": "FA"}


def _rep_feature_names(use_rep: str, rep) -> list[str]:
    """``PC1 …`` for ``X_pca`` (and other scanpy embeddings), the columns of a DataFrame, else ``{use_rep}_1 …``."""
    if isinstance(rep, pd.DataFrame):
        return [str(c) for c in rep.columns]
    prefix = _REP_PREFIX.get(use_rep, f"{use_rep}_")
    return [f"{prefix}{i + 1}" for i in range(rep.shape[1])]


def _feature_matrix(adata: AnnData, use_rep: str | None, layer: str | None):
    """``(X, feature_names)``: ``obsm[use_rep]`` (dims named) or the gene matrix (``layer`` or ``X``)."""
    if use_rep is None:
        X, names = _inputs.get_matrix(adata, layer=layer)
        return X, [str(n) for n in names]
    if layer is not None:
        raise ValueError("Pass either `use_rep` (an obsm embedding) or `layer` (genes), not both.")
    if use_rep not in adata.obsm:
        raise ValueError(f"`use_rep={use_rep!r}` is not in adata.obsm; available: {sorted(adata.obsm.keys())}.")
    rep = adata.obsm[use_rep]
    if getattr(rep, "ndim", 2) != 2:
        raise ValueError(f"adata.obsm[{use_rep!r}] must be 2-D (cells × dims), got shape {rep.shape}.")
    names = _rep_feature_names(use_rep, rep)
    return (rep.to_numpy() if isinstance(rep, pd.DataFrame) else rep), names


def _model_columns(paths, feature_names: list[str], use_rep: str | None) -> np.ndarray | None:
    """Columns of the matrix feeding each model input (``None``: all, in order); raises on a mismatch."""
    what = f"adata.obsm[{use_rep!r}]" if use_rep is not None else "the gene matrix"
    if paths.feature_names is not None:
        pos = pd.Index(feature_names).get_indexer(paths.feature_names)
        if (pos >= 0).all():
            return None if np.array_equal(pos, np.arange(len(feature_names))) else pos
        missing = [n for n, p in zip(paths.feature_names, pos, strict=True) if p < 0]
        if len(paths.feature_names) != len(feature_names):
            raise ValueError(
                f"The model was fitted on {len(paths.feature_names)} named features, {len(missing)} of which are "
                f"not in {what} (e.g. {missing[:5]})."
            )
        return None  # same width, different names (e.g. PC1 vs pc_0): positional
    if paths.n_features != len(feature_names):
        hint = " (is `use_rep` the embedding the model was trained on?)" if use_rep is not None else (
            " (pass `use_rep=` for a model trained on an embedding, or `layer=`)")
        raise ValueError(
            f"The model expects {paths.n_features} features but {what} has {len(feature_names)} columns{hint}."
        )
    return None


def _check_no_inf(X, what: str) -> None:
    data = X.data if sparse.issparse(X) else X
    if hasattr(data, "compute"):
        data = data.compute()
    if np.isinf(np.asarray(data)).any():
        raise ValueError(f"The {what} contains infinite values; trees accept finite values and NaN (missing) only.")


def _rows(X, rows, cols, paths) -> np.ndarray:
    """Dense rows of ``X`` at the model's columns, rounded as the model compares them."""
    sub = _inputs.dense_rows(X, rows, np.float64)
    if cols is not None:
        sub = sub[:, cols]
    return paths.prepare_input(sub)


def _engine(device: str):
    """``(module, device_name)`` of the engine that runs: CuPy on a GPU, else Numba on the CPU (logged)."""
    from ..engines import treeshap_gpu

    if not isinstance(device, str) or device not in ("auto", "cpu", "cuda"):
        seen = "CuPy sees a CUDA device" if treeshap_gpu.cuda_available() else "CuPy sees no CUDA device"
        raise ValueError(f"`device={device!r}` is not supported; use 'auto', 'cpu' or 'cuda' ({seen}).")
    if device in ("auto", "cuda") and treeshap_gpu.cuda_available():
        logger.info("tree_shap: running on the GPU (CuPy)")
        return treeshap_gpu, "cuda"
    if device == "cuda":
        raise ValueError(
            "`device='cuda'` but no CUDA GPU is usable: CuPy is not installed or sees no device "
            "(pip install 'scexplain[gpu]' on a machine with a GPU); use device='cpu' or 'auto'."
        )
    from ..engines import treeshap_cpu

    if device == "auto":
        logger.info("tree_shap: no CUDA GPU visible to CuPy; running the Numba CPU engine")
    return treeshap_cpu, "cpu"


def _engine_module(name: str):
    """The engine module of a device name (``"cpu"``: Numba, ``"cuda"``: CuPy)."""
    from ..engines import treeshap_cpu, treeshap_gpu

    return treeshap_gpu if name == "cuda" else treeshap_cpu


def _call(engine, fn: str, *args, **kwargs):
    """Call an engine function; the GPU engine gets CuPy as its array module."""
    if engine.__name__.endswith("treeshap_gpu"):
        kwargs["xp"] = engine.get_cupy()
    return getattr(engine, fn)(*args, **kwargs)


def _background(X, cols, paths, *, background, n_background, groups, random_state, use_rep, layer):
    """Background rows (prepared for the model) and their obs indices when drawn from ``adata``."""
    if background is None:  # draw from adata; NaN is allowed for trees
        idx = _inputs.stratified_indices(groups, X.shape[0], n_background, random_state)
        return _rows(X, idx, cols, paths), idx

    def matrix_of(bg: AnnData):
        return _feature_matrix(bg, use_rep, layer)[0]

    bg, idx = _inputs.select_background(
        X, background=background, n_background=n_background, groups=groups, random_state=random_state,
        matrix_of=matrix_of,
    )  # fmt: skip
    if cols is not None:
        bg = bg[:, cols]
    return paths.prepare_input(bg), idx


@doc_params(
    use_rep="""use_rep
    Key of ``adata.obsm`` with the embedding the model was trained on (e.g. ``"X_pca"``, ``"X_scVI"``);
    ``None`` explains genes (``adata.X`` or ``layer``).""",
    background="""background
    Interventional mode only: reference cells, as an AnnData (with the same embedding or genes), a cells ×
    features array, or a boolean mask or integer indices over ``adata``'s cells; ``None`` draws ``n_background``
    cells of ``adata`` stratified by ``groupby``.""",
    output_names="""output_names
    Names of the model's outputs in order; default: the model's classes (unless they are the codes
    ``0 … K-1``), else the ``groupby`` categories when their number matches, else ``"0"``, ``"1"``, ….""",
)
def tree_shap_gpu(
    adata: AnnData,
    model,
    *,
    use_rep: str | None = None,
    layer: str | None = None,
    groupby: str | None = None,
    target: Literal["label", "predicted", "all"] | Sequence[str] = "label",
    feature_perturbation: Literal["tree_path_dependent", "interventional"] = "tree_path_dependent",
    background=None,
    n_background: int = 100,
    interactions: bool = False,
    output_names: Sequence[str] | None = None,
    keep_all: bool = False,
    batch_size: int | None = None,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    random_state: int | None = 0,
    key_added: str | None = None,
    copy: bool = False,
    progress: bool = True,
) -> AnnData | None:
    """Exact TreeSHAP values of a tree ensemble for every cell, on an embedding or on genes.

    The ensemble is flattened into root-to-leaf paths (repeated features merged, leaf values for every output on
    one path) and explained exactly: path-dependent TreeSHAP integrates each path's polynomial by Gauss–Legendre
    quadrature; interventional TreeSHAP averages exact per-path Shapley values over background cells. Values
    match ``shap.TreeExplainer`` (``model_output="raw"``) and sum to the model output minus the expected value.
    Runs on the GPU with CuPy when one is visible, else on all CPU cores with Numba. NaN inputs follow each
    split's default (missing-value) direction, as the model does.

    Model outputs: class probabilities (averaged over trees) for scikit-learn tree and forest classifiers; the
    raw margin (log-odds per class) for gradient boosting (scikit-learn, XGBoost, LightGBM); the prediction for
    regressors. A binary boosted classifier has one margin (log-odds of its second class); here it gets two
    outputs, ``[-margin, margin]``, so that each cell can be explained toward its own class.

    Parameters
    ----------
    {adata}
    model
        A fitted scikit-learn ``DecisionTree*``, ``RandomForest*``, ``ExtraTrees*``, ``GradientBoosting*`` or
        ``HistGradientBoosting*`` classifier/regressor, an XGBoost ``XGBClassifier``/``XGBRegressor``/``Booster``
        or a LightGBM ``LGBMClassifier``/``LGBMRegressor``/``Booster`` (numerical splits).
    {use_rep}
    {layer}
    {groupby}
    {target}
    feature_perturbation
        ``"tree_path_dependent"`` (the covers of the training data stand for the missing features; no background)
        or ``"interventional"`` (missing features take the values of background cells).
    {background}
    {n_background}
    interactions
        Also compute SHAP interaction values toward each cell's own target (path-dependent mode); they need
        cells × features² memory, so explain an embedding (``use_rep``) rather than thousands of genes.
    {output_names}
    keep_all
        With ``target="all"`` or a list: also store the values toward every explained output (see Returns).
    batch_size
        Cells per chunk; ``None`` sizes chunks to about 256 MiB.
    device
        ``"auto"`` (GPU when CuPy sees one, else CPU; logged), ``"cpu"`` or ``"cuda"`` (an error without a GPU);
        anything else is an error before anything runs.
    {random_state}
    {key_added}
    {copy}
    {progress}

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes (``key`` = ``key_added`` or ``"tree_shap"``; storage
    layout 2, see :doc:`/storage`), values toward each cell's own target (its ``groupby`` label when the labels
    are outputs, else the prediction; a single-output model's only output):

    - with ``use_rep``: ``obsm[key]`` cells × dims (float32), ``obsm[key + "_summary"]`` (the per-cell summary
      below), ``uns[key]["feature_names"]`` (``PC1`` … for ``X_pca``, ``{{use_rep}}_1`` … for other
      embeddings), ``uns[key]["group_tables"]["mean"]`` and ``["mean_abs"]`` (dims × groups, signed and absolute
      mean of each group's cells, columns in the order of ``uns[key]["groups"]``);
    - on genes: ``layers[key]`` cells × genes, ``varm[key]`` and ``varm[key + "_mean_abs"]`` genes × groups, and
      ``obsm[key]``, a per-cell DataFrame (``output`` f(x), ``expected_value``, ``sum_attributions``,
      ``abs_error``);
    - ``uns[key]``: ``params``, ``layout``, ``output_names``, ``groups``, ``expected_value`` (per output),
      ``additivity`` (``max_abs_error``, ``median_abs_error`` of Σφ + E − f(x)) and ``names``/``scores``
      rankings of the signed group means, readable by ``sc.get.rank_genes_groups_df(adata, group, key=key)``;
    - ``interactions=True``: ``uns[key]["interactions"]`` (cells × features × features, float32),
      ``uns[key]["interactions_mean_abs"]`` (features × features) over ``uns[key]["interaction_features"]``;
    - ``keep_all=True``: on genes ``layers[key + "_out{{j}}"]`` per explained output ``j`` of
      ``uns[key]["output_names"]``; with ``use_rep`` ``uns[key]["values"]`` (cells × dims × explained outputs,
      float32) and ``uns[key]["values_outputs"]`` (their positions in ``output_names``).

    Examples
    --------
    >>> import scexplain as sx
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> adata = sx.datasets.pbmc68k_counts()
    >>> rf = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0)
    >>> rf = rf.fit(adata.obsm["X_pca"], adata.obs["bulk_labels"])
    >>> sx.tl.tree_shap_gpu(adata, rf, use_rep="X_pca", groupby="bulk_labels", progress=False)
    >>> adata.obsm["tree_shap"].shape
    (700, 50)
    >>> adata.uns["tree_shap"]["feature_names"][:2].tolist()
    ['PC1', 'PC2']
    """
    from ..models._trees import tree_paths

    # 1. validate everything before computing
    _inputs.check_adata(adata)
    if feature_perturbation not in _PERTURBATIONS:
        raise ValueError(f"`feature_perturbation` must be one of {_PERTURBATIONS}, got {feature_perturbation!r}.")
    interventional = feature_perturbation == "interventional"
    if interactions and interventional:
        raise ValueError("Interaction values are computed in the 'tree_path_dependent' mode only.")
    if background is not None and not interventional:
        raise ValueError("`background` is used with feature_perturbation='interventional' only.")
    if batch_size is not None and (not isinstance(batch_size, int | np.integer) or batch_size < 1):
        raise ValueError(f"`batch_size` must be a positive integer or None, got {batch_size!r}.")
    key = Key.default(METHOD, key_added)
    _, device_used = _engine(device)
    paths = tree_paths(model).two_sided()
    from ..engines.treeshap_cpu import check_depth

    check_depth(paths)
    X, feature_names = _feature_matrix(adata, use_rep, layer)
    cols = _model_columns(paths, feature_names, use_rep)
    if not is_dask(X):  # a dask input is checked block by block, in the one pass over it
        _check_no_inf(X, f"adata.obsm[{use_rep!r}]" if use_rep is not None else "input matrix")
    groups = _inputs.get_groups(adata, groupby)
    out_names = _inputs.resolve_output_names(
        output_names if output_names is not None else paths.output_names, paths.n_outputs, groups
    )
    targets = _inputs.resolve_targets(target, output_names=out_names, groups=groups, n_obs=adata.n_obs)
    n_obs, n_feat = adata.n_obs, paths.n_features
    if interactions and n_obs * n_feat * n_feat > _MAX_INTERACTION_ELEMENTS:
        raise ValueError(
            f"Interaction values for {n_obs} cells × {n_feat}² features would not fit in memory; explain an "
            "embedding (`use_rep=`), fewer features or fewer cells."
        )
    bg = bg_idx = None
    if interventional:
        bg, bg_idx = _background(
            X, cols, paths, background=background, n_background=n_background, groups=groups,
            random_state=random_state, use_rep=use_rep, layer=layer,
        )  # fmt: skip

    # 2. the block function, over blocks of cells
    label_targets = None
    if not targets.per_cell_mode and groups is not None:
        try:
            label_targets = _inputs.resolve_targets("label", output_names=out_names, groups=groups,
                                                    n_obs=n_obs).per_cell
        except ValueError:
            label_targets = None
    n_listed = 0 if targets.per_cell_mode else len(targets.classes)
    chunk = batch_size or max(256, _CHUNK_ELEMENTS // (n_feat * (n_listed + 1)))
    blocks = TreeBlocks(
        paths=paths, engine=device_used, cols=cols, n_cols=len(feature_names), background=bg,
        targets=own_targets(targets, label_targets), keep_all=keep_all and n_listed > 0, interactions=interactions,
        codes=None if groups is None else np.asarray(groups.codes), n_groups=0 if groups is None else
        len(groups.categories), check_rows=is_dask(X),
    )  # fmt: skip
    reduced = map_reduce(X, blocks, block_rows=int(chunk), desc=METHOD, progress=progress)

    # 3. assemble, then write once
    return _store.write(
        adata,
        _result(
            adata, key, paths, reduced, blocks.expected, targets, out_names, groups, feature_names,
            params={
                "groupby": groupby,
                "use_rep": use_rep,
                "layer": layer,
                "target": target if isinstance(target, str) else [str(t) for t in target],
                "feature_perturbation": feature_perturbation,
                "n_background": None if bg is None else int(bg.shape[0]),
                "background_obs_indices": bg_idx,
                "interactions": bool(interactions),
                "keep_all": bool(keep_all),
                "device": device_used,
                "random_state": random_state,
                **({"single_output": True} if targets.mode == "single" else {}),
            },
        ),
        copy=copy,
    )


class TreeBlocks:
    """Block function of TreeSHAP: predictions, own targets and exact SHAP values of a block of cells.

    Layers: ``"own"`` (cells × matrix columns) and, with ``keep_all``, ``"out{j}"`` per listed output ``j``. Sums
    (with ``groupby``): ``group_sum``, ``group_abs``, ``group_count``. Per cell: ``summary`` (f(x), expected
    value, Σφ and |error| of the own target), ``abs`` (max |error| over the explained outputs), ``interactions``.
    """

    def __init__(self, *, paths, engine: str, cols, n_cols: int, background, targets: OwnTargets, keep_all: bool,
                 interactions: bool, codes, n_groups: int, check_rows: bool):
        self.paths, self.engine_name = paths, engine
        self.cols, self.n_cols = cols, n_cols
        self.background = background
        self.targets = targets
        self.keep_all, self.interactions = keep_all, interactions
        self.codes, self.n_groups = codes, n_groups
        self.check_rows = check_rows
        #: expected value per output (mean over the background, or over the trees' covers)
        self.expected = np.asarray(_call(_engine_module(engine), "expected_value", paths, background),
                                   dtype=np.float64)
        #: blocks this process explained; tests count them
        self.calls = 0

    def __call__(self, x_block, rows: np.ndarray) -> BlockOutput:
        engine = _engine_module(self.engine_name)
        dense = _inputs.dense_rows(x_block, None, np.float64)
        if self.check_rows:
            _check_no_inf(dense, "input matrix")
        x = self.paths.prepare_input(dense if self.cols is None else dense[:, self.cols])
        fx = np.asarray(_call(engine, "predict", self.paths, x))
        classes, own_col = self.targets.resolve(rows, fx.argmax(axis=1))
        phi = _call(engine, "shap_values", self.paths, x, classes, background=self.background)  # n × C × F
        self.calls += 1
        i = np.arange(len(rows))
        own = _inputs.scatter_columns(phi[i, own_col], self.cols, self.n_cols)
        errors = phi.sum(-1) + self.expected[classes] - np.take_along_axis(fx, classes, axis=1)
        layers = {"own": own.astype(np.float32)}
        if self.keep_all:
            layers.update({f"out{c}": _inputs.scatter_columns(phi[:, j], self.cols, self.n_cols).astype(np.float32)
                           for j, c in enumerate(self.targets.listed)})
        own_class = classes[i, own_col]
        cells = {
            "summary": np.stack([fx[i, own_class], self.expected[own_class], phi[i, own_col].sum(-1),
                                 np.abs(errors[i, own_col])], axis=1),
            "abs": np.abs(errors).max(axis=1),
        }
        if self.interactions:
            cells["interactions"] = _call(engine, "interaction_values", self.paths, x, own_class[:, None])[:, 0]
        sums: dict[str, np.ndarray] = {}
        if self.codes is not None:
            onehot = np.zeros((self.n_groups, len(rows)))
            onehot[self.codes[rows], i] = 1.0
            sums = {"group_sum": onehot @ own, "group_abs": onehot @ np.abs(own), "group_count": onehot.sum(axis=1)}
        return BlockOutput(layers=layers, sums=sums, cells=cells)


def _result(adata, key, paths, reduced, expected, targets, out_names, groups, feature_names, *,
            params) -> _store.Result:
    """Build the :class:`~scexplain._store.Result` from the combined blocks."""
    values = reduced.layers["own"]
    cells = reduced.cells
    uns: dict[str, Any] = {
        Key.uns.output_names: out_names,
        Key.uns.expected_value: expected,
        Key.uns.additivity: {
            "max_abs_error": float(np.max(cells["abs"])),
            "median_abs_error": float(np.median(np.abs(cells["summary"][:, 3]))),
        },
    }
    if "interactions" in cells:
        inter = cells["interactions"].astype(np.float32)
        names = feature_names if paths.feature_names is None else [str(n) for n in paths.feature_names]
        uns["interactions"] = inter
        uns["interactions_mean_abs"] = np.abs(inter).mean(axis=0)
        uns["interaction_features"] = list(names)[: inter.shape[1]]
    genes = params["use_rep"] is None
    kept = {int(k[3:]): v for k, v in reduced.layers.items() if k.startswith("out")}
    output_layers: dict[int, np.ndarray] = {}
    if kept:
        if genes:
            output_layers = kept
        else:
            uns["values"] = np.stack([np.asarray(kept[c]) for c in sorted(kept)], axis=2)
            uns["values_outputs"] = np.asarray(sorted(kept), dtype=np.int64)
    tables, group_names = _group_tables(reduced.sums, groups, {Key.table.mean: "group_sum",
                                                               Key.table.mean_abs: "group_abs"})
    summary = pd.DataFrame(cells["summary"], index=adata.obs_names,
                           columns=["output", "expected_value", "sum_attributions", "abs_error"])
    logger.info("%s: max additivity error %.3g", METHOD, uns[Key.uns.additivity]["max_abs_error"])
    return _store.Result(
        method=METHOD,
        key=key,
        params={**params, "model_class": paths.model_class, "output_kind": paths.output_kind,
                "versions": _store.versions()},
        layer=values if genes else None,
        obsm=summary if genes else values,
        obsm_extra={} if genes else {Key.cell_summary(key): summary},
        features=None if genes else list(feature_names),
        groups=group_names,
        group_tables=tables,
        ranking=None if not tables else (tables[Key.table.mean], group_names),
        output_layers=output_layers,
        uns=uns,
    )
