"""``tl.deep_shap``: exact, batched DeepSHAP for torch and scvi-tools models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from anndata import AnnData

from .._docs import doc_params
from ._driver import EngineContext, EngineOutput, explain_cells

__all__ = ["deep_shap"]


def _deeplift_engine(pair_budget: int | None):
    def factory(ctx: EngineContext):
        from ..engines.deeplift import BackgroundCache, deeplift_shap

        kwargs = {} if pair_budget is None else {"pair_budget": pair_budget}
        cache = BackgroundCache()  # the background's first-layer products, shared by the chunks of cells

        def engine(x, cov, classes) -> EngineOutput:
            out = deeplift_shap(ctx.adapter.forward, x, ctx.background, classes, cov=cov, cache=cache, **kwargs)
            return EngineOutput(attributions=out.attributions, output=out.output, reference=out.reference)

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
        A ``torch.nn.Module`` from genes to outputs (logits per class, or one value), or an scvi-tools
        ``SCANVI``/``SCVI`` model.
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
        With ``target="all"`` or a list, also store ``layers[f"{{key}}_{{output}}"]`` for every explained output.
    {device}
    {dtype}
    {random_state}
    {key_added}
    {copy}
    {progress}

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes (``key`` = ``key_added`` or ``"deep_shap"``):

    - ``layers[key]``: cells × genes attributions toward each cell's own target (its label, else the prediction);
    - ``varm[key]``: genes × groups mean attribution of each group's cells toward their group (with ``groupby``);
    - ``obsm[key]``: per-cell DataFrame: ``output`` f(x), ``expected_value``, ``sum_attributions``,
      ``relative_error`` for the own target;
    - ``uns[key]``: ``params``, ``output_names``, ``expected_value`` (per output; per cell with covariates, see
      ``obsm``), ``additivity`` (max and median relative error ‖Σφ − Δf‖/‖Δf‖ over cells), ``group_mean_abs``,
      and ``names``/``scores`` rankings readable by ``sc.get.rank_genes_groups_df(adata, group, key=key)``.

    Examples
    --------
    >>> import scexplain as sx
    >>> import torch
    >>> adata = sx.datasets.toy(n_cells=200, n_genes=40, n_groups=3)
    >>> model = torch.nn.Sequential(torch.nn.Linear(40, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> sx.tl.deep_shap(adata, model, groupby="cell_type", layer="lognorm", progress=False)
    >>> adata.layers["deep_shap"].shape
    (200, 40)
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
    )
