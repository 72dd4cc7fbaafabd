"""``scexplain tree-shap``: exact TreeSHAP of a saved tree ensemble on an AnnData file."""

from __future__ import annotations

import argparse

from ..cli import add_io_arguments, register
from ._common import add_bootstrap_arguments, explain_file, parse_names, parse_target
from ._models import ALLOW_PICKLE_HELP, load_tree_model


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_io_arguments(parser)
    parser.add_argument("--model", "-m", required=True,
                        help="model file: .skops (scikit-learn, skops.io.dump), .json/.ubj (XGBoost save_model), "
                             ".txt (LightGBM save_model); .joblib/.pkl need --allow-pickle")
    parser.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
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
    parser.add_argument("--to-genes", action="store_true",
                        help="with --use-rep X_pca: also carry the attributions to genes through the PCA loadings")
    add_bootstrap_arguments(parser)
    parser.add_argument("--keep-all", action="store_true", help="store values toward every explained output")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--key-added", help="storage key (default: tree_shap)")


@register("tree-shap", help="Exact TreeSHAP of a tree ensemble (scikit-learn, XGBoost, LightGBM); AnnData in, "
                            "AnnData out.")
def run(args: argparse.Namespace) -> int:
    """Read, explain, write atomically."""

    def explain(adata, model):
        from .. import tl

        tl.tree_shap_gpu(
            adata,
            model,
            use_rep=args.use_rep,
            layer=args.layer,
            groupby=args.groupby,
            target=parse_target(args.target),
            output_names=parse_names(args.output_names),
            feature_perturbation=args.feature_perturbation,
            n_background=args.n_background,
            interactions=args.interactions,
            to_genes=args.to_genes,
            n_bootstrap=args.n_bootstrap,
            ci_level=args.ci_level,
            n_top=args.n_top,
            keep_all=args.keep_all,
            device=args.device,
            random_state=args.seed,
            key_added=args.key_added,
            progress=False,
        )

    return explain_file(args, lambda: load_tree_model(args.model, allow_pickle=args.allow_pickle), explain)


run.add_arguments = _arguments
