"""Tree explanations on an embedding carried back to genes, side by side with what a user can do today.

Part 1 — genes through the PCA: a random forest (100 trees, max_depth=8) trained on ``X_pca`` of scanpy's
``pbmc68k_reduced`` (a 30-component PCA of its scaled ``X``, recomputed), explained on the 765 genes:

- scexplain ``tl.tree_shap_gpu(..., use_rep="X_pca", to_genes=True)`` (interventional, and path-dependent);
- shap's ``KernelExplainer`` on genes through the PCA, f(x) = forest(PCA(x)) toward each cell's own class, with the
  same background cells (``l1_reg=False``: all genes), the alternative a user has today: at ``--nsamples`` (twice,
  with two seeds, to show its sampling noise) and at ``--converged-nsamples`` on the first ``--converged-cells``.

Both split f(x) − mean_b f(b) over genes, by different rules (KernelSHAP estimates the Shapley values of the gene
game through the PCA; scexplain splits the tree's exact values per background cell along the PCA's loadings), so
agreement is a correlation, not an identity. Printed: time, ratio, Pearson r, top-10 overlap, max |Δ|.

Part 2 — what the new outputs cost, measured side by side on the engines (interventional, 100 background cells):
a plain run (values only), the presence split (always stored now), the split plus the bootstrap's
per-(group, background cell) sums, and the per-pair values ``to_genes`` composes; on 700 and 7,000 cells, for a
shallow and a deep forest.

    python benchmarks/tree_to_genes.py [--cells 50] [--background 20] [--nsamples 2048] [--skip-kernel] [--part 1|2]

2 threads everywhere (Numba, BLAS); each timing is the best of ``--repeats`` runs, interleaved.
"""

from __future__ import annotations

import argparse
import os

THREADS = 2
for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))

import numpy as np  # noqa: E402

from _common import timed  # noqa: E402


