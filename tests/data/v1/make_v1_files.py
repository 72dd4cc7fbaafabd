"""Write the 0.1.0-layout result files that tests/test_storage_compat.py reads back.

They were written once by scexplain 0.1.0 (commit 01a4173, storage layout 1: group names as DataFrame column names,
``keep_all`` layers named after outputs) and are committed; this script documents how. Running it with today's
scexplain writes layout 2 instead, so do not regenerate them.

    python tests/data/v1/make_v1_files.py tests/data/v1
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

import scexplain as sx


def toy():
    adata = sx.datasets.toy(n_cells=60, n_genes=12, n_groups=3, n_markers=2, seed=0)
    # group names with '/', as real annotations have (pbmc68k: "CD4+/CD25 T Reg")
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.rename_categories(["CD4+/CD25 T Reg", "B cell", "NK/T"])
    return adata


def main(out: Path) -> None:
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestClassifier

    warnings.simplefilter("ignore", FutureWarning)
    adata = toy()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    sx.tl.deep_shap(adata, model, groupby="cell_type", layer="lognorm", n_background=10, progress=False)
    sx.tl.deep_shap(adata, model, groupby="cell_type", layer="lognorm", n_background=10, target="all", keep_all=True,
                    output_names=["out_a", "out_b", "out_c"], key_added="deep_shap_all", progress=False)
    # (0.1.0 named keep_all layers after outputs: output names with '/' made files that could not be read back)
    sx.tl.vargrad(adata, model, groupby="cell_type", layer="lognorm", n_samples=4, progress=False)
    adata.obsm["X_pca"] = PCA(4, random_state=0).fit_transform(np.asarray(adata.layers["lognorm"]))
    y = adata.obs["cell_type"]
    rf = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(adata.obsm["X_pca"], y)
    sx.tl.tree_shap_gpu(adata, rf, use_rep="X_pca", groupby="cell_type", interactions=True, progress=False)
    rf_genes = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(
        np.asarray(adata.layers["lognorm"]), y)
    sx.tl.tree_shap_gpu(adata, rf_genes, layer="lognorm", groupby="cell_type", key_added="tree_genes", progress=False)
    adata.write_h5ad(out / "results_v1.h5ad")

    import scvi

    scvi.settings.seed = 0
    lat = toy()
    lat.layers["counts"] = np.asarray(lat.layers["counts"], dtype=np.float32)
    scvi.model.SCVI.setup_anndata(lat, layer="counts")
    vae = scvi.model.SCVI(lat, n_latent=2, n_hidden=8)
    vae.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False, logger=False, enable_checkpointing=False)
    sx.tl.deep_shap(lat, vae, explain="latent", groupby="cell_type", n_background=10, progress=False)
    clean = toy()
    for attr in ("layers", "obsm", "varm"):
        for k, v in getattr(lat, attr).items():
            if k.startswith("deep_shap"):
                getattr(clean, attr)[k] = v
    clean.uns["deep_shap"] = lat.uns["deep_shap"]
    clean.write_h5ad(out / "latent_v1.h5ad")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
