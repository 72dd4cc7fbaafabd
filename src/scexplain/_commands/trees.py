"""``scexplain tree-shap``: exact TreeSHAP of a saved tree ensemble on an h5ad file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import add_io_arguments, check_io_paths, register, write_h5ad_atomic
from ._common import parse_target


def load_tree_model(path: str):
    """A tree model from a file.

    ``.joblib``/``.pkl``/``.pickle``: any supported model saved with ``joblib.dump`` (unpickled: trusted files only);
    ``.json``/``.ubj``: an XGBoost model (``save_model``); ``.txt``: a LightGBM model (``save_model``).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Model {path!r} does not exist.")
    suffix = p.suffix.lower()
    if suffix in (".joblib", ".pkl", ".pickle"):
        import joblib

        return joblib.load(p)
    from .._optional import import_optional

    if suffix in (".json", ".ubj"):
        xgb = import_optional("xgboost", purpose="loading XGBoost models")
        booster = xgb.Booster()
        booster.load_model(str(p))
        return booster
    if suffix == ".txt":
        lgb = import_optional("lightgbm", purpose="loading LightGBM models")
        return lgb.Booster(model_file=str(p))
    raise ValueError(
        f"Unknown model file type {suffix!r}: use .joblib/.pkl (joblib.dump of any supported model), "
        ".json/.ubj (XGBoost save_model) or .txt (LightGBM save_model)."
    )


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_io_arguments(parser)
    parser.add_argument("--model", "-m", required=True,
                        help="model file: .joblib/.pkl (unpickled: trusted files only), .json/.ubj (XGBoost), "
                             ".txt (LightGBM)")
    parser.add_argument("--use-rep", help="obsm embedding the model was trained on (default: genes)")
    parser.add_argument("--layer", help="layer holding the model's input genes (default: X)")
    parser.add_argument("--groupby", help="obs column with each cell's class")
    parser.add_argument("--target", default="label",
                        help="'label', 'predicted', 'all' or comma-separated output names (default: label)")
    parser.add_argument("--output-names", help="comma-separated names of the model outputs, in order")
    parser.add_argument("--feature-perturbation", choices=["tree_path_dependent", "interventional"],
                        default="tree_path_dependent")
    parser.add_argument("--n-background", type=int, default=100, help="background cells, interventional (100)")
    parser.add_argument("--interactions", action="store_true", help="also store SHAP interaction values")
    parser.add_argument("--keep-all", action="store_true", help="store values toward every explained output")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--key-added", help="storage key (default: tree_shap)")


@register("tree-shap", help="Exact TreeSHAP of a tree ensemble (scikit-learn, XGBoost, LightGBM); h5ad in, h5ad out.")
def run(args: argparse.Namespace) -> int:
    """Read, explain, write atomically."""
    import anndata as ad

    from .. import tl

    check_io_paths(args.input, args.output)
    model = load_tree_model(args.model)
    adata = ad.read_h5ad(args.input)
    tl.tree_shap_gpu(
        adata,
        model,
        use_rep=args.use_rep,
        layer=args.layer,
        groupby=args.groupby,
        target=parse_target(args.target),
        output_names=args.output_names.split(",") if args.output_names else None,
        feature_perturbation=args.feature_perturbation,
        n_background=args.n_background,
        interactions=args.interactions,
        keep_all=args.keep_all,
        device=args.device,
        random_state=args.seed,
        key_added=args.key_added,
        progress=False,
    )
    write_h5ad_atomic(adata, args.output)
    return 0


run.add_arguments = _arguments
