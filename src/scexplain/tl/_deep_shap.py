"""``tl.deep_shap``: exact, batched DeepSHAP for torch, scvi-tools, CellTypist and scikit-learn models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from anndata import AnnData

from .._docs import doc_params
from ._bootstrap import BootstrapSpec
from ._driver import EngineContext, EngineOutput, explain_cells

__all__ = ["deep_shap"]


def _deeplift_engine(pair_budget: int | None):
    def factory(ctx: EngineContext):
        from ..engines.deeplift import BackgroundCache, deeplift_shap

        kwargs = {} if pair_budget is None else {"pair_budget": pair_budget}
        cache = BackgroundCache()  # the background's first-layer products, shared by the chunks of cells

        def engine(x, cov, classes, rows, own_col, codes) -> EngineOutput:
            sums = {"groups": codes, "n_groups": ctx.n_groups, "own": own_col} if ctx.n_groups and codes is not None \
                else {}
            out = deeplift_shap(ctx.adapter.forward, x, ctx.background, classes, cov=cov, cache=cache,
                                split=ctx.split, **sums, **kwargs)
            return EngineOutput(attributions=out.attributions, output=out.output, reference=out.reference,
                                presence=out.presence, background_sums=out.background_sums)

        return engine

    return factory


@doc_params()
def deep_shap(
    adata: AnnData,
    model,
    *,
    groupby: str | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    target: Literal["label", "predicted", "all"] | Sequence[str] = "label",
    background=None,
    n_background: int = 100,
    output_names: Sequence[str] | None = None,
    explain: Literal["classifier", "latent"] | None = None,
    batch_size: int = 128,
    pair_budget: int | None = None,
    keep_all: bool = False,
    split: bool = True,
    n_bootstrap: int | None = None,
    ci_level: float = 0.95,
    n_top: int = 20,
    device: str = "auto",
    dtype: Literal["float32", "float64"] = "float32",
    random_state: int | None = 0,
    key_added: str | None = None,
    copy: bool = False,
    progress: bool = True,
) -> AnnData | None:
    """DeepSHAP attributions of each gene to a model's outputs, stored in the AnnData.

    DeepLIFT's rescale multipliers are computed for every (cell, background cell) pair and averaged over the
    background, so that for each cell and explained output the attributions sum to f(x) − mean_b f(b)
    ("summation to delta"). Every nonlinearity gets its rule whether it is an ``nn.Module`` or a functional call
    (``torch.log1p``, ``F.relu``, ``x.exp()``, softmax as shift/exp/sum/divide); an op without a rule (e.g.
    GroupNorm) is named in a warning and its effect shows in the additivity summary. The model is explained in
    eval mode and restored afterwards.

    Parameters
    ----------
    {adata}
    model
        One of (see :func:`scexplain.models.adapt`):

        - a ``torch.nn.Module`` from genes to outputs (logits per class, or one value);
        - an scvi-tools ``SCANVI``/``SCVI`` model (raw counts; see ``explain``);
        - a CellTypist ``celltypist.models.Model``: its scaling, clip at 10 and decision scores per cell type,
          explained exactly. Pass log1p-normalised expression to 10,000 counts per cell, as CellTypist expects
          (``use_raw=True`` for scanpy's ``pbmc68k_reduced``, ``layer="lognorm"`` for
          ``sx.datasets.pbmc68k_counts()``); genes are matched to ``model.features`` by name;
        - a fitted scikit-learn linear classifier (``LogisticRegression``, ``SGDClassifier``, ``RidgeClassifier``,
          ``LinearSVC``, ...) or ``MLPClassifier``, alone or after ``StandardScaler`` steps in a ``Pipeline``:
          explained through its decision values (linear) or logits (MLP), genes matched by name when it was
          fitted on a DataFrame (``feature_names_in_``). A binary classifier's single decision value ``d`` becomes
          two outputs ``[-d, d]`` (one per class, as CellTypist and ``tl.tree_shap_gpu`` do), so each cell is
          explained toward its own class. Tree ensembles go to :func:`scexplain.tl.tree_shap_gpu`.
    {groupby}
    {layer}
    {use_raw}
    {target}
    {background}
    {n_background}
    {output_names}
    explain
        scvi-tools models only: ``"classifier"`` (scANVI's cell-type logits, the default for SCANVI) or
        ``"latent"`` (the posterior mean of each latent dimension).
    {batch_size}
    pair_budget
        Maximum number of (cell, background cell) pairs evaluated at once; ``None`` picks a default.
    keep_all
        With ``target="all"`` or a list, also store ``layers[f"{{key}}_out{{j}}"]`` for every explained output ``j``.
    split
        Also store the presence/absence split (``layers[key + "_presence"]``, ``varm[key + "_presence"]``): each
        (cell, background cell) pair's term ``(x_g − b_g)·M`` goes to *presence* when the cell expresses gene
        ``g`` above the background cell (``x_g > b_g``) and to *absence* when below; ``absence = φ − presence``
        exactly. A B cell's high score for a myeloid gene it lacks (CST3) is absence: the gene counts *because*
        the cell does not express it.
    n_bootstrap
        Replicates of a bootstrap of the group summaries over background cells and the group's cells, computed
        in the same pass from partial sums (no rerun): stores a percentile interval (``varm[key + "_ci_low"]``,
        ``varm[key + "_ci_high"]``) and ``varm[key + "_rank_stability"]``, the fraction of replicates in which a
        gene is among the group's top ``n_top``. Needs ``groupby``. ``None``/0: no bootstrap.
    ci_level
        Coverage of the percentile interval.
    n_top
        Size of the top list of ``rank_stability``.
    {device}
    {dtype}
    {random_state}
    {key_added}
    {copy}
    {progress}

    Returns
    -------
    {returns}

    Examples
    --------
    >>> import scexplain as sx
    >>> import torch
    >>> adata = sx.datasets.toy(n_cells=200, n_genes=40, n_groups=3)
    >>> model = torch.nn.Sequential(torch.nn.Linear(40, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> sx.tl.deep_shap(adata, model, groupby="cell_type", layer="lognorm", progress=False)
    >>> adata.layers["deep_shap"].shape
    (200, 40)

    A scikit-learn pipeline on the same genes:

    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> clf = make_pipeline(StandardScaler(), LogisticRegression())
    >>> clf = clf.fit(adata.to_df(layer="lognorm"), adata.obs["cell_type"])
    >>> sx.tl.deep_shap(adata, clf, groupby="cell_type", layer="lognorm", key_added="logreg", progress=False)
    >>> adata.uns["logreg"]["additivity"]["max_relative_error"] < 1e-4
    True
    """
    return explain_cells(
        adata,
        model,
        method="deep_shap",
        engine_factory=_deeplift_engine(pair_budget),
        groupby=groupby,
        layer=layer,
        use_raw=use_raw,
        target=target,
        background=background,
        n_background=n_background,
        output_names=output_names,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        random_state=random_state,
        key_added=key_added,
        copy=copy,
        progress=progress,
        keep_all=keep_all,
        explain=explain,
        presence_reference="pairs",
        split=split,
        bootstrap=None if not n_bootstrap else BootstrapSpec(n_bootstrap, _seed(random_state), ci_level, n_top),
    )


def _seed(random_state: int | None) -> int:
    """The bootstrap's seed: ``random_state`` (a fresh one for ``None``)."""
    import numpy as np

    return int(np.random.SeedSequence().entropy % 2**63) if random_state is None else int(random_state)
