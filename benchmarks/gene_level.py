"""The gene-level step of DeepSHAP at many genes: ``tl.deep_shap`` in memory against the float32 GEMM floor.

Setup of issue #12 ("Measured today"): the benchmark MLP ``Linear(2000,128)-BatchNorm1d-ReLU-Dropout-
Linear(128,64)-ReLU-Linear(64,10)`` (``scexplain._demo.benchmark_mlp``, batch-norm statistics set on the data,
eval mode), each cell's own class (``target="label"``), 100 background cells, ``batch_size=512``, 20 000 cells
× 2000 genes, float32, 2 torch threads. Data: negative-binomial counts (per-gene means log-normal, per-cell
library sizes log-normal, dispersion 2; about 75 % zeros, 60–90 % per cell) and the same counts
log-normalised (``normalize_total`` to 10 000, ``log1p``), each as a dense float32 array and as scipy CSR.

The floor: the gene-level step costs ``2·B·K·G`` flop per cell (``B`` background cells, ``K = 128``
first-layer units, ``G`` genes) as dense GEMMs; the floor is that times the cells divided by this machine's
float32 GEMM rate, measured in the same run before each timed run (``torch.mm`` of two 2000 × 2000 float32
matrices, best of ``--gemm-repeats``; the median over runs). Printed per input: the rate, the floor, scexplain's
time (median of ``--repeats`` runs),
cells/s and the multiple of the floor (and, for the best run, its time against the floor from the rate measured
just before it). With ``--options plain,split,sums`` it also times ``deeplift_shap`` (the engine, batch by batch as
``tl.deep_shap`` calls it) with the presence/absence split and with the per-(group, background cell) sums, each
batch run with every option back to back, and prints the median per-batch ratios to plain.

Run: ``python benchmarks/gene_level.py`` (``--cells``, ``--genes``, ``--repeats``, ``--inputs``, ...).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from _common import gemm_rate


def make_counts(n_cells: int, n_genes: int, seed: int = 0) -> np.ndarray:
    """Negative-binomial counts (float32): log-normal gene means and library sizes, dispersion 2."""
    rng = np.random.default_rng(seed)
    gene_mean = rng.lognormal(mean=-1.8, sigma=1.5, size=n_genes)
    library = rng.lognormal(mean=0.0, sigma=0.6, size=n_cells)
    theta = 2.0
    out = np.empty((n_cells, n_genes), dtype=np.float32)
    for i0 in range(0, n_cells, 5000):  # in blocks: the float64 means of all cells would take 8 bytes a value
        mu = library[i0 : i0 + 5000, None] * gene_mean[None, :]
        out[i0 : i0 + 5000] = rng.negative_binomial(theta, theta / (theta + mu))
    return out


def lognormalise(counts: np.ndarray) -> np.ndarray:
    """``log1p`` of counts scaled to 10 000 per cell (scanpy's ``normalize_total`` + ``log1p``), float32."""
    total = counts.sum(1, keepdims=True)
    return np.log1p(counts * (1e4 / np.maximum(total, 1.0))).astype(np.float32)


def make_model(n_genes: int, n_classes: int, X: np.ndarray, seed: int = 0):
    """The benchmark MLP with batch-norm statistics taken from ``X`` (one pass in train mode), in eval mode."""
    import torch

    from scexplain._demo import benchmark_mlp

    model = benchmark_mlp(n_genes, n_classes, seed=seed)
    model.train()
    with torch.no_grad():
        model[1].momentum = None  # cumulative average over the batches
        for i0 in range(0, min(len(X), 4096), 512):
            model(torch.from_numpy(X[i0 : i0 + 512]))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def make_adata(X, labels: np.ndarray, sparse_input: bool):
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    obs = pd.DataFrame({"label": pd.Categorical([f"type{k}" for k in labels],
                                                categories=[f"type{k}" for k in range(labels.max() + 1)])})
    obs.index = [f"c{i}" for i in range(len(labels))]
    matrix = sparse.csr_matrix(X) if sparse_input else X
    adata = ad.AnnData(matrix, obs=obs)
    adata.var_names = [f"g{j}" for j in range(X.shape[1])]
    return adata


def time_tl(adata, model, *, n_background: int, batch_size: int) -> float:
    """Seconds of one in-memory ``tl.deep_shap`` call (own class, ``groupby="label"``)."""
    import scexplain as sx

    t0 = time.perf_counter()
    sx.tl.deep_shap(adata, model, groupby="label", target="label", n_background=n_background, batch_size=batch_size,
                    progress=False)
    return time.perf_counter() - t0


#: the engine's options timed side by side (``--options``)
OPTIONS = {"plain": {}, "split": {"split": True}, "sums": {"sums": True}, "split+sums": {"split": True, "sums": True}}


def time_options(X: np.ndarray, labels: np.ndarray, model, *, n_background: int, batch_size: int,
                 options: list[str], seed: int) -> dict[str, list[float]]:
    """Seconds of ``deeplift_shap`` per batch of cells for each option, the options run back to back per batch.

    Batches as ``tl.deep_shap`` makes them (one background cache for all); each option sees the same batch and
    nearly the same machine state, so per-batch ratios are robust to other load.
    """
    import torch

    from scexplain.engines.deeplift import BackgroundCache, deeplift_shap

    bg = torch.from_numpy(X[np.random.default_rng(seed).choice(len(X), n_background, replace=False)])
    n_groups = int(labels.max()) + 1
    cache = BackgroundCache()
    times: dict[str, list[float]] = {o: [] for o in options}
    for i0 in range(0, len(X), batch_size):
        x = torch.from_numpy(X[i0 : i0 + batch_size])
        own = torch.from_numpy(labels[i0 : i0 + batch_size])
        for o in options:
            option = OPTIONS[o]
            extra = {"groups": own, "n_groups": n_groups} if option.get("sums") else {}
            t0 = time.perf_counter()
            deeplift_shap(lambda v, cov: model(v), x, bg, own[:, None], cache=cache,
                          split=option.get("split", False), **extra)
            times[o].append(time.perf_counter() - t0)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--background", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gemm-repeats", type=int, default=5)
    parser.add_argument("--inputs", default="counts-dense,counts-csr,lognorm-dense,lognorm-csr",
                        help="comma-separated: counts|lognorm - dense|csr ('' for none)")
    parser.add_argument("--options", default="", help="comma-separated engine options to time side by side: "
                        "plain, split, sums, split+sums (on dense input)")
    parser.add_argument("--option-cells", type=int, default=5000, help="cells for --options")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    counts = make_counts(args.cells, args.genes, seed=args.seed)
    labels = np.random.default_rng(args.seed + 1).integers(0, args.classes, size=args.cells)
    zeros = (counts == 0).mean(1)
    print(f"{args.cells} cells × {args.genes} genes, {args.background} background cells, batch_size "
          f"{args.batch_size}, own class of {args.classes}; zeros {zeros.mean():.1%} (per cell "
          f"{np.quantile(zeros, 0.05):.0%}–{np.quantile(zeros, 0.95):.0%}, 5–95 %); torch threads "
          f"{torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}")
    data = {"counts": counts, "lognorm": lognormalise(counts)}
    per_cell = 2.0 * args.background * 128 * args.genes
    inputs = [name for name in args.inputs.split(",") if name]
    if inputs:
        print("tl.deep_shap in memory; GEMM rate measured before each run, floor = 2·B·K·G·cells / median rate")
        print(f"{'input':16s} {'GEMM GFLOP/s':>12s} {'floor (s)':>9s} {'time (s)':>9s} {'cells/s':>8s} "
              f"{'× floor':>8s}   runs (s)")
    for name in inputs:
        kind, layout = name.split("-")
        X = data[kind]
        model = make_model(args.genes, args.classes, X, seed=args.seed)
        adata = make_adata(X, labels, layout == "csr")
        time_tl(adata[:64].copy(), model, n_background=args.background, batch_size=args.batch_size)  # warm-up
        rates, times = [], []
        for _ in range(args.repeats):
            rates.append(gemm_rate(args.gemm_repeats))
            times.append(time_tl(adata, model, n_background=args.background, batch_size=args.batch_size))
        rate, t = float(np.median(rates)), float(np.median(times))
        floor = per_cell * args.cells / rate
        best = min(t_ * r_ for t_, r_ in zip(times, rates, strict=True)) / (per_cell * args.cells)
        print(f"{name:16s} {rate / 1e9:12.1f} {floor:9.2f} {t:9.2f} {args.cells / t:8.0f} {t / floor:8.2f}   "
              + " ".join(f"{v:.2f}" for v in times) + f"   (best run: {best:.2f}× its own floor)")
    options = [o for o in args.options.split(",") if o]
    if options:
        n = min(args.option_cells, args.cells)
        print(f"\ndeeplift_shap options side by side: dense input, {n} cells in batches of {args.batch_size}, the "
              f"options back to back on each batch ({args.repeats} passes); median seconds per batch, and the "
              "median over batches of the ratio to plain")
        for kind in ("counts", "lognorm"):
            X = data[kind][:n]
            model = make_model(args.genes, args.classes, X, seed=args.seed)
            time_options(X[: 2 * args.batch_size], labels[: 2 * args.batch_size], model,
                         n_background=args.background, batch_size=args.batch_size, options=options,
                         seed=args.seed)  # warm-up (numba compiles its kernels once, cached on disk)
            runs = {o: [] for o in options}
            for _ in range(args.repeats):
                for o, t in time_options(X, labels[:n], model, n_background=args.background,
                                         batch_size=args.batch_size, options=options, seed=args.seed).items():
                    runs[o].extend(t)
            base = np.asarray(runs[options[0]])
            print(f"  {kind:8s} " + "   ".join(
                f"{o} {np.median(r):.3f} s ({np.median(np.asarray(r) / base):.2f}×)" for o, r in runs.items()))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
