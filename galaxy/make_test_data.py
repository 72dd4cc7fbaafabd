"""Write the Galaxy tools' test data into ``galaxy/test-data/`` (offline, deterministic, well under 1 MB).

Run from the repository root: ``python galaxy/make_test_data.py``. The same seed gives the same numbers (the
scvi-tools registry's UUID is fixed too); every model is saved in a format the command line reads without
unpickling:

* ``toy.h5ad``: 48 cells × 16 genes in 3 planted cell types (``sx.datasets.toy``), ``layers["lognorm"]`` and
  ``layers["counts"]``, and ``obsm["X_rep"]`` (6 columns of the log-normalised data) for the tree models;
* ``mlp.pt2``: an MLP over the 16 genes, a ``torch.export`` program;
* ``scanvi.zip``: a (briefly trained) scANVI model folder, zipped with fixed timestamps;
* ``forest.skops``, ``xgboost.json``, ``lightgbm.txt``: tree ensembles on ``X_rep``;
* ``explained.h5ad``: ``toy.h5ad`` after ``tl.deep_shap`` of ``mlp.pt2`` (the input of the info tool's test).
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent / "test-data"
SEED = 0
#: a fixed date for the zip members (zip stores local times; the default would be "now")
ZIP_DATE = (2024, 1, 1, 0, 0, 0)


def toy():
    import scexplain as sx

    adata = sx.datasets.toy(n_cells=48, n_genes=16, n_groups=3, n_markers=3, seed=SEED)
    adata.obsm["X_rep"] = adata.layers["lognorm"][:, :6].copy()
    return adata


def exported_mlp(n_genes: int, path: Path) -> None:
    import torch

    torch.manual_seed(SEED)
    net = torch.nn.Sequential(torch.nn.Linear(n_genes, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    program = torch.export.export(net, (torch.zeros(4, n_genes),), dynamic_shapes=({0: torch.export.Dim("cells")},))
    torch.export.save(program, path)


def scanvi_zip(adata, path: Path) -> None:
    import tempfile
    import warnings

    import scvi

    scvi.settings.seed = SEED
    train = adata.copy()
    train.uns["_scvi_uuid"] = "00000000-0000-0000-0000-000000000000"  # scvi-tools would draw a random one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scvi.model.SCANVI.setup_anndata(train, layer="counts", labels_key="cell_type", unlabeled_category="unknown")
        model = scvi.model.SCANVI(train, n_latent=2, n_hidden=8)
        model.train(max_epochs=2, accelerator="cpu", enable_progress_bar=False, logger=False,
                    enable_checkpointing=False, check_val_every_n_epoch=None)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "scanvi"
        model.save(str(folder), save_anndata=False)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(folder.iterdir()):
                info = zipfile.ZipInfo(f"scanvi/{file.name}", date_time=ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, file.read_bytes())


def trees(adata, out: Path) -> None:
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.ensemble import RandomForestClassifier
    from skops.io import dump

    x, labels = adata.obsm["X_rep"], adata.obs["cell_type"].cat.codes.to_numpy()
    forest = RandomForestClassifier(n_estimators=4, max_depth=3, random_state=SEED).fit(x, adata.obs["cell_type"])
    dump(forest, out / "forest.skops")
    booster = xgb.XGBClassifier(n_estimators=3, max_depth=2, random_state=SEED, n_jobs=1).fit(x, labels)
    booster.save_model(out / "xgboost.json")
    light = lgb.LGBMClassifier(n_estimators=3, num_leaves=4, min_child_samples=3, random_state=SEED, n_jobs=1,
                               verbose=-1, deterministic=True).fit(x, labels)
    light.booster_.save_model(str(out / "lightgbm.txt"))


def explained(adata, program_path: Path, path: Path) -> None:
    import torch

    import scexplain as sx

    result = adata.copy()
    sx.tl.deep_shap(result, torch.export.load(program_path), groupby="cell_type", layer="lognorm", n_background=10,
                    random_state=SEED, progress=False)
    result.write_h5ad(path)


def main(out: Path = OUT) -> int:
    """Write every test file into ``out``; print their sizes."""
    out.mkdir(parents=True, exist_ok=True)
    adata = toy()
    adata.write_h5ad(out / "toy.h5ad")
    exported_mlp(adata.n_vars, out / "mlp.pt2")
    scanvi_zip(adata, out / "scanvi.zip")
    trees(adata, out)
    explained(adata, out / "mlp.pt2", out / "explained.h5ad")
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    buffer = io.StringIO()
    for name, size in sizes.items():
        print(f"{name:16} {size / 1024:7.1f} KiB", file=buffer)
    print(f"{'total':16} {sum(sizes.values()) / 1024:7.1f} KiB", file=buffer)
    print(buffer.getvalue(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
