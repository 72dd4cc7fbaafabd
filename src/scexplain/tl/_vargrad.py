"""``tl.vargrad``: variance of input gradients under Gaussian input noise (Adebayo et al. 2018)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from anndata import AnnData

from .._docs import doc_params
from ._driver import EngineContext, EngineOutput, explain_cells

__all__ = ["vargrad"]

#: docstring parts shared by the noise-based methods (vargrad, smoothgrad)
NOISE_DOCS = {
    "n_samples": """n_samples
    Noisy copies of each cell; all ``n_samples × cells × targets`` gradients of a chunk come from one forward and
    one batched backward. Every sample is noisy (no noise-free sample is mixed in).""",
    "noise_level": """noise_level
    Noise σ relative to each cell's input range: σ = ``noise_level · (max − min)`` over the cell's genes. Default
    ``0.1`` when ``stdev`` is not given; pass one of the two.""",
    "stdev": """stdev
    Absolute noise σ, the same for every cell (instead of ``noise_level``).""",
    "noise_notes": """Noise ε ~ N(0, σ²I) is added to the model's input (for scvi-tools models, the counts, with the covariates
of each cell kept fixed); noisy counts may be negative or non-integer, which is fine for a gradient. The draws of
a cell depend only on ``random_state`` and the cell's position, not on ``batch_size``, device or dtype. The model
is explained in eval mode (rows independent) and restored afterwards.""",
    "model": """model
    A ``torch.nn.Module`` from genes to outputs (logits per class, or one value), or an scvi-tools
    ``SCANVI``/``SCVI`` model.""",
    "explain": """explain
    scvi-tools models only: ``"classifier"`` (scANVI's cell-type logits, the default for SCANVI) or ``"latent"``
    (the posterior mean of each latent dimension).""",
    "keep_all": """keep_all
    With ``target="all"`` or a list, also store ``layers[f"{key}_out{j}"]`` for every explained output ``j``.""",
}


def noise_engine(attribute: str, n_samples: int, noise_level, stdev, **options: Any) -> Callable:
    """Engine factory of a noise method: ``engines.gradients.<attribute>`` on per-cell seeded noise."""

    def factory(ctx: EngineContext):
        from ..engines import gradients

        sampler = gradients.NoiseSampler(n_samples, noise_level=noise_level, stdev=stdev,
                                         random_state=ctx.random_state)
        method = getattr(gradients, attribute)

        def engine(x, cov, classes, rows, own_col, codes) -> EngineOutput:
            noise = sampler(x, rows)  # drawn per cell from its global index
            return EngineOutput(attributions=method(ctx.adapter.forward, x, classes, noise, cov, **options))

        return engine

    return factory


def noise_params(n_samples: int, noise_level, stdev) -> dict[str, Any]:
    """The noise entries of ``uns[key]["params"]``."""
    return {"n_samples": int(n_samples), "noise_level": noise_level, "stdev": stdev,
            "noise_scale": "absolute" if stdev is not None else "relative to each cell's input range"}


@doc_params(**NOISE_DOCS)
def vargrad(
    adata: AnnData,
    model,
    *,
    groupby: str | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    target: Literal["label", "predicted", "all"] | Sequence[str] = "label",
    n_samples: int = 20,
    noise_level: float | None = None,
    stdev: float | None = None,
    ddof: int = 0,
    output_names: Sequence[str] | None = None,
    explain: Literal["classifier", "latent"] | None = None,
    batch_size: int = 128,
    keep_all: bool = False,
    device: str = "auto",
    dtype: Literal["float32", "float64"] = "float32",
    random_state: int | None = 0,
    key_added: str | None = None,
    copy: bool = False,
    progress: bool = True,
) -> AnnData | None:
    """VarGrad: the variance over Gaussian input noise of each gene's input gradient, stored in the AnnData.

    For each cell x and explained output f, with S noisy copies x + ε_s and gradients g_s = ∇f(x + ε_s)::

        VarGrad(x) = 1/(S − ddof) · Σ_s (g_s − ḡ)²,   ḡ = 1/S · Σ_s g_s

    With the default ``ddof=0`` this is the population variance E[g²] − E[g]², the estimator of captum's
    ``NoiseTunnel(nt_type="vargrad")``; ``ddof=1`` gives the unbiased one. It is computed from centred gradients.
    VarGrad is non-negative and unsigned: it says how strongly the gradient toward a gene varies near the cell
    (a linear model has VarGrad 0; for f = Σ a_g x_g² it is 4 a_g² σ² in expectation).

    {noise_notes}

    Parameters
    ----------
    {adata}
    {model}
    {groupby}
    {layer}
    {use_raw}
    {target}
    {n_samples}
    {noise_level}
    {stdev}
    ddof
        Delta degrees of freedom: ``0`` population variance (as captum), ``1`` unbiased.
    {output_names}
    {explain}
    {batch_size}
    {keep_all}
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
    >>> model = torch.nn.Sequential(torch.nn.Linear(40, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    >>> sx.tl.vargrad(adata, model, groupby="cell_type", layer="lognorm", n_samples=10, progress=False)
    >>> adata.layers["vargrad"].shape
    (200, 40)
    >>> bool((adata.layers["vargrad"] >= 0).all())
    True
    """
    from ..engines.gradients import check_noise

    if not isinstance(ddof, int) or isinstance(ddof, bool) or ddof < 0:
        raise ValueError(f"`ddof` must be a non-negative integer, got {ddof!r}.")
    noise_level, stdev = check_noise(n_samples, noise_level, stdev, min_samples=max(2, ddof + 1))
    estimator = "population variance E[g²] − E[g]²" if ddof == 0 else f"variance with ddof={ddof}"
    return explain_cells(
        adata,
        model,
        method="vargrad",
        engine_factory=noise_engine("vargrad", n_samples, noise_level, stdev, ddof=ddof),
        groupby=groupby,
        layer=layer,
        use_raw=use_raw,
        target=target,
        n_background=None,
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
        params={**noise_params(n_samples, noise_level, stdev), "ddof": ddof, "estimator": estimator},
    )
