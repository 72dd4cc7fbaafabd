"""TreeSHAP side by side: scexplain's engines against shap.TreeExplainer and XGBoost's pred_contribs.

Models (fixed seeds): a random forest (100 trees, max_depth=8) and an XGBoost classifier (100 rounds × 8 classes,
max_depth=8), both on ``make_classification`` data: 20,000 cells × 30 features, 8 classes. One timed run each, after
a warm-up call that compiles the Numba kernels; 2 threads everywhere. Prints times, ratios and max abs differences.

    python benchmarks/tree_shap.py [--n-cells 20000] [--shap-rows N]

``--shap-rows N`` times shap on the first N cells only and scales linearly (said in the printout).
"""

from __future__ import annotations

import argparse
import os

THREADS = 2
os.environ.setdefault("NUMBA_NUM_THREADS", str(THREADS))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402

from _common import timed  # noqa: E402


def _data(n_cells: int):
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=n_cells, n_features=30, n_informative=20, n_redundant=5, n_classes=8, n_clusters_per_class=1,
        random_state=0,
    )  # fmt: skip
    return X.astype(np.float64), y


def _shap_values(explainer, X, shap_rows: int | None):
    """shap's values (cells × features × outputs) and its time, scaled from ``shap_rows`` cells when given."""
    rows = X if shap_rows is None else X[:shap_rows]
    values, seconds = timed(lambda: np.asarray(explainer.shap_values(rows, check_additivity=False)))
    if shap_rows is not None:
        seconds *= len(X) / len(rows)
    return values, seconds


def _ours(paths, X, outputs, engine):
    from scexplain.engines import treeshap_cpu, treeshap_gpu

    if engine == "cpu":
        return timed(lambda: treeshap_cpu.shap_values(paths, paths.prepare_input(X), outputs))
    cupy = treeshap_gpu.get_cupy()
    treeshap_gpu.shap_values(paths, paths.prepare_input(X[:64]), outputs[:64], xp=cupy)  # warm-up
    return timed(lambda: treeshap_gpu.shap_values(paths, paths.prepare_input(X), outputs, xp=cupy))


def _report(label, seconds, reference=None):
    ratio = "" if reference is None else f"   ({reference / seconds:6.1f}× faster than shap)"
    print(f"  {label:<44s} {seconds:8.2f} s{ratio}")


def bench_forest(X, y, shap_rows, engines):
    import shap
    from sklearn.ensemble import RandomForestClassifier

    from scexplain.engines import treeshap_cpu
    from scexplain.models._trees import tree_paths

    model, fit_s = timed(lambda: RandomForestClassifier(100, max_depth=8, random_state=0, n_jobs=THREADS).fit(X, y))
    paths, build_s = timed(lambda: tree_paths(model))
    print(f"\nRandomForestClassifier(100 trees, max_depth=8): {paths.n_paths} paths, "
          f"{paths.path_length.mean():.1f} unique features per path (fit {fit_s:.1f} s, paths {build_s:.2f} s)")
    n, k = X.shape[0], paths.n_outputs
    treeshap_cpu.shap_values(paths, paths.prepare_input(X[:50]), np.zeros((50, 1), dtype=np.int64))  # compile
    expected, shap_s = _shap_values(shap.TreeExplainer(model), X, shap_rows)
    scaled = "" if shap_rows is None else f", timed on {shap_rows} cells and scaled"
    _report(f"shap.TreeExplainer, all {k} classes{scaled}", shap_s)
    all_outputs = np.tile(np.arange(k), (n, 1))
    own = y[:, None].astype(np.int64)
    for engine in engines:
        ours_all, all_s = _ours(paths, X, all_outputs, engine)
        _report(f"scexplain {engine}, all {k} classes", all_s, shap_s)
        ours_own, own_s = _ours(paths, X, own, engine)
        _report(f"scexplain {engine}, each cell's own class", own_s, shap_s)
        m = len(expected)
        diff_all = np.abs(ours_all[:m].transpose(0, 2, 1) - expected).max()
        diff_own = np.abs(ours_own[:m, 0] - expected[np.arange(m), :, y[:m]]).max()
        print(f"  max |scexplain {engine} − shap|: {diff_all:.2e} (all classes), {diff_own:.2e} (own class)")


def bench_xgboost(X, y, shap_rows, engines):
    import shap
    import xgboost as xgb

    from scexplain.engines import treeshap_cpu
    from scexplain.models._trees import tree_paths

    model, fit_s = timed(
        lambda: xgb.XGBClassifier(n_estimators=100, max_depth=8, n_jobs=THREADS, random_state=0).fit(X, y)
    )
    paths, build_s = timed(lambda: tree_paths(model))
    print(f"\nXGBClassifier(100 rounds × 8 classes, max_depth=8): {paths.n_trees} trees, {paths.n_paths} paths "
          f"(fit {fit_s:.1f} s, paths {build_s:.2f} s)")
    n, k = X.shape[0], paths.n_outputs
    booster = model.get_booster()
    booster.set_param({"nthread": THREADS})
    dmatrix = xgb.DMatrix(X)
    contribs, native_s = timed(lambda: booster.predict(dmatrix, pred_contribs=True))
    _report("xgboost pred_contribs (native C++, float32)", native_s)
    expected, shap_s = _shap_values(shap.TreeExplainer(model), X, shap_rows)
    _report("shap.TreeExplainer (calls pred_contribs)", shap_s)
    treeshap_cpu.shap_values(paths, paths.prepare_input(X[:50]), np.zeros((50, 1), dtype=np.int64))
    for engine in engines:
        ours_all, all_s = _ours(paths, X, np.tile(np.arange(k), (n, 1)), engine)
        _report(f"scexplain {engine}, all {k} classes", all_s, shap_s)
        print(f"  {'':<44s} ({native_s / all_s:6.1f}× pred_contribs' speed)")
        _, own_s = _ours(paths, X, y[:, None].astype(np.int64), engine)
        _report(f"scexplain {engine}, each cell's own class", own_s, shap_s)
        m = len(expected)
        print(f"  max |scexplain {engine} − pred_contribs|: "
              f"{np.abs(ours_all.transpose(0, 2, 1) - contribs[:, :, :-1].transpose(0, 2, 1)).max():.2e}, "
              f"− shap: {np.abs(ours_all[:m].transpose(0, 2, 1) - expected).max():.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=20_000)
    parser.add_argument("--shap-rows", type=int, default=None, help="time shap on this many cells and scale")
    parser.add_argument("--skip-xgboost", action="store_true")
    args = parser.parse_args()
    import numba

    from scexplain.engines.treeshap_gpu import cuda_available

    numba.set_num_threads(THREADS)
    engines = ["cpu", "cuda"] if cuda_available() else ["cpu"]
    X, y = _data(args.n_cells)
    print(f"TreeSHAP benchmark: {X.shape[0]} cells × {X.shape[1]} features, 8 classes, {THREADS} threads, "
          f"engines: {', '.join(engines)}")
    bench_forest(X, y, args.shap_rows, engines)
    if not args.skip_xgboost:
        bench_xgboost(X, y, args.shap_rows, engines)


if __name__ == "__main__":
    main()