def _best(fns: dict, repeats: int) -> dict:
    """Best wall time of each callable over ``repeats`` interleaved rounds (after one warm-up call each)."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn)[1])
    return {k: min(v) for k, v in times.items()}


def _pbmc():
    import scanpy as sc
    from sklearn.ensemble import RandomForestClassifier

    adata = sc.datasets.pbmc68k_reduced()
    del adata.uns["rank_genes_groups"]
    sc.pp.pca(adata, n_comps=30)
    forest = RandomForestClassifier(100, max_depth=8, random_state=0, n_jobs=THREADS).fit(
        adata.obsm["X_pca"], adata.obs["bulk_labels"])
    return adata, forest


def part1(args) -> None:
    import scexplain as sx

    adata, forest = _pbmc()
    rng = np.random.default_rng(0)
    cells = np.sort(rng.choice(adata.n_obs, size=args.cells, replace=False))
    rest = np.setdiff1d(np.arange(adata.n_obs), cells)
    bg = np.sort(rng.choice(rest, size=args.background, replace=False))
    explained, background = adata[cells].copy(), adata[bg].copy()
    own = np.searchsorted(forest.classes_, explained.obs["bulk_labels"].astype(str))
    print(f"\nPart 1: RandomForestClassifier(100, max_depth=8) on X_pca (30 PCs of pbmc68k_reduced's scaled X); "
          f"{args.cells} cells × {adata.n_vars} genes, {args.background} background cells, {THREADS} threads")

    kw = dict(use_rep="X_pca", to_genes=True, groupby="bulk_labels", progress=False)
    sx.tl.tree_shap_gpu(explained.copy(), forest, feature_perturbation="interventional", background=background,
                        **kw)  # warm-up: compiles the Numba kernels
    ours = {}
    for mode in ("interventional", "tree_path_dependent"):
        out = explained.copy()
        _, seconds = timed(lambda out=out, mode=mode: sx.tl.tree_shap_gpu(
            out, forest, feature_perturbation=mode, background=background, **kw))
        ours[mode] = (np.asarray(out.layers["tree_shap"], dtype=np.float64), seconds,
                      out.uns["tree_shap"]["additivity"]["genes_max_relative_error"])
    full = adata.copy()
    _, full_s = timed(lambda: sx.tl.tree_shap_gpu(full, forest, feature_perturbation="interventional",
                                                   n_background=args.background, **kw))
    print(f"  scexplain to_genes, interventional            {ours['interventional'][1]:8.2f} s   "
          f"(all {adata.n_obs} cells: {full_s:.2f} s)   Σ_genes vs Σ_dims: "
          f"{ours['interventional'][2]:.1e} relative")
    print(f"  scexplain to_genes, path-dependent            {ours['tree_path_dependent'][1]:8.2f} s   "
          f"Σ_genes vs Σ_dims: {ours['tree_path_dependent'][2]:.1e} relative")
    if args.skip_kernel:
        return
    X = np.asarray(explained.X, dtype=np.float64)
    kernel = lambda rows, nsamples, seed: _kernel_shap(adata, forest, X[rows], own[rows],  # noqa: E731
                                                       np.asarray(background.X, dtype=np.float64), nsamples, seed)
    everyone = np.arange(len(X))
    (values, kernel_s), (again, _) = kernel(everyone, args.nsamples, 1), kernel(everyone, args.nsamples, 2)
    few = everyone[: args.converged_cells]
    converged, converged_s = kernel(few, args.converged_nsamples, 3)
    print(f"  shap KernelExplainer on genes, nsamples={args.nsamples}: {kernel_s:8.2f} s ({args.cells} cells); "
          f"nsamples={args.converged_nsamples}: {converged_s:.2f} s ({len(few)} cells)")
    print(f"  KernelExplainer against itself (nsamples={args.nsamples}, two seeds): Pearson r {_r(values, again):.3f}; "
          f"against nsamples={args.converged_nsamples}: {_r(values[few], converged):.3f}")
    for mode, (genes, seconds, _) in ours.items():
        print(f"  {mode:<20s} {kernel_s / seconds:7.1f}× faster than KernelExplainer at nsamples={args.nsamples} "
              f"({converged_s / len(few) / (seconds / len(X)):.0f}× at {args.converged_nsamples}); "
              f"Pearson r {_r(genes, values):.3f} (nsamples={args.nsamples}), "
              f"{_r(genes[few], converged):.3f} (nsamples={args.converged_nsamples}); "
              f"top-10 overlap {_top_overlap(genes[few], converged):.2f}; "
              f"max |Δ| {np.abs(genes[few] - converged).max():.2e} (max |KernelSHAP| {np.abs(converged).max():.2e})")


def _r(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _top_overlap(a, b, k: int = 10) -> float:
    return float(np.mean([len(set(np.argsort(-a[i])[:k]) & set(np.argsort(-b[i])[:k])) / k for i in range(len(a))]))


def _kernel_shap(adata, forest, X, own, B, nsamples: int, seed: int):
    """shap's KernelExplainer on genes through the PCA toward each cell's own class: ``(values, seconds)``."""
    import shap

    L = adata.varm["PCs"].astype(np.float64)
    mean = np.asarray(adata.X, dtype=np.float64).mean(axis=0)  # the centre of this PCA (sc.pp.pca centres X)
    values = np.zeros_like(X)
    seconds = 0.0
    for i in range(len(X)):

        def f(x, cls=own[i]):
            return forest.predict_proba(((np.asarray(x) - mean) @ L).astype(np.float32))[:, cls]

        np.random.seed(seed)  # noqa: NPY002 - KernelExplainer samples coalitions with the global generator
        out, t = timed(lambda f=f, i=i: shap.KernelExplainer(f, B).shap_values(
            X[i : i + 1], nsamples=nsamples, l1_reg=False, silent=True))
        values[i] = np.asarray(out)[0]
        seconds += t
    return values, seconds


def _engine_runs(cpu, paths, X, own, codes, bg) -> dict:
    """The four engine runs of part 2, as callables."""
    return {
        "plain": lambda: cpu.shap_values(paths, X, own[:, None], background=bg),
        "split": lambda: cpu.split_values(paths, X, own[:, None], background=bg),
        "sums": lambda: (cpu.split_values(paths, X, own[:, None], background=bg),
                         cpu.group_sums(paths, X, own, codes, 10, background=bg)),
        "pairs": lambda: cpu.pair_values(paths, X, own, background=bg),
    }


def part2(args) -> None:
    from sklearn.ensemble import RandomForestClassifier

    import scexplain as sx
    from scexplain.engines import treeshap_cpu as cpu
    from scexplain.models._trees import tree_paths

    data = sx.datasets.pbmc68k_counts()
    X0 = data.obsm["X_pca"].astype(np.float64)
    y0 = data.obs["bulk_labels"]
    codes0 = y0.cat.codes.to_numpy().astype(np.int64)
    rng = np.random.default_rng(1)
    print(f"\nPart 2: cost of the split and the bootstrap sums (engines, interventional, 100 background cells, "
          f"pbmc68k X_pca, 50 dims, {THREADS} threads; best of {args.repeats})")
    print(f"  {'forest':<24s} {'cells':>6s} {'plain s':>8s} {'split':>14s} {'split + sums':>14s} {'pairs':>14s}")
    for depth in (6, None):
        forest = RandomForestClassifier(100, max_depth=depth, random_state=0, n_jobs=THREADS).fit(X0, y0)
        paths = tree_paths(forest)
        bg = paths.prepare_input(X0[rng.choice(len(X0), 100, replace=False)])
        for copies in (1, 10):
            X = paths.prepare_input(np.concatenate([X0 + (rng.normal(scale=0.3, size=X0.shape) if c else 0)
                                                    for c in range(copies)]))
            codes = np.tile(codes0, copies)
            own = codes.copy()  # each cell toward its own label (classes sorted like the categories)
            fns = _engine_runs(cpu, paths, X, own, codes, bg)
            t = _best(fns, args.repeats)
            name = f"max_depth={depth} ({paths.n_paths} paths)"
            print(f"  {name:<24s} {len(X):>6d} {t['plain']:8.3f} " + " ".join(
                f"{t[k]:7.3f} ({t[k] / t['plain']:4.2f}×)" for k in ("split", "sums", "pairs")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=50)
    parser.add_argument("--background", type=int, default=20)
    parser.add_argument("--nsamples", type=int, default=2048)
    parser.add_argument("--converged-cells", type=int, default=10)
    parser.add_argument("--converged-nsamples", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-kernel", action="store_true", help="do not run KernelExplainer")
    parser.add_argument("--part", choices=("1", "2", "both"), default="both")
    args = parser.parse_args()
    if args.part in ("1", "both"):
        part1(args)
    if args.part in ("2", "both"):
        part2(args)


if __name__ == "__main__":
    main()
