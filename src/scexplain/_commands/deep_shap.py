"""``scexplain deep-shap``: DeepSHAP of a saved torch model (or scvi-tools model folder) on an AnnData file (.h5ad or .zarr)."""

from __future__ import annotations

import argparse

from ..cli import register
from ._common import add_bootstrap_arguments, add_model_arguments, run_model_explainer


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, "deep_shap")
    parser.add_argument("--n-background", type=int, default=100, help="background cells (default: 100)")
    parser.add_argument("--no-split", dest="split", action="store_false",
                        help="do not store the presence/absence split (stored by default)")
    add_bootstrap_arguments(parser)


@register("deep-shap", help="DeepSHAP attributions of a torch or scvi-tools model; AnnData in, AnnData out.")
def run(args: argparse.Namespace) -> int:
    """``scexplain deep-shap``."""
    from ..tl import deep_shap

    return run_model_explainer(args, deep_shap, n_background=args.n_background, split=args.split,
                               n_bootstrap=args.n_bootstrap, ci_level=args.ci_level, n_top=args.n_top)


run.add_arguments = _arguments
