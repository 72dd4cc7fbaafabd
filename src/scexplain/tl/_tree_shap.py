"""``tl.tree_shap_gpu``: exact TreeSHAP for tree ensembles on an embedding or on genes (CuPy GPU or Numba CPU)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _inputs, _store
from .._docs import doc_params
from .._keys import Key
from ._blocks import is_dask, map_reduce
from ._bootstrap import BootstrapSpec, summarise
from ._driver import _group_tables, own_targets
from ._tree_blocks import GenesPart, TreeBlocks, check_no_inf

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


def _gene_background(side, X_genes, background, bg_idx, layer):
    """The background cells' gene rows (``to_genes``): rows of ``adata`` or of a background AnnData."""
    if bg_idx is not None:
        return _inputs.dense_rows(X_genes, bg_idx, np.float64)
    if isinstance(background, AnnData):
        return _inputs.dense_rows(side.matrix_of(background), None, np.float64)
    raise ValueError(
        "`to_genes=True` needs the background cells' genes: pass `background=` as cells of `adata` (a boolean mask "
        "or integer indices) or as an AnnData holding both the embedding and the genes, not as an array."
    )


def _bootstrap_spec(n_bootstrap, ci_level, n_top, *, interventional: bool, groupby, random_state):
    if n_bootstrap is None or (isinstance(n_bootstrap, int | np.integer) and not isinstance(n_bootstrap, bool)
                               and n_bootstrap == 0):
        return None
    if not interventional:
        raise ValueError(
            "`n_bootstrap` resamples the background cells, which path-dependent TreeSHAP has none of: use "
            "feature_perturbation='interventional' (or leave n_bootstrap=None)."
        )
    if groupby is None:
        raise ValueError("`n_bootstrap` bootstraps the per-group summaries: pass `groupby=`.")
    seed = int(np.random.SeedSequence(random_state).entropy) if random_state is not None else \
        int(np.random.SeedSequence().entropy)
    return BootstrapSpec(n_bootstrap, seed, float(ci_level), n_top)


