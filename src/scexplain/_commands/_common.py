"""What the commands that explain a torch or scvi-tools model share: options, read → explain → write."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..cli import add_io_arguments
from ._models import ALLOW_PICKLE_HELP, load_model

__all__ = ["MODEL_HELP", "add_model_arguments", "explain_file", "parse_names", "parse_target", "run_model_explainer"]

MODEL_HELP = (
    "a torch.export program (.pt2: torch.export.save of torch.export.export(model.eval(), (x,), "
    "dynamic_shapes=({0: torch.export.Dim('cells')},))) or an scvi-tools model folder (SCANVI/SCVI, model.save); "
    "a torch.save(module) file needs --allow-pickle"
)


def parse_target(value: str):
    """``label``/``predicted``/``all`` pass through; anything else is a comma-separated list of names."""
    return value if value in ("label", "predicted", "all") else parse_names(value)


def parse_names(value: str | None) -> list[str] | None:
    """A comma-separated list of names (``None`` stays ``None``)."""
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def add_bootstrap_arguments(parser: argparse.ArgumentParser) -> None:
    """``--n-bootstrap``, ``--ci-level``, ``--n-top``: uncertainty of the group summaries (``tl``'s options)."""
    parser.add_argument("--n-bootstrap", type=int, default=None,
                        help="bootstrap replicates for intervals and rank stability of the group summaries")
    parser.add_argument("--ci-level", type=float, default=0.95, help="with --n-bootstrap: interval level (0.95)")
    parser.add_argument("--n-top", type=int, default=20,
                        help="with --n-bootstrap: rank stability counts a feature in its group's top N (20)")


def add_model_arguments(parser: argparse.ArgumentParser, default_key: str) -> None:
    """Input/output, model and the options every model explainer takes."""
    add_io_arguments(parser)
    parser.add_argument("--model", "-m", required=True, help=MODEL_HELP)
    parser.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
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


def explain_file(args: argparse.Namespace, load: Callable[[], Any], explain: Callable[[Any, Any], None]) -> int:
    """Check the paths, load the model, read the input, ``explain(adata, model)``, write the output atomically.

    The model is loaded before the data is read: a refused model file costs nothing. With dask's
    ``DASK_SCHEDULER_ADDRESS`` set, a zarr input (read lazily) is explained block by block on that cluster.
    """
    from .._io import check_io_paths, read_input, write_output
    from ._dask import scheduler_client

    check_io_paths(args.input, args.output)
    model = load()
    adata = read_input(args.input)
    with scheduler_client():
        explain(adata, model)
        write_output(adata, args.output)
    return 0


def run_model_explainer(args: argparse.Namespace, explainer: Callable[..., Any], **options: Any) -> int:
    """Read the input, explain with ``explainer`` (a ``tl`` function) and ``options``, write atomically."""

    def explain(adata, model):
        explainer(
            adata,
            model,
            groupby=args.groupby,
            layer=args.layer,
            use_raw=args.use_raw,
            target=parse_target(args.target),
            output_names=parse_names(args.output_names),
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

    return explain_file(args, lambda: load_model(args.model, allow_pickle=args.allow_pickle), explain)
