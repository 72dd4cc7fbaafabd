"""Linear models on genes: scexplain's DeepSHAP engine vs shap.LinearExplainer (interventional), same cells and background.

Two models on scanpy's pbmc68k_reduced ``.raw.X`` (log1p-normalised, 700 cells × 765 genes, ``bulk_labels``, 10
classes), trained seeded:

- ``celltypist``: ``celltypist.train(..., use_SGD=True)``: CellTypist's scaling, clip at 10 and SGD logistic
  regression; explained by scexplain straight from the ``celltypist.models.Model``; shap gets the data scaled and
  clipped as CellTypist does it (``min((x − mean) / sd, 10)``, computed in the timed call) and ``(coef_, intercept_)``;
- ``logreg``: ``Pipeline(StandardScaler(), LogisticRegression())``; shap gets ``scaler.transform(x)``.

Each explains ``--cells`` cells against ``--background`` background cells (distinct, seeded draws) toward all 10
classes, ``torch.set_num_threads(2)``:

- scexplain: ``engines.deeplift.deeplift_shap`` on the model's adapter (``scexplain.models.adapt``), float32 and
  float64 (what ``tl.deep_shap(..., target="all", dtype=...)`` runs per chunk of cells); and the whole
  ``tl.deep_shap(adata, model, groupby="bulk_labels", use_raw=True, background=...)`` call with its default
  ``target="label"`` (one class per cell, float32, storage included): what a user runs, not the same work as
  shap's (which explains all classes);
- ``shap.LinearExplainer((coef, intercept), shap.maskers.Independent(background, max_samples=B)).shap_values(x)``
  (interventional, every background row): the closed form ``coef · (x − mean_b b)`` in the scaled space.

Times: wall clock and CPU time of the process, the best of ``--repeats`` runs after a warm-up, for both. Also
printed: the largest absolute difference to shap (exactness) and scexplain's additivity error
``‖Σ_g φ − (f(x) − mean_b f(b))‖ / ‖f(x) − mean_b f(b)‖`` (per cell, max).

Run: ``python benchmarks/linear.py`` (``--cells``, ``--background``, ``--repeats``, ``--seed``, ``--models``).
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np


def _best(fn, repeats: int):
    """``(best wall seconds, best CPU seconds, result of the last run)`` over ``repeats`` calls."""
    best, out = np.array([np.inf, np.inf]), None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        best = np.minimum(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best, out


def load():
    """``(adata, X float32 dense)``: pbmc68k_reduced and its log-normalised ``.raw.X``."""
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    return adata, adata.raw.X.toarray().astype(np.float32)


def celltypist_model(adata, seed: int):
    """``(model, preprocess, coef, intercept)``: a CellTypist model and CellTypist's scaling + clip, written out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import celltypist
    logging.getLogger("celltypist.logger").setLevel(logging.ERROR)
    logging.getLogger("scexplain").setLevel(logging.WARNING)  # celltypist's import turns on INFO logging
    model = celltypist.train(adata, labels="bulk_labels", use_SGD=True, check_expression=False, random_state=seed,
                             date="")
    mean, sd = model.scaler.mean_, model.scaler.scale_

    def preprocess(x):
        return np.minimum((np.asarray(x, dtype=np.float64) - mean) / sd, 10)

    return model, preprocess, model.classifier.coef_, model.classifier.intercept_


def logreg_model(adata, X, seed: int):
    """``(pipeline, preprocess, coef, intercept)``: StandardScaler + LogisticRegression on the log-normalised data."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = adata.obs["bulk_labels"].astype(str).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, random_state=seed)).fit(
            X.astype(np.float64), y)

    def preprocess(x):
        return model[0].transform(np.asarray(x, dtype=np.float64))

    return model, preprocess, model[-1].coef_, model[-1].intercept_


def ours(adapter, x, bg, dtype):
    """``(n × C × G attributions, f(x), mean_b f(b))`` (float64 numpy) from scexplain's engine."""
    import torch

    from scexplain.engines.deeplift import deeplift_shap

    classes = torch.arange(len(adapter.output_names)).repeat(x.shape[0], 1)
    xt, bt = torch.as_tensor(x, dtype=dtype), torch.as_tensor(bg, dtype=dtype)
    with adapter.explaining(torch.device("cpu"), dtype):
        phi, fx, ref = deeplift_shap(adapter.forward, xt, bt, classes)
    return phi.double().numpy(), fx.double().numpy(), ref.double().numpy()


