"""``tl.smoothgrad``: input gradients averaged over Gaussian input noise (Smilkov et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from anndata import AnnData

from .._docs import doc_params
from ._driver import explain_cells
from ._vargrad import NOISE_DOCS, noise_engine, noise_params

__all__ = ["smoothgrad"]


@doc_params(**NOISE_DOCS)
def smoothgrad(
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
    square: bool = False,
    multiply_by_inputs: bool = False,
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
    """SmoothGrad: each gene's input gradient averaged over Gaussian input noise, stored in the AnnData.

    For each cell x and explained output f, with S noisy copies x + ε_s::

        SmoothGrad(x) = 1/S · Σ_s ∇f(x + ε_s)          (signed)
        square=True:    1/S · Σ_s ∇f(x + ε_s)²         (SmoothGrad², captum's "smoothgrad_sq")
        multiply_by_inputs=True: x ⊙ SmoothGrad(x)     (the noise-free input times the smoothed gradient)

    These equal captum's ``NoiseTunnel(Saliency(model, abs=False))`` with ``nt_type="smoothgrad"`` /
    ``"smoothgrad_sq"`` for the same noise draws. Note that captum's ``NoiseTunnel(InputXGradient)`` instead
    averages (x + ε_s) ⊙ ∇f(x + ε_s).

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
    square
        Average the squared gradients (unsigned).
    multiply_by_inputs
        Multiply the average by the cell's input (gradient × input).
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
    >>> sx.tl.smoothgrad(adata, model, groupby="cell_type", layer="lognorm", n_samples=10, progress=False)
    >>> adata.uns["smoothgrad"]["params"]["n_samples"]
    10
    """
    from ..engines.gradients import check_noise

    noise_level, stdev = check_noise(n_samples, noise_level, stdev)
    return explain_cells(
        adata,
        model,
        method="smoothgrad",
        engine_factory=noise_engine("smoothgrad", n_samples, noise_level, stdev, square=bool(square),
                                    multiply_by_inputs=bool(multiply_by_inputs)),
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
        params={**noise_params(n_samples, noise_level, stdev), "square": bool(square),
                "multiply_by_inputs": bool(multiply_by_inputs)},
    )
