"""What the commands that explain a torch or scvi-tools model share: loading, options, read → explain → write."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cli import add_io_arguments, check_io_paths, write_h5ad_atomic


def load_model(path: str):
    """A torch module saved with ``torch.save(module, path)``, or an scvi-tools model folder (SCANVI/SCVI).

    ``torch.load(..., weights_only=False)`` unpickles the module: only load model files you trust.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"Model {path!r} does not exist.")
    if p.is_dir():  # loaded with its own data: the AnnData to explain is read, never registered or modified
        from ..models._scvi_load import load_scvi_model

        return load_scvi_model(p)
    import torch

    model = torch.load(p, map_location="cpu", weights_only=False)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{path!r} holds a {type(model).__name__}, not a torch.nn.Module saved with torch.save(model).")
    return model


def parse_target(value: str):
    """``label``/``predicted``/``all`` pass through; anything else is a comma-separated list of names."""
    return value if value in ("label", "predicted", "all") else [v.strip() for v in value.split(",") if v.strip()]


MODEL_HELP = (
    "a torch module saved with torch.save(module), loaded with torch.load(weights_only=False), which unpickles "
    "arbitrary code: only load model files you trust; or an scvi-tools model folder (SCANVI/SCVI)"
)


def add_model_arguments(parser: argparse.ArgumentParser, default_key: str) -> None:
    """Input/output, model and the options every model explainer takes."""
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


def run_model_explainer(args: argparse.Namespace, explainer: Callable[..., Any], **options: Any) -> int:
    """Read the input, explain with ``explainer`` (a ``tl`` function) and ``options``, write atomically."""
    import anndata as ad

    check_io_paths(args.input, args.output)
    adata = ad.read_h5ad(args.input)
    model = load_model(args.model)
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
