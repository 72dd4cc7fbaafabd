"""scANVI cell-type calls: scexplain ``tl.deep_shap`` vs scanvi-explainer ``SCANVIDeep``, same cells, background, classes.

scANVI is trained on ``scexplain.datasets.pbmc68k_counts()`` (layer ``"counts"``, labels ``bulk_labels``) with a
fixed seed. The cells are split per label 80/20 (seeded), as scanvi-explainer's own split does: the 20 % are
explained toward all 10 classes against the 80 % as background (143 cells × 557 background × 10 classes).
scanvi-explainer 0.3.1 (``pip install --no-deps scanvi-explainer``) runs through the shims of
``_scanvi_explainer_shim.py``.

Both tools' additivity is measured the same way, per cell over the 10 classes:
‖Σ_genes φ − (f(x) − mean_b f(b))‖ / ‖f(x) − mean_b f(b)‖, with f the model's ``classify`` logits in float64.

Run: ``python benchmarks/scanvi.py`` (``--epochs``, ``--seed``; ``--skip-reference`` runs scexplain only).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings

import numpy as np


def train_scanvi(adata, *, epochs: int, seed: int):
    """scANVI with scvi-tools defaults on the counts layer, trained from scratch with a fixed seed."""
    import scvi

    scvi.settings.seed = seed
    scvi.settings.verbosity = logging.ERROR
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    scvi.model.SCANVI.setup_anndata(adata, layer="counts", labels_key="bulk_labels", unlabeled_category="Unknown")
    model = scvi.model.SCANVI(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False, logger=False,
                    enable_checkpointing=False)
    return model


def split_per_label(labels, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(background, test)`` row indices: per label, ``test_size`` of the cells to explain (seeded)."""
    from sklearn.model_selection import train_test_split

    bg, test = [], []
    for lab in np.unique(labels):
        cells = np.flatnonzero(labels == lab)
        a, b = train_test_split(cells, test_size=test_size, random_state=seed)
        bg.append(a)
        test.append(b)
    return np.sort(np.concatenate(bg)), np.sort(np.concatenate(test))


def logits64(model, X: np.ndarray) -> np.ndarray:
    """The model's classifier logits in float64 (no covariates are encoded with scvi-tools' defaults)."""
    import torch

    from scexplain.models import adapt

    adapter = adapt(model)
    with adapter.explaining(torch.device("cpu"), torch.float64), torch.no_grad():
        return adapter.forward(torch.as_tensor(X, dtype=torch.float64), None).numpy()


def relative_additivity(phi: np.ndarray, fx: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per cell: ‖Σ_genes φ − (f(x) − ref)‖ / ‖f(x) − ref‖ over classes; ``phi`` is cells × classes × genes."""
    delta = fx - ref
    return np.linalg.norm(phi.sum(-1) - delta, axis=1) / np.linalg.norm(delta, axis=1)


def main() -> None:
    """Train, explain with both tools, print times, ratio and additivity errors."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of scexplain (default 5)")
    parser.add_argument("--skip-reference", action="store_true", help="run scexplain only")
    args = parser.parse_args()

    import torch

    import scexplain as sx

    adata = sx.datasets.pbmc68k_counts()
    t0 = time.perf_counter()
    model = train_scanvi(adata.copy(), epochs=args.epochs, seed=args.seed)
    print(f"scANVI trained on pbmc68k_counts ({adata.n_obs} cells × {adata.n_vars} genes, {args.epochs} epochs, "
          f"seed {args.seed}) in {time.perf_counter() - t0:.1f} s")
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()
    bg_idx, test_idx = split_per_label(labels, 0.2, args.seed)
    counts = np.asarray(adata.layers["counts"], dtype=np.float64)
    names = [str(c) for c in model.predict(soft=True).columns]
    n_cls = len(names)
    print(f"explained: {len(test_idx)} cells × {len(bg_idx)} background × {n_cls} classes; "
          f"torch threads: {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    fx = logits64(model, counts[test_idx])
    ref = logits64(model, counts[bg_idx]).mean(0)

    # scexplain: default settings (the presence/absence split included) and without the split (the work before the
    # split existed), interleaved, timed `--repeats` times each (the medians are compared)
    from scexplain._results import get_result

    background = adata[bg_idx].copy()
    sx.tl.deep_shap(adata[test_idx[:2]].copy(), model, background=background, progress=False)  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for split in (True, False):
            query = adata[test_idx].copy()
            t0 = time.perf_counter()
            sx.tl.deep_shap(query, model, target="all", keep_all=True, background=background, split=split,
                            progress=False)
            times[split].append(time.perf_counter() - t0)
    res = get_result(query, "deep_shap")
    ours = np.stack([res.output_layer(n) for n in names], axis=1).astype(np.float64)
    rel = relative_additivity(ours, fx, ref)
    t_ours = float(np.median(times[True]))
    for split, label in ((True, "default (split)"), (False, "split=False")):
        t = times[split]
        print(f"scexplain tl.deep_shap, float32, {label:15s} {np.median(t):7.2f} s   (median of {args.repeats}; "
              f"min {min(t):.2f}, max {max(t):.2f})")
    print(f"  relative additivity error median {np.median(rel):.1e}, max {rel.max():.1e}")
    print(f"  (uns['deep_shap']['additivity'] of the last run: {query.uns['deep_shap']['additivity']})")

    if args.skip_reference:
        return
    try:
        import scanvi_explainer  # noqa: F401
    except ImportError:
        print("scanvi-explainer is not installed (pip install --no-deps scanvi-explainer); reference skipped.")
        return
    from _scanvi_explainer_shim import make_scanvi_deep

    explainer = make_scanvi_deep(model, bg_idx, test_idx)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = explainer.shap_values()  # list over classes of cells × genes
    t_ref = time.perf_counter() - t0
    theirs = np.stack(theirs, axis=1)
    rel_ref = relative_additivity(theirs, fx, ref)
    rel_ref_own = relative_additivity(theirs, fx, np.asarray(explainer.expected_value, dtype=np.float64))
    print(f"scanvi-explainer SCANVIDeep (0.3.1, shims):  {t_ref:7.2f} s   relative additivity error median "
          f"{np.median(rel_ref):.2f}, range {rel_ref.min():.2f}–{rel_ref.max():.2f} (against its own "
          f"expected_value: median {np.median(rel_ref_own):.2f})")
    print(f"speed-up: {t_ref / t_ours:.1f}× (median run; {t_ref / max(times[True]):.1f}× against our slowest run)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    corr = np.corrcoef(ours.reshape(-1), theirs.reshape(-1))[0, 1]
    print(f"correlation of the two tools' attributions: {corr:.3f}")


if __name__ == "__main__":
    main()
