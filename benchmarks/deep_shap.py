"""DeepSHAP engine: scexplain's ``deeplift_shap`` vs shap.DeepExplainer and captum.DeepLiftShap, same model and cells.

The deep_shap benchmark MLP (``Linear(765,128)-BatchNorm1d-ReLU-Dropout-Linear(128,64)-ReLU-Linear(64,10)``,
trained seeded on scanpy's pbmc68k_reduced ``.raw.X``, ``bulk_labels``, eval mode) explains ``--cells`` cells
against ``--background`` background cells (distinct, seeded draws), toward all 10 classes, float32,
``torch.set_num_threads(2)``:

- scexplain: ``engines.deeplift.deeplift_shap`` (all pairs and classes batched, first layer on distinct rows);
- ``shap.DeepExplainer(model, background).shap_values(x)`` (all outputs, no additivity check);
- ``captum.attr.DeepLiftShap(model).attribute(x, baselines=background, target=c)``, one call per class.

Times: wall clock and CPU time of the process (less sensitive to other load on the machine); scexplain's is the best
of ``--repeats`` runs after a small warm-up, shap's and captum's one run each (they take far longer). Also printed:
the largest absolute differences between the three, and scexplain's additivity error
``‖Σ_g φ − (f(x) − mean_b f(b))‖ / ‖f(x) − mean_b f(b)‖`` (per cell; max and overall).

Run: ``python benchmarks/deep_shap.py`` (``--cells``, ``--background``, ``--repeats``, ``--seed``).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from _common import load_pbmc_benchmark, pick_cells, train_benchmark_mlp


def _timed(fn):
    """``(wall seconds, CPU seconds of this process, result)`` of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def ours(model, x, bg, n_classes: int):
    """``(n × C × G attributions, f(x), mean_b f(b))`` from scexplain's engine."""
    import torch

    from scexplain.engines.deeplift import deeplift_shap

    classes = torch.arange(n_classes).repeat(x.shape[0], 1)
    return deeplift_shap(lambda v, cov=None: model(v), x, bg, classes)


def shap_deep(model, x, bg):
    """n × C × G from shap.DeepExplainer (it returns n × G × C)."""
    import shap

    values = shap.DeepExplainer(model, bg).shap_values(x, check_additivity=False)
    return np.asarray(values).transpose(0, 2, 1)


def captum_deep(model, x, bg, n_classes: int):
    """n × C × G from captum's DeepLiftShap, one call per class."""
    import torch
    from captum.attr import DeepLiftShap

    explainer = DeepLiftShap(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Setting forward, backward hooks and attributes on non-linear ..."
        out = [explainer.attribute(x, baselines=bg, target=c).detach() for c in range(n_classes)]
    return torch.stack(out, dim=1).numpy()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--background", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    X, y, names = load_pbmc_benchmark()
    model = train_benchmark_mlp(X, y, seed=args.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(X.shape[0])
    cells = np.sort(order[: args.cells])
    background = np.sort(order[args.cells : args.cells + args.background])
    if len(background) < args.background:  # more cells than the data set has: draw the background independently
        background = pick_cells(X.shape[0], args.background, args.seed + 1)
    x, bg = torch.from_numpy(X[cells]), torch.from_numpy(X[background])
    n_classes = len(names)
    print(f"pbmc68k_reduced .raw: {x.shape[0]} cells × {bg.shape[0]} background cells × {x.shape[1]} genes × "
          f"{n_classes} classes, float32, {torch.get_num_threads()} threads")

    ours(model, x[:8], bg, n_classes)  # warm-up (allocators, lazy imports), not timed
    best = np.array([np.inf, np.inf])
    for _ in range(args.repeats):
        wall, cpu, (phi, f_x, f_bg) = _timed(lambda: ours(model, x, bg, n_classes))
        best = np.minimum(best, (wall, cpu))
    t_shap_wall, t_shap_cpu, sv = _timed(lambda: shap_deep(model, x, bg))
    t_cap_wall, t_cap_cpu, cap = _timed(lambda: captum_deep(model, x, bg, n_classes))

    phi = phi.double().numpy()
    delta = (f_x - f_bg).double().numpy()
    err = phi.sum(-1) - delta
    per_cell = np.linalg.norm(err, axis=1) / np.linalg.norm(delta, axis=1)
    overall = np.linalg.norm(err) / np.linalg.norm(delta)

    print(f"{'':28s} {'wall (s)':>9s} {'CPU (s)':>9s}   {'speed-up wall':>13s} {'speed-up CPU':>12s}")
    print(f"{'scexplain deeplift_shap':28s} {best[0]:9.3f} {best[1]:9.3f}")
    for name, wall, cpu in (("shap.DeepExplainer", t_shap_wall, t_shap_cpu),
                            ("captum.DeepLiftShap", t_cap_wall, t_cap_cpu)):
        print(f"{name:28s} {wall:9.3f} {cpu:9.3f}   {wall / best[0]:12.1f}× {cpu / best[1]:11.1f}×")
    scale = float(np.abs(sv).max())
    print(f"max |Δ| vs shap   {np.abs(phi - sv).max():.2e}   vs captum {np.abs(phi - cap).max():.2e}   "
          f"shap vs captum {np.abs(sv - cap).max():.2e}   (max |φ| {scale:.2e})")
    print(f"scexplain additivity: max relative error per cell {per_cell.max():.2e}, overall {overall:.2e}")


if __name__ == "__main__":
    main()
