"""What the presence/absence split and the bootstrap cost in ``tl.deep_shap``, side by side in one run.

The setup of ``benchmarks/gene_level.py``: the benchmark MLP ``2000 → 128 → 64 → 10`` (batch-norm statistics from
the data), negative-binomial counts log-normalised (about 76 % zeros), each cell toward its own class, 100
background cells, ``batch_size=512``, float32, 2 torch threads. Timed, interleaved on the same machine state
(median of ``--repeats``):

- ``split=False``: attributions and group tables only;
- ``split=True`` (the default): plus the presence part of every attribution and the presence tables;
- ``split=True, n_bootstrap=100``: plus Poisson cell weights and multinomial background weights, intervals and rank
  stability per gene and group (no rerun of the model: the per-(group, background cell) sums are reweighted).

Printed: seconds and the ratio to ``split=False``; for the bootstrap run, the width of the intervals.

Run: ``python benchmarks/uncertainty.py`` (``--cells``, ``--genes``, ``--repeats``, ``--bootstrap``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gene_level import lognormalise, make_adata, make_counts, make_model

RUNS = {
    "split=False": {"split": False},
    "split=True": {"split": True},
    "split=True, n_bootstrap": {"split": True, "n_bootstrap": None},  # filled from --bootstrap
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=5000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--background", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--bootstrap", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    import scexplain as sx

    torch.set_num_threads(2)
    X = lognormalise(make_counts(args.cells, args.genes, seed=args.seed))
    labels = np.random.default_rng(args.seed + 1).integers(0, args.classes, size=args.cells)
    model = make_model(args.genes, args.classes, X, seed=args.seed)
    RUNS["split=True, n_bootstrap"]["n_bootstrap"] = args.bootstrap
    print(f"{args.cells} cells × {args.genes} genes (zeros {(X == 0).mean():.1%}), {args.background} background "
          f"cells, batch_size {args.batch_size}, own class of {args.classes}; torch threads 2; "
          f"load average {os.getloadavg()[0]:.2f}")

    def run(options: dict):
        adata = make_adata(X, labels, sparse_input=False)
        t0 = time.perf_counter()
        sx.tl.deep_shap(adata, model, groupby="label", n_background=args.background, batch_size=args.batch_size,
                        progress=False, **options)
        return time.perf_counter() - t0, adata

    run({"split": True, "n_bootstrap": 4})  # warm-up (numba compiles its kernels once, cached on disk)
    times: dict[str, list[float]] = {name: [] for name in RUNS}
    last = {}
    for _ in range(args.repeats):
        for name, options in RUNS.items():
            seconds, last[name] = run(options)
            times[name].append(seconds)
    base = float(np.median(times["split=False"]))
    print(f"{'tl.deep_shap':28s} {'median (s)':>10s} {'× split=False':>14s}   runs (s)")
    for name, t in times.items():
        label = name.replace("n_bootstrap", f"n_bootstrap={args.bootstrap}")
        print(f"{label:28s} {np.median(t):10.2f} {np.median(t) / base:14.2f}   " + " ".join(f"{v:.2f}" for v in t))
    varm = last["split=True, n_bootstrap"].varm
    table = np.asarray(varm["deep_shap"], dtype=np.float64)  # genes × groups
    width = np.asarray(varm["deep_shap_ci_high"]) - np.asarray(varm["deep_shap_ci_low"])
    top = np.argsort(-table, axis=0)[:20]  # each group's top 20 genes, as the rankings order them
    pick = lambda a: np.take_along_axis(np.asarray(a, dtype=np.float64), top, axis=0)  # noqa: E731
    print(f"bootstrap ({args.bootstrap} replicates, 95 %), each group's top 20 genes: median interval width / |value| "
          f"{np.median(pick(width) / np.abs(pick(table))):.3f}; median rank stability "
          f"{np.median(pick(varm['deep_shap_rank_stability'])):.2f}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