def ours_tl(adata, model, bg):
    """The whole ``tl.deep_shap`` call (default target: each cell's own label), on a copy."""
    import scexplain as sx

    return sx.tl.deep_shap(adata, model, groupby="bulk_labels", use_raw=True, background=bg, copy=True,
                           progress=False)


def shap_linear(preprocess, coef, intercept, x, bg):
    """n × C × G from shap.LinearExplainer (interventional) in the model's scaled space."""
    import shap

    background = preprocess(bg)
    masker = shap.maskers.Independent(background, max_samples=len(background))  # interventional, every row
    explainer = shap.LinearExplainer((coef, intercept), masker)
    values = np.asarray(explainer.shap_values(preprocess(x)))  # n × G × C
    return values.transpose(0, 2, 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=600)
    parser.add_argument("--background", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=["celltypist", "logreg"], choices=["celltypist", "logreg"])
    args = parser.parse_args(argv)

    import torch

    from scexplain.models import adapt

    torch.set_num_threads(2)
    adata, X = load()
    order = np.random.default_rng(args.seed).permutation(X.shape[0])
    cells = np.sort(order[: args.cells])
    background = np.sort(order[args.cells : args.cells + args.background])
    if len(background) < args.background:
        raise SystemExit(f"--cells + --background must be at most {X.shape[0]}")
    x, bg = X[cells], X[background]
    print(f"pbmc68k_reduced .raw: {len(cells)} cells × {len(background)} background cells × {X.shape[1]} genes × "
          f"10 classes, {torch.get_num_threads()} threads; best of {args.repeats}")
    print(f"{'model':11s} {'method':26s} {'wall (s)':>9s} {'CPU (s)':>9s}  {'shap/ours wall':>14s} "
          f"{'CPU':>6s}  {'max |Δ| vs shap':>15s} {'additivity':>10s}")
    for name in args.models:
        model, preprocess, coef, intercept = (celltypist_model(adata, args.seed) if name == "celltypist"
                                              else logreg_model(adata, X, args.seed))
        adapter = adapt(model)
        shap_linear(preprocess, coef, intercept, x[:8], bg)  # warm-up
        t_shap, sv = _best(lambda: shap_linear(preprocess, coef, intercept, x, bg), args.repeats)  # noqa: B023
        scale = float(np.abs(sv).max())
        print(f"{name:11s} {'shap.LinearExplainer':26s} {t_shap[0]:9.3f} {t_shap[1]:9.3f}  {'1.0×':>14s} {'1.0×':>6s}"
              f"  {'—':>15s} {'—':>10s}   (max |φ| {scale:.1f})")
        for dtype in (torch.float32, torch.float64):
            ours(adapter, x[:8], bg, dtype)  # warm-up
            t, (phi, fx, ref) = _best(lambda: ours(adapter, x, bg, dtype), args.repeats)  # noqa: B023
            delta = fx - ref
            rel = np.linalg.norm(phi.sum(-1) - delta, axis=1) / np.linalg.norm(delta, axis=1)
            label = f"scexplain deeplift {str(dtype).split('.')[-1]}"
            print(f"{name:11s} {label:26s} {t[0]:9.3f} {t[1]:9.3f}  {t_shap[0] / t[0]:13.2f}× "
                  f"{t_shap[1] / t[1]:5.2f}×  {np.abs(phi - sv).max():15.2e} {rel.max():10.1e}")
        sub = adata[cells].copy()
        ours_tl(sub[:8].copy(), model, bg)  # warm-up
        t, out = _best(lambda: ours_tl(sub, model, bg), args.repeats)  # noqa: B023
        rel = out.uns["deep_shap"]["additivity"]["max_relative_error"]
        print(f"{name:11s} {'tl.deep_shap label f32':26s} {t[0]:9.3f} {t[1]:9.3f}  {t_shap[0] / t[0]:13.2f}× "
              f"{t_shap[1] / t[1]:5.2f}×  {'(own class)':>15s} {rel:10.1e}")


if __name__ == "__main__":
    main()
