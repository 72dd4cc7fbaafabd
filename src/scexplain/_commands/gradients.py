"""``scexplain vargrad|smoothgrad|integrated-gradients``: gradient attributions of a saved model on an h5ad file."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..cli import add_io_arguments, check_io_paths, register, write_h5ad_atomic
from .deep_shap import load_model, parse_target

MODEL_HELP = (
    "a torch module saved with torch.save(module), loaded with torch.load(weights_only=False), which unpickles "
    "arbitrary code: only load model files you trust; or an scvi-tools model folder (SCANVI/SCVI)"
)


def _common_arguments(parser: argparse.ArgumentParser, default_key: str) -> None:
    add_io_arguments(parser)
    parser.add_argument("--model", "-m", required=True, help=MODEL_HELP)
    parser.add_argument("--groupby", help="obs column with each cell's class")
    parser.add_argument("--layer", help="layer holding the model's input (default: X)")
    parser.add_argument("--use-raw", action="store_true", help="use adata.raw.X as input")
    parser.add_argument("--target", default="label",
                        help="'label', 'predicted', 'all' or comma-separated output names (default: label)")
    parser.add_argument("--output-names", help="comma-separated names of the model outputs, in order")
    parser.add_argument("--explain", choices=["classifier", "latent"], help="scvi-tools models: what to explain")
    parser.add_argument("--keep-all", action="store_true", help="with --target all or a list: one layer per output")
    parser.add_argument("--batch-size", type=int, default=128, help="cells per chunk (default: 128)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--key-added", help=f"storage key (default: {default_key})")


def _noise_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-samples", type=int, default=20, help="noisy samples per cell (default: 20)")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--noise-level", type=float,
                       help="noise σ relative to each cell's input range (default: 0.1)")
    noise.add_argument("--stdev", type=float, help="absolute noise σ (instead of --noise-level)")


def _vargrad_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser, "vargrad")
    _noise_arguments(parser)
    parser.add_argument("--ddof", type=int, default=0,
                        help="variance: 0 population E[g²] − E[g]² as captum (default), 1 unbiased")


def _smoothgrad_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser, "smoothgrad")
    _noise_arguments(parser)
    parser.add_argument("--square", action="store_true", help="average squared gradients (SmoothGrad²)")
    parser.add_argument("--multiply-by-inputs", action="store_true", help="multiply by the input (gradient × input)")


def _ig_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser, "integrated_gradients")
    parser.add_argument("--baseline", choices=["zeros", "background_mean", "background"], default="zeros",
                        help="path start: zeros, the background mean, or every background cell (default: zeros)")
    parser.add_argument("--n-background", type=int, default=20, help="background cells (default: 20)")
    parser.add_argument("--n-steps", type=int, default=50, help="quadrature nodes per path (default: 50)")
    parser.add_argument("--method", default="gausslegendre",
                        choices=["gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left",
                                 "riemann_right"], help="quadrature rule (default: gausslegendre)")


def _run(args: argparse.Namespace, explainer: Callable[..., Any], **options: Any) -> int:
    """Read, explain with ``explainer``, write atomically."""
    import anndata as ad

    check_io_paths(args.input, args.output)
    adata = ad.read_h5ad(args.input)
    model = load_model(args.model, adata)
    explainer(
        adata,
        model,
        groupby=args.groupby,
        layer=args.layer,
        use_raw=args.use_raw,
        target=parse_target(args.target),
        output_names=args.output_names.split(",") if args.output_names else None,
        explain=args.explain,
        keep_all=args.keep_all,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        random_state=args.seed,
        key_added=args.key_added,
        progress=False,
        **options,
    )
    write_h5ad_atomic(adata, args.output)
    return 0


@register("vargrad", help="VarGrad (variance of input gradients under noise) of a torch or scvi-tools model.")
def run_vargrad(args: argparse.Namespace) -> int:
    """``scexplain vargrad``."""
    from ..tl import vargrad

    return _run(args, vargrad, n_samples=args.n_samples, noise_level=args.noise_level, stdev=args.stdev,
                ddof=args.ddof)


@register("smoothgrad", help="SmoothGrad (mean input gradient under noise) of a torch or scvi-tools model.")
def run_smoothgrad(args: argparse.Namespace) -> int:
    """``scexplain smoothgrad``."""
    from ..tl import smoothgrad

    return _run(args, smoothgrad, n_samples=args.n_samples, noise_level=args.noise_level, stdev=args.stdev,
                square=args.square, multiply_by_inputs=args.multiply_by_inputs)


@register("integrated-gradients", help="Integrated gradients of a torch or scvi-tools model from a baseline.")
def run_integrated_gradients(args: argparse.Namespace) -> int:
    """``scexplain integrated-gradients``."""
    from ..tl import integrated_gradients

    return _run(args, integrated_gradients, baseline=args.baseline, n_background=args.n_background,
                n_steps=args.n_steps, method=args.method)


run_vargrad.add_arguments = _vargrad_arguments
run_smoothgrad.add_arguments = _smoothgrad_arguments
run_integrated_gradients.add_arguments = _ig_arguments
