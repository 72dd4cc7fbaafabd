"""Atlas scale: DeepSHAP on generated atlases of 100k, 300k and 1M cells × 2000 genes stored as zarr on disk.

For each size it prints, side by side in one run:

- the CLI (``scexplain deep-shap``, zarr in → zarr out, read lazily, one pass, streamed output): wall time, cells/s,
  peak RSS of the CLI process, and the multiple of the GEMM floor;
- the in-memory path (the matrix loaded into memory, ``tl.deep_shap`` only) where it fits;
- ``tl.deep_shap`` on the lazily read zarr in one process with 2 torch threads against a
  ``distributed.LocalCluster(n_workers=2, threads_per_worker=1)``.

The floor: the gene-level step costs 2·B·K·G flop per cell (B background cells, K = 128 first-layer units, G genes),
divided by this machine's float32 GEMM rate (``torch.mm`` of two 2000 × 2000 matrices, best of 10), measured at the
start of the run. Setup of the issue: MLP 2000 → 128 → 64 → 10 (``scexplain._demo.benchmark_mlp``, trained briefly),
each cell toward its own class, 100 background cells, ``batch_size=512``.

    python benchmarks/scale.py                       # 100k, 300k, 1M (about 40 minutes on 2 cores, ~10 GB of disk)
    python benchmarks/scale.py --sizes 20000         # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import gemm_rate

N_GENES = 2000
N_TYPES = 10
N_BACKGROUND = 100
K = 128
BATCH = 512
CHUNK_ROWS = 10_000


def floor_seconds(n_cells: int, rate: float, n_genes: int = N_GENES) -> float:
    """The gene-level step's flops for ``n_cells`` cells at the measured GEMM rate."""
    return 2.0 * N_BACKGROUND * K * n_genes * n_cells / rate


def _block(rng: np.random.Generator, n: int, n_genes: int, types: np.ndarray) -> np.ndarray:
    """Log-normalised counts of ``n`` cells (about 75 % zeros), with marker genes per cell type."""
    base = rng.gamma(0.3, 1.0, size=n_genes).astype(np.float32)
    rate = np.repeat(base[None], n, axis=0)
    markers = (types[:, None] * 20 + np.arange(20)[None]) % n_genes
    np.put_along_axis(rate, markers, np.take_along_axis(rate, markers, 1) + 4.0, axis=1)
    counts = rng.poisson(rate * rng.gamma(4.0, 0.25, size=(n, 1))).astype(np.float32)
    return np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)


def make_atlas(path: Path, n_cells: int, *, seed: int = 0, n_genes: int = N_GENES) -> Path:
    """Write an atlas to ``path`` (zarr, dense X in chunks of 10 000 cells), block by block; reused if present."""
    import anndata as ad
    import pandas as pd
    import zarr

    if (path / ".done").exists():
        return path
    rng = np.random.default_rng(seed)
    types = rng.integers(0, N_TYPES, size=n_cells)
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type {t}/{t % 3}" for t in types])},
                       index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)])
    ad.AnnData(obs=obs, var=var).write_zarr(path)
    group = zarr.open_group(str(path), mode="a")
    X = group.create_array("X", shape=(n_cells, n_genes), chunks=(CHUNK_ROWS, n_genes), dtype=np.float32,
                           overwrite=True)
    X.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    for start in range(0, n_cells, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, n_cells)
        X[start:stop] = _block(rng, stop - start, n_genes, types[start:stop])
    zarr.consolidate_metadata(str(path))
    (path / ".done").write_text("ok")
    return path


def train_model(workdir: Path):
    """The benchmark MLP trained for a few epochs on 20 000 generated cells, saved as a torch.export program."""
    import torch

    from scexplain._demo import train_mlp

    model_path = workdir / "mlp.pt2"
    if model_path.exists():
        return model_path
    rng = np.random.default_rng(1)
    types = rng.integers(0, N_TYPES, size=20_000)
    X = _block(rng, 20_000, N_GENES, types)
    model = train_mlp(X, types, n_classes=N_TYPES, epochs=3, seed=0)
    program = torch.export.export(model, (torch.zeros(4, N_GENES),),
                                  dynamic_shapes=({0: torch.export.Dim("cells")},))
    torch.export.save(program, model_path)
    return model_path


