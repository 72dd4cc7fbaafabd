"""``scexplain vargrad|smoothgrad|integrated-gradients``: gradient attributions of a saved model on an AnnData file (.h5ad or .zarr)."""

from __future__ import annotations

import argparse

from ..cli import register
from ._common import add_model_arguments, run_model_explainer


def _noise_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-samples", type=int, default=20, help="noisy samples per cell (default: 20)")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--noise-level", type=float,
                       help="noise σ relative to each cell's input range (default: 0.1)")
    noise.add_argument("--stdev", type=float, help="absolute noise σ (instead of --noise-level)")


def _vargrad_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, "vargrad")
    _noise_arguments(parser)
    parser.add_argument("--ddof", type=int, default=0,
                        help="variance: 0 population E[g²] − E[g]² as captum (default), 1 unbiased")


def _smoothgrad_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, "smoothgrad")
    _noise_arguments(parser)
    parser.add_argument("--square", action="store_true", help="average squared gradients (SmoothGrad²)")
    parser.add_argument("--multiply-by-inputs", action="store_true", help="multiply by the input (gradient × input)")


def _ig_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, "integrated_gradients")
    parser.add_argument("--baseline", choices=["zeros", "background_mean", "background"], default="zeros",
                        help="path start: zeros, the background mean, or every background cell (default: zeros)")
    parser.add_argument("--n-background", type=int, default=20, help="background cells (default: 20)")
    parser.add_argument("--n-steps", type=int, default=50, help="quadrature nodes per path (default: 50)")
    parser.add_argument("--method", default="gausslegendre",
                        choices=["gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left",
                                 "riemann_right"], help="quadrature rule (default: gausslegendre)")


@register("vargrad", help="VarGrad (variance of input gradients under noise) of a torch or scvi-tools model.")
def run_vargrad(args: argparse.Namespace) -> int:
    """``scexplain vargrad``."""
    from ..tl import vargrad

    return run_model_explainer(args, vargrad, n_samples=args.n_samples, noise_level=args.noise_level, stdev=args.stdev,
                ddof=args.ddof)


@register("smoothgrad", help="SmoothGrad (mean input gradient under noise) of a torch or scvi-tools model.")
def run_smoothgrad(args: argparse.Namespace) -> int:
    """``scexplain smoothgrad``."""
    from ..tl import smoothgrad

    return run_model_explainer(args, smoothgrad, n_samples=args.n_samples, noise_level=args.noise_level, stdev=args.stdev,
                square=args.square, multiply_by_inputs=args.multiply_by_inputs)


@register("integrated-gradients", help="Integrated gradients of a torch or scvi-tools model from a baseline.")
def run_integrated_gradients(args: argparse.Namespace) -> int:
    """``scexplain integrated-gradients``."""
    from ..tl import integrated_gradients

    return run_model_explainer(args, integrated_gradients, baseline=args.baseline, n_background=args.n_background,
                n_steps=args.n_steps, method=args.method)


run_vargrad.add_arguments = _vargrad_arguments
run_smoothgrad.add_arguments = _smoothgrad_arguments
run_integrated_gradients.add_arguments = _ig_arguments
