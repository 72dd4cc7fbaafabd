"""``scexplain deep-shap``: DeepSHAP of a saved torch model (or scvi-tools model folder) on an AnnData file (.h5ad or .zarr)."""

from __future__ import annotations

import argparse

from ..cli import register
from ._common import add_model_arguments, run_model_explainer


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, "deep_shap")
    parser.add_argument("--n-background", type=int, default=100, help="background cells (default: 100)")


@register("deep-shap", help="DeepSHAP attributions of a torch or scvi-tools model; AnnData in, AnnData out.")
def run(args: argparse.Namespace) -> int:
    """``scexplain deep-shap``."""
    from ..tl import deep_shap

    return run_model_explainer(args, deep_shap, n_background=args.n_background)


run.add_arguments = _arguments
