"""``tl.integrated_gradients``: path-integrated input gradients from a baseline (Sundararajan et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from anndata import AnnData

from .._docs import doc_params
from ._driver import EngineContext, EngineOutput, explain_cells
from ._vargrad import NOISE_DOCS

__all__ = ["integrated_gradients"]

BASELINES = ("zeros", "background_mean", "background")


def _resolve_baseline(baseline, background) -> tuple[str, Any]:
    """``(mode, background)``: ``mode`` in :data:`BASELINES`; an array baseline becomes background rows."""
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise ValueError(f"Unknown `baseline={baseline!r}`; use one of {list(BASELINES)} or a genes-long array.")
        if baseline == "zeros" and background is not None:
            raise ValueError("`background` is only used with baseline='background' or 'background_mean'.")
        return baseline, background
    if background is not None:
        raise ValueError("Pass the baseline either as an array (`baseline=`) or as `background=`, not both.")
    try:
        rows = np.atleast_2d(np.asarray(baseline, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"`baseline` must be one of {list(BASELINES)} or a numeric array (genes, or baselines × genes); "
            f"got {type(baseline).__name__}."
        ) from err
    if rows.ndim != 2:
        raise ValueError(f"An array `baseline` must have 1 or 2 dimensions, got shape {rows.shape}.")
    return "array", rows


def _ig_engine(mode: str, n_steps: int, method: str):
    def factory(ctx: EngineContext):
        import torch

        from ..engines.gradients import integrated_gradients

        if mode == "zeros":
            baselines = torch.zeros((1, ctx.adapter.n_inputs), device=ctx.device, dtype=ctx.dtype)
        elif mode == "background_mean":  # the reference is the mean cell (expected value: f of it, see below)
            baselines = ctx.background.mean(dim=0, keepdim=True)
        else:
            baselines = ctx.background

        def engine(x, cov, classes, rows, own_col, codes) -> EngineOutput:
            attr, fx, ref = integrated_gradients(
                ctx.adapter.forward, x, classes, baselines, cov, n_steps=n_steps, method=method
            )
            return EngineOutput(attributions=attr, output=fx, reference=ref)

        return engine

    return factory


@doc_params(
    model=NOISE_DOCS["model"], explain=NOISE_DOCS["explain"], keep_all=NOISE_DOCS["keep_all"]
)
def integrated_gradients(
    adata: AnnData,
    model,
    *,
    groupby: str | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    target: Literal["label", "predicted", "all"] | Sequence[str] = "label",
    baseline: Literal["zeros", "background_mean", "background"] | np.ndarray = "zeros",
    background=None,
    n_background: int = 20,
    n_steps: int = 50,
    method: Literal[
        "gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right"
    ] = "gausslegendre",
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
    """Integrated gradients of each gene toward a model's outputs, stored in the AnnData.

    For each cell x, explained output f and baseline x′::

        IG_g(x) = (x_g − x′_g) · ∫₀¹ ∂f/∂x_g (x′ + α (x − x′)) dα

    with the integral on ``n_steps`` quadrature nodes (``method``, as in captum's ``IntegratedGradients``; the
    default Gauss–Legendre rule converges fastest). Completeness: Σ_g IG_g(x) → f(x) − f(x′) as ``n_steps`` grows;
    the remaining error is stored (``uns[key]["additivity"]``, per cell in ``obsm[key]``). With
    ``baseline="background"`` the attributions are averaged over the background cells as baselines (the
    expected-gradients estimate), and the reference is the mean of f over them. Gradients are with respect to the
    model's input (for scvi-tools models, the counts, with each cell's covariates fixed along its paths). The model
    is explained in eval mode and restored afterwards.

    Parameters
    ----------
    {adata}
    {model}
    {groupby}
    {layer}
    {use_raw}
    {target}
    baseline
        ``"zeros"`` (no expression), ``"background_mean"`` (the mean of the background cells), ``"background"``
        (every background cell, averaged), or an array: one baseline (genes) or several (baselines × genes),
        in the model's gene order.
    background
        Background cells for ``baseline="background"``/``"background_mean"``: an AnnData with the same genes, a
        cells × genes array, a boolean mask or integer indices over ``adata``'s cells; ``None`` draws
        ``n_background`` cells of ``adata`` stratified by ``groupby``.
    {n_background}
    n_steps
        Quadrature nodes per path (at least 1; 2 for the trapezoid rule). Cost grows linearly.
    method
        ``"gausslegendre"``, ``"riemann_trapezoid"`` (weights summing to 1; captum's sum to 1 − 1/n_steps),
        ``"riemann_middle"``, ``"riemann_left"`` or ``"riemann_right"``.
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

    Here the ``expected_value`` is the reference f(x′) and ``additivity`` measures completeness.

    Examples
    --------
    >>> import scexplain as sx
    >>> import torch
    >>> adata = sx.datasets.toy(n_cells=200, n_genes=40, n_groups=3)
    >>> model = torch.nn.Sequential(torch.nn.Linear(40, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    >>> sx.tl.integrated_gradients(adata, model, groupby="cell_type", layer="lognorm", n_steps=32, progress=False)
    >>> adata.uns["integrated_gradients"]["additivity"]["max_relative_error"] < 1e-3
    True
    """
    from ..engines.gradients import check_integration

    check_integration(n_steps, method)
    mode, background = _resolve_baseline(baseline, background)
    uses_background = mode != "zeros"
    return explain_cells(
        adata,
        model,
        method="integrated_gradients",
        engine_factory=_ig_engine("background" if mode == "array" else mode, n_steps, method),
        groupby=groupby,
        layer=layer,
        use_raw=use_raw,
        target=target,
        background=background,
        n_background=n_background if uses_background else None,
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
        params={"baseline": mode, "n_steps": int(n_steps), "integration_method": method},
        expected_of="background_mean" if mode == "background_mean" else "background",
        presence_reference="zeros" if mode == "zeros" else "background",
    )