def _run(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run ``cmd``; ``(wall seconds, peak RSS of the process in GiB, stdout)``."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 2**20, out


#: what the in-process runs do (in a fresh interpreter each, so that peak RSS is theirs)
_WORKER = r"""
import json, sys, time
import anndata as ad, numpy as np, torch
import scexplain as sx
from anndata.experimental import read_elem_lazy
import zarr
path, mode, model_path = sys.argv[1], sys.argv[2], sys.argv[3]
model = torch.export.load(model_path)
group = zarr.open_group(path, mode="r")
adata = ad.AnnData(obs=ad.io.read_elem(group["obs"]), var=ad.io.read_elem(group["var"]))
if mode == "memory":
    adata.X = group["X"][...]
else:
    adata.X = read_elem_lazy(group["X"])
client = None
if mode == "cluster":
    from distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=40)
    client = Client(cluster)
t = time.perf_counter()
sx.tl.deep_shap(adata, model, groupby="cell_type", n_background=100, batch_size=512, progress=False)
seconds = time.perf_counter() - t
err = adata.uns["deep_shap"]["additivity"]["max_relative_error"]
print(json.dumps({"seconds": seconds, "max_relative_error": err}))
if client is not None:
    client.close(); cluster.close()
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/scexplain-scale"))
    parser.add_argument("--in-memory-max", type=int, default=100_000, help="largest atlas also run in memory")
    parser.add_argument("--cluster-max", type=int, default=300_000,
                        help="largest atlas also run lazily in one process and on a cluster")
    parser.add_argument("--modes", default="cli,memory,lazy,cluster", help="which runs (comma-separated)")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(2)
    rate = gemm_rate(repeats=10)
    print(f"float32 GEMM rate (torch.mm 2000×2000, best of 10): {rate / 1e9:.0f} GFLOP/s at the start; "
          f"floor per cell 2·B·K·G = {2 * N_BACKGROUND * K * N_GENES / 1e6:.1f} MFLOP; the rate is measured again "
          "before each run and its floor printed")
    model = train_model(args.workdir)
    rows = []
    for n in args.sizes:
        atlas = make_atlas(args.workdir / f"atlas_{n}.zarr", n)
        out = args.workdir / f"out_{n}.zarr"
        modes = args.modes.split(",")
        print(f"\n{n:>9,} cells × {N_GENES} genes", flush=True)
        row = {"cells": n}
        if "cli" in modes:
            rate = gemm_rate(repeats=10)
            wall, rss, _ = _run([sys.executable, "-m", "scexplain.cli", "deep-shap", "--input", str(atlas), "--output",
                                 str(out), "--model", str(model), "--groupby", "cell_type", "--n-background",
                                 str(N_BACKGROUND), "--batch-size", str(BATCH), "--threads", "2"])
            floor = floor_seconds(n, rate)
            row.update({"cli_gflops": rate / 1e9, "cli_floor_s": floor, "cli_s": wall, "cli_rss_gib": rss,
                        "cli_floor_x": wall / floor})
            print(f"  CLI (zarr → zarr)        {wall:8.1f} s  {n / wall:8.0f} cells/s  {wall / floor:.2f}× floor "
                  f"({floor:.1f} s at {rate / 1e9:.0f} GFLOP/s)  peak RSS {rss:.2f} GiB", flush=True)
        for mode, limit in (("memory", args.in_memory_max), ("lazy", args.cluster_max),
                            ("cluster", args.cluster_max)):
            if n > limit or mode not in modes:
                continue
            rate = gemm_rate(repeats=10)
            _, rss_mode, text = _run([sys.executable, "-c", _WORKER, str(atlas), mode, str(model)],
                                     env={"OMP_NUM_THREADS": "2"})
            res = json.loads(text.strip().splitlines()[-1])
            row[f"{mode}_s"] = res["seconds"]
            row[f"{mode}_floor_s"] = floor_seconds(n, rate)
            row[f"{mode}_rss_gib"] = rss_mode
            row[f"{mode}_err"] = res["max_relative_error"]
            print(f"  {LABELS[mode]:<24} {res['seconds']:8.1f} s  {n / res['seconds']:8.0f} cells/s  "
                  f"{res['seconds'] / floor_seconds(n, rate):.2f}× floor  peak RSS {rss_mode:.2f} GiB  "
                  f"additivity {res['max_relative_error']:.1e}", flush=True)
        if "cluster_s" in row and "lazy_s" in row:
            print(f"  LocalCluster / one 2-thread process: {row['cluster_s'] / row['lazy_s']:.2f}×", flush=True)
        rows.append(row)
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    if sum("cli_s" in r for r in rows) > 1:
        rows = [r for r in rows if "cli_s" in r]
        per_cell = [r["cli_s"] / r["cells"] for r in rows]
        print(f"linearity: CLI seconds per 1000 cells {', '.join(f'{1e3 * p:.3f}' for p in per_cell)} "
              f"(largest / smallest = {per_cell[-1] / per_cell[0]:.2f})")
    print(json.dumps(rows))


LABELS = {"memory": "tl, in memory", "lazy": "tl, lazy zarr, 1 proc", "cluster": "tl, LocalCluster 2×1"}


if __name__ == "__main__":
    main()
