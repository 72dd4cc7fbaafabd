"""``scexplain demo``: train a small classifier on bundled data, explain it, write an h5ad and a heatmap."""

from __future__ import annotations

import argparse
import logging

from .._io import write_h5ad_atomic, write_zarr_atomic
from ..cli import register

logger = logging.getLogger("scexplain")


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", default="scexplain-demo.h5ad", help="output h5ad (default: %(default)s)")
    parser.add_argument("--zarr", default="scexplain-demo.zarr",
                        help="a zarr copy of the output, '' to skip (default: %(default)s)")
    parser.add_argument(
        "--figure", default="scexplain-demo-heatmap.png", help="heatmap PNG, '' to skip (default: %(default)s)"
    )
    parser.add_argument("--n-genes", type=int, default=5, help="top genes per cell type to print and plot")
    parser.add_argument("--n-background", type=int, default=100, help="background cells (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of the MLP (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--no-scanvi", action="store_true", help="skip the scANVI part"
    )
    parser.add_argument("--scanvi-epochs", type=int, default=20, help="scANVI training epochs (default: %(default)s)")


@register("demo", help="Train a small classifier on bundled PBMC data, explain it with DeepSHAP, write h5ad + PNG.")
def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; see ``scexplain demo --help``."""
    import numpy as np

    from .. import datasets, tl
    from .._demo import train_mlp
    from .._store import anndata_013_rules

    adata = datasets.pbmc68k_counts()
    labels = adata.obs["bulk_labels"].astype("category")
    names = [str(c) for c in labels.cat.categories]
    print(f"data: pbmc68k_reduced with rebuilt counts, {adata.n_obs} cells × {adata.n_vars} genes, {len(names)} types")
    model = train_mlp(adata.layers["lognorm"], labels.cat.codes.to_numpy(), epochs=args.epochs, seed=args.seed)
    print("model: Linear(765,128)-BatchNorm1d-ReLU-Dropout-Linear(128,64)-ReLU-Linear(64,10) on log-normalised data")
    tl.deep_shap(
        adata,
        model,
        groupby="bulk_labels",
        layer="lognorm",
        output_names=names,
        n_background=args.n_background,
        random_state=args.seed,
        progress=True,
    )
    add = adata.uns["deep_shap"]["additivity"]
    print(f"DeepSHAP: max relative additivity error {add['max_relative_error']:.2e} (Σφ vs f(x) − E[f(background)])")
    print(f"top {args.n_genes} genes per cell type (mean attribution toward the cell's own type; 'absent': the "
          "score comes mostly from the type lacking the gene, relative to the background):")
    _print_top_genes(adata, "deep_shap", names, args.n_genes)
    if not args.no_scanvi:
        _explain_scanvi(adata, args)
    with anndata_013_rules():  # '/' in any key raises, as in anndata 0.13 (group names such as "CD4+/CD25 T Reg")
        write_h5ad_atomic(adata, args.output)
        print(f"wrote {args.output}")
        if args.zarr:
            write_zarr_atomic(adata, args.zarr)
            print(f"wrote {args.zarr}")
    if args.figure:
        _save_heatmap(adata, args.figure, n_genes=args.n_genes)
    return int(not np.isfinite(add["max_relative_error"]))


def _print_top_genes(adata, key: str, groups, n_genes: int) -> None:
    """Each group's top genes with their score, marked ``absent`` when the score comes mostly from absence."""
    from .. import get

    ranked = get.ranked_genes_df(adata, key)
    for group in groups:
        top = ranked[(ranked["group"] == group) & (ranked["rank"] < n_genes)]
        genes = ", ".join(f"{row.names} ({row.scores:+.2f}{_absent(row)})" for row in top.itertuples())
        print(f"  {group:<28} {genes}")


def _absent(row) -> str:
    """``", absent"`` when a gene's score comes mostly from the cells lacking it (|absence| > |presence|)."""
    if not hasattr(row, "absence"):
        return ""
    return ", absent" if abs(row.absence) > abs(row.presence) else ""


def _explain_scanvi(adata, args: argparse.Namespace) -> None:
    """Train scANVI on the counts (a few epochs on CPU) and explain its cell-type calls per gene."""
    import scvi

    from .. import tl

    scvi.settings.seed = args.seed
    train = adata.copy()
    scvi.model.SCANVI.setup_anndata(train, layer="counts", labels_key="bulk_labels", unlabeled_category="Unknown")
    model = scvi.model.SCANVI(train, n_latent=10, n_hidden=128)
    model.train(max_epochs=args.scanvi_epochs, accelerator="cpu", enable_progress_bar=False, logger=False,
                enable_checkpointing=False, check_val_every_n_epoch=None)
    print(f"scANVI: trained {args.scanvi_epochs} epochs on the counts; explaining its classifier")
    tl.deep_shap(adata, model, n_background=args.n_background, random_state=args.seed, key_added="deep_shap_scanvi")
    add = adata.uns["deep_shap_scanvi"]["additivity"]
    print(f"scANVI DeepSHAP: max relative additivity error {add['max_relative_error']:.2e}")
    print(f"top {args.n_genes} genes per cell type for scANVI's classifier (key 'deep_shap_scanvi'):")
    from .._results import get_result

    _print_top_genes(adata, "deep_shap_scanvi", get_result(adata, "deep_shap_scanvi").stored_groups, args.n_genes)


def _save_heatmap(adata, path: str, *, n_genes: int) -> None:
    from .. import pl

    pl.save_heatmap(adata, path, "deep_shap", n_genes=n_genes)
    print(f"wrote {path}")


run_demo.add_arguments = _arguments