@doc_params(
    use_rep="""use_rep
    Key of ``adata.obsm`` with the embedding the model was trained on (e.g. ``"X_pca"``, ``"X_scVI"``);
    ``None`` explains genes (``adata.X`` or ``layer``).""",
    layer="""layer
    Genes explained (``use_rep=None``), or with ``to_genes=True`` the gene matrix the embedding was computed
    from (PCA: default the layer in ``uns["pca"]["params"]``, else ``adata.X``; scVI: the model's counts
    layer); ``None``: ``adata.X``.""",
    background="""background
    Reference cells, as an AnnData (with the same embedding or genes, and with ``to_genes`` both), a cells ×
    features array (not with ``to_genes``), or a boolean mask or integer indices over ``adata``'s cells; ``None``
    draws ``n_background`` cells of ``adata`` stratified by ``groupby``. Interventional TreeSHAP explains each
    cell against them; path-dependent TreeSHAP uses them only as the reference of the presence split and of
    ``to_genes`` (its values rest on the trees' covers).""",
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
    to_genes: bool = False,
    encoder=None,
    n_bootstrap: int | None = None,
    ci_level: float = 0.95,
    n_top: int = 20,
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

    Every result is split into *presence* (the part from features above the reference) and *absence* (the rest;
    ``presence + absence`` is the attribution exactly). Interventional: each (cell, background cell) pair's term of
    feature j goes to presence when x_j > b_j (trees read the sign off the split intervals; a missing value that
    does not follow a path counts as below its interval). Path-dependent: by the sign of x_j − mean(background).

    With ``to_genes=True`` (and ``use_rep``), the embedding's attributions are carried back to genes through the
    embedding's map, DeepSHAP-style (see :mod:`scexplain.tl._tree_genes`): ``X_pca`` through its loadings
    (``varm["PCs"]``; exact, the map is linear), a scVI/scANVI latent space through the encoder's DeepLIFT
    multipliers (``encoder=``). Per cell the gene attributions sum to the dimensions' ones, f(z) − E[f]. This
    explains the *embedding* (which genes drive the tree through the embedding), not a model of the genes.

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
        ``"tree_path_dependent"`` (the covers of the training data stand for the missing features) or
        ``"interventional"`` (missing features take the values of background cells).
    {background}
    {n_background}
    to_genes
        Also attribute to genes, through the map of ``use_rep`` (``X_pca`` or ``encoder``); see above and Returns.
    encoder
        With ``to_genes``: the scvi-tools ``SCVI``/``SCANVI`` model whose latent means are ``adata.obsm[use_rep]``
        (e.g. ``model.get_latent_representation()`` stored as ``"X_scVI"``).
    n_bootstrap
        Interventional mode with ``groupby``: bootstrap replicates of the group summaries, from partial sums kept
        in the one pass (cells resampled by a Poisson bootstrap seeded by cell index, background cells with
        replacement; see :mod:`scexplain.tl._bootstrap`); ``None`` or ``0``: none.
    ci_level
        Level of the percentile intervals ``ci_low``/``ci_high`` (bootstrap).
    n_top
        ``rank_stability`` is the fraction of replicates in which a feature is among its group's top ``n_top``.
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

    - with ``use_rep``: ``obsm[key]`` cells × dims (float32), ``obsm[key + "_presence"]`` its presence part,
      ``obsm[key + "_summary"]`` (the per-cell summary below), ``uns[key]["feature_names"]`` (``PC1`` … for
      ``X_pca``, ``{{use_rep}}_1`` … for other embeddings), ``uns[key]["group_tables"]`` ``"mean"``,
      ``"mean_abs"``, ``"presence"`` (dims × groups: signed, absolute and presence part of the mean of each
      group's cells, columns in the order of ``uns[key]["groups"]``);
    - on genes: ``layers[key]`` cells × genes, ``layers[key + "_presence"]``, ``varm[key]``,
      ``varm[key + "_mean_abs"]`` and ``varm[key + "_presence"]`` genes × groups, and ``obsm[key]``, a per-cell
      DataFrame (``output`` f(x), ``expected_value``, ``sum_attributions``, ``abs_error``);
    - ``to_genes=True``: both — the gene-level result in ``layers``/``varm`` as on genes (rankings on genes), the
      embedding's in ``obsm[key]``, ``obsm[key + "_presence"]``, ``obsm[key + "_summary"]``,
      ``uns[key]["feature_names"]`` and ``uns[key]["group_tables"]``;
    - ``n_bootstrap``: the tables ``ci_low``, ``ci_high``, ``rank_stability`` beside the others (``varm[key +
      "_ci_low"]`` … on genes, ``uns[key]["group_tables"]`` on dims) and ``uns[key]["params"]["bootstrap"]``;
    - ``uns[key]``: ``params``, ``layout``, ``output_names``, ``groups``, ``expected_value`` (per output),
      ``additivity`` (``max_abs_error``, ``median_abs_error`` of Σφ + E − f(x); with ``to_genes`` also
      ``genes_max_relative_error``, ``genes_median_relative_error`` of Σ_genes against Σ_dims, and
      ``genes_fallback_pairs``) and ``names``/``scores`` rankings of the signed group means, readable by
      ``sc.get.rank_genes_groups_df(adata, group, key=key)``;
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

    Back to genes through a PCA computed on the log-normalised genes:

    >>> import scanpy as sc
    >>> sc.pp.pca(adata, n_comps=20, layer="lognorm")
    >>> rf = rf.fit(adata.obsm["X_pca"], adata.obs["bulk_labels"])
    >>> sx.tl.tree_shap_gpu(adata, rf, use_rep="X_pca", to_genes=True, groupby="bulk_labels",
    ...                     key_added="genes", progress=False)
    >>> adata.layers["genes"].shape, adata.obsm["genes"].shape
    ((700, 765), (700, 20))
    >>> bool(adata.uns["genes"]["additivity"]["genes_max_relative_error"] < 1e-5)
    True
    """
    from ..engines.treeshap_cpu import check_depth
    from ..models._trees import tree_paths

    # 1. validate everything before computing
    _inputs.check_adata(adata)
    if feature_perturbation not in _PERTURBATIONS:
        raise ValueError(f"`feature_perturbation` must be one of {_PERTURBATIONS}, got {feature_perturbation!r}.")
    interventional = feature_perturbation == "interventional"
    if interactions and interventional:
        raise ValueError("Interaction values are computed in the 'tree_path_dependent' mode only.")
    if batch_size is not None and (not isinstance(batch_size, int | np.integer) or batch_size < 1):
        raise ValueError(f"`batch_size` must be a positive integer or None, got {batch_size!r}.")
    if to_genes and use_rep is None:
        raise ValueError("`to_genes=True` carries an embedding's attributions back to genes: pass `use_rep=` (e.g. "
                         "'X_pca'); a model on genes is explained on genes already.")
    if encoder is not None and not to_genes:
        raise ValueError("`encoder=` is the map of the embedding for `to_genes=True`; pass to_genes=True.")
    _inputs.check_seed(random_state)
    groups = _inputs.get_groups(adata, groupby)
    spec = _bootstrap_spec(n_bootstrap, ci_level, n_top, interventional=interventional, groupby=groupby,
                           random_state=random_state)
    key = Key.default(METHOD, key_added)
    _, device_used = _engine(device)
    paths = tree_paths(model).two_sided()
    check_depth(paths)
    X, feature_names = _feature_matrix(adata, use_rep, None if to_genes else layer)
    cols = _model_columns(paths, feature_names, use_rep)
    if not is_dask(X):  # a dask input is checked block by block, in the one pass over it
        check_no_inf(X, f"adata.obsm[{use_rep!r}]" if use_rep is not None else "input matrix")
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
    bg, bg_idx = _background(
        X, cols, paths, background=background, n_background=n_background, groups=groups,
        random_state=random_state, use_rep=use_rep, layer=None if to_genes else layer,
    )  # fmt: skip
    genes, gene_params = None, None
    if to_genes:
        genes, gene_params = _genes_part(adata, X, cols, bg, bg_idx, background=background, use_rep=use_rep,
                                         encoder=encoder, layer=layer, n_feat=n_feat)

    # 2. the block function, over blocks of cells
    label_targets = None
    if not targets.per_cell_mode and groups is not None:
        try:
            label_targets = _inputs.resolve_targets("label", output_names=out_names, groups=groups,
                                                    n_obs=n_obs).per_cell
        except ValueError:
            label_targets = None
    n_listed = 0 if targets.per_cell_mode else len(targets.classes)
    if genes is not None:
        chunk = batch_size or max(64, _CHUNK_ELEMENTS // (2 * bg.shape[0] * (n_feat + 1)))
    else:
        chunk = batch_size or max(256, _CHUNK_ELEMENTS // (n_feat * (n_listed + 2)))
    blocks = TreeBlocks(
        paths=paths, engine=device_used, cols=cols, n_cols=len(feature_names),
        background=bg if interventional else None, reference=None if interventional else bg,
        targets=own_targets(targets, label_targets), keep_all=keep_all and n_listed > 0, interactions=interactions,
        codes=None if groups is None else np.asarray(groups.codes), n_groups=0 if groups is None else
        len(groups.categories), check_rows=is_dask(genes.X if genes is not None else X), bootstrap=spec,
        genes=genes.part if genes is not None else None,
    )  # fmt: skip
    reduced = map_reduce(genes.X if genes is not None else X, blocks, block_rows=int(chunk), desc=METHOD,
                         progress=progress)

    # 3. assemble, then write once
    params = {
        "groupby": groupby,
        "use_rep": use_rep,
        "layer": layer,
        "target": target if isinstance(target, str) else [str(t) for t in target],
        "feature_perturbation": feature_perturbation,
        "n_background": int(bg.shape[0]),
        "background_obs_indices": bg_idx,
        "presence": "pairs: x_j > b_j" if interventional else "x_j > mean(background)",
        "interactions": bool(interactions),
        "keep_all": bool(keep_all),
        "device": device_used,
        "random_state": random_state,
        **({"single_output": True} if targets.mode == "single" else {}),
        **({"to_genes": gene_params} if gene_params is not None else {}),
        **({"bootstrap": spec.params()} if spec is not None else {}),
    }
    return _store.write(
        adata,
        _result(adata, key, paths, reduced, blocks.expected, targets, out_names, groups, feature_names, spec=spec,
                n_background=int(bg.shape[0]), to_genes=genes is not None, params=params),
        copy=copy,
    )


@dataclass
class _Genes:
    part: GenesPart
    X: Any


def _genes_part(adata, X, cols, bg, bg_idx, *, background, use_rep, encoder, layer, n_feat):
    """The gene side of ``to_genes``: the map, the gene matrix, the background's genes; checked on cells."""
    from ._tree_genes import check_reproduces, gene_map

    model_cols = np.arange(X.shape[1]) if cols is None else np.asarray(cols)
    side = gene_map(adata, use_rep=use_rep, encoder=encoder, layer=layer, cols=model_cols)
    emb = _inputs.dense_rows(X, None, np.float64)[:, model_cols]
    if not np.isfinite(emb).all():
        raise ValueError(f"`to_genes=True` needs a finite embedding; adata.obsm[{use_rep!r}] has NaN.")
    if not is_dask(side.X):
        _inputs.check_finite(side.X, side.where)
    bg_genes = _gene_background(side, side.X, background, bg_idx, layer)
    # the map must give the stored embedding (PCA: up to the centre μ·L, estimated on adata's own cells)
    probe = bg_idx if bg_idx is not None else np.arange(min(adata.n_obs, 1024))
    probe_genes = bg_genes if bg_idx is not None else _inputs.dense_rows(side.X, probe, np.float64)
    cov = side.cov
    offset = check_reproduces(side.gmap, probe_genes, None if cov is None else cov[probe], emb[probe], None,
                              use_rep=use_rep, where=side.where)
    if bg_idx is None:  # an external background AnnData: its embedding must come from the same map
        bg_cov = None
        if cov is not None:
            bg_cov = side.gmap.adapter.covariates(background, None)
            bg_cov = None if bg_cov is None else bg_cov.detach().cpu().double().numpy()
        check_reproduces(side.gmap, bg_genes, bg_cov, _feature_matrix(background, use_rep, None)[0][:, model_cols],
                         offset, use_rep=use_rep, where=f"the background's {side.where}")
    part = GenesPart(gmap=side.gmap, embedding=emb, cov=cov, background=bg_genes, offset=offset, pos=side.pos,
                     n_vars=adata.n_vars, use_rep=use_rep, where=side.where)
    return _Genes(part, side.X), side.params


def _tables(sums, groups, spec, n_background, prefix: str):
    """Group tables (``mean``, ``mean_abs``, ``presence`` and the bootstrap's) of the sums under ``prefix``."""
    names = {Key.table.mean: f"{prefix}group_sum", Key.table.mean_abs: f"{prefix}group_abs",
             Key.table.presence: f"{prefix}group_presence"}
    tables, group_names = _group_tables(sums, groups, names)
    if spec is not None and tables:
        tables.update(summarise(spec, sums[f"{prefix}boot_T"], sums[f"{prefix}boot_V"], sums[f"{prefix}boot_S"],
                                sums["group_count"], n_background))
    return tables, group_names


def _result(adata, key, paths, reduced, expected, targets, out_names, groups, feature_names, *, spec,
            n_background, to_genes, params) -> _store.Result:
    """Build the :class:`~scexplain._store.Result` from the combined blocks."""
    cells, sums = reduced.cells, reduced.sums
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
    tables, group_names = _tables(sums, groups, spec, n_background, "")
    summary = pd.DataFrame(cells["summary"], index=adata.obs_names,
                           columns=["output", "expected_value", "sum_attributions", "abs_error"])
    logger.info("%s: max additivity error %.3g", METHOD, uns[Key.uns.additivity]["max_abs_error"])
    obsm_extra: dict[str, Any] = {}
    if to_genes:
        dims_tables, _ = _tables(sums, groups, spec, n_background, "dims_")
        uns[Key.uns.feature_names] = list(feature_names)
        if dims_tables:
            uns[Key.uns.group_tables] = dims_tables
        rel = cells["genes_rel"]
        uns[Key.uns.additivity].update({"genes_max_relative_error": float(np.max(rel)),
                                        "genes_median_relative_error": float(np.median(rel)),
                                        "genes_fallback_pairs": int(sums.get("fallback_pairs", [0])[0])})
        logger.info("%s: genes sum to the dimensions within %.3g (relative)", METHOD, float(np.max(rel)))
        obsm_extra = {Key.cell_summary(key): summary,
                      Key.presence_layer(key): np.asarray(reduced.layers["dims_presence"], dtype=np.float32)}
        values, obsm = reduced.layers["own"], reduced.layers["dims"]
    else:
        values = reduced.layers["own"]
        obsm = summary if genes else values
        if not genes:
            obsm_extra = {Key.cell_summary(key): summary}
    on_genes = genes or to_genes
    return _store.Result(
        method=METHOD,
        key=key,
        params={**params, "model_class": paths.model_class, "output_kind": paths.output_kind,
                "versions": _store.versions()},
        layer=values if on_genes else None,
        presence=reduced.layers["presence"],
        obsm=obsm,
        obsm_extra=obsm_extra,
        features=None if on_genes else list(feature_names),
        groups=group_names,
        group_tables=tables,
        ranking=None if not tables else (tables[Key.table.mean], group_names),
        output_layers=output_layers,
        uns=uns,
    )
