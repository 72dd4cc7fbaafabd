"""engines.treeshap_cpu / treeshap_gpu: exact Shapley values by subset enumeration on small random trees.

The oracles evaluate the value functions on the node tables directly (recursively), independently of the path
representation: path-dependent v(S) = E[f(x) | x_S] under the covers, interventional v(S) = mean_r f(x_S, r_S̄).
The GPU algorithm runs here with NumPy as its array module; the CuPy tests need CUDA.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from scexplain.engines import treeshap_cpu, treeshap_gpu
from scexplain.models._trees import TreePaths, _Builder, _Tree

M, K = 5, 2  # features, outputs


def _random_tree(rng, depth: int) -> _Tree:
    left, right, feat, thr, nan_left, cover, value = [], [], [], [], [], [], []

    def grow(d: int, c: float) -> int:
        i = len(left)
        for lst in (left, right, feat, thr, nan_left, cover):
            lst.append(0)
        value.append(rng.normal(size=K))
        cover[i] = c
        if d == depth or (d > 1 and rng.random() < 0.2):
            left[i] = right[i] = -1
            return i
        feat[i] = int(rng.integers(M))  # few features: repeated splits on a path are common
        thr[i] = float(rng.normal(scale=0.7))
        nan_left[i] = bool(rng.random() < 0.5)
        u = 0.0 if rng.random() < 0.05 else rng.uniform(0.05, 0.95)  # now and then a child without cover
        left[i] = grow(d + 1, c * u)
        right[i] = grow(d + 1, c * (1 - u))
        return i

    grow(0, 100.0)
    return _Tree(
        left=np.asarray(left), right=np.asarray(right), feature=np.asarray(feat), threshold=np.asarray(thr),
        nan_left=np.asarray(nan_left), cover=np.asarray(cover), value=np.asarray(value),
    )  # fmt: skip


def _ensemble(seed: int, n_trees: int = 3, depth: int = 5) -> tuple[list[_Tree], np.ndarray, TreePaths]:
    rng = np.random.default_rng(seed)
    trees = [_random_tree(rng, depth) for _ in range(n_trees)]
    base = rng.normal(size=K)
    b = _Builder(M, K)
    for t in trees:
        b.add(t)
    return trees, base, b.build(base)


def _rows(seed: int, n: int, nan: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(scale=0.8, size=(n, M))
    if nan:
        X[rng.random(X.shape) < 0.15] = np.nan
    return X


def _value(tree: _Tree, x: np.ndarray, known) -> np.ndarray:
    """E[tree(x) | x_known] under the covers (shap's EXPVALUE recursion)."""

    def rec(i: int) -> np.ndarray:
        if tree.left[i] < 0:
            return tree.value[i]
        f, lft, rgt = tree.feature[i], tree.left[i], tree.right[i]
        if f in known:
            go_left = tree.nan_left[i] if np.isnan(x[f]) else x[f] <= tree.threshold[i]
            return rec(lft if go_left else rgt)
        c = tree.cover
        if c[i] == 0:
            return 0.5 * (rec(lft) + rec(rgt))
        return (c[lft] * rec(lft) + c[rgt] * rec(rgt)) / c[i]

    return rec(0)


def _f(trees, base, x):
    return base + sum(_value(t, x, range(M)) for t in trees)


def _games(trees, base, x, bg=None) -> dict[frozenset, np.ndarray]:
    """v(S) for every subset S of the M features."""
    out = {}
    for mask in itertools.product([False, True], repeat=M):
        S = frozenset(np.flatnonzero(mask).tolist())
        if bg is None:
            out[S] = base + sum(_value(t, x, S) for t in trees)
        else:
            hybrids = np.where(np.asarray(mask)[None], x[None], bg)
            out[S] = np.mean([_f(trees, base, h) for h in hybrids], axis=0)
    return out


def _shapley(v) -> np.ndarray:
    phi = np.zeros((M, K))
    for i in range(M):
        for S, val in v.items():
            if i in S:
                continue
            w = math.factorial(len(S)) * math.factorial(M - len(S) - 1) / math.factorial(M)
            phi[i] += w * (v[S | {i}] - val)
    return phi


def _interactions(v, phi) -> np.ndarray:
    """Shapley interaction index (shap's convention: off-diagonal halves, diagonal = main effect)."""
    out = np.zeros((M, M, K))
    for i, j in itertools.permutations(range(M), 2):
        for S, val in v.items():
            if i in S or j in S:
                continue
            w = math.factorial(len(S)) * math.factorial(M - len(S) - 2) / (2 * math.factorial(M - 1))
            out[i, j] += w * (v[S | {i, j}] - v[S | {i}] - v[S | {j}] + val)
    for i in range(M):
        out[i, i] = phi[i] - out[i].sum(axis=0)
    return out


@pytest.fixture(scope="module")
def case():
    trees, base, paths = _ensemble(seed=3)
    X = _rows(4, 6)
    bg = _rows(5, 7)
    oracle_pd = [_games(trees, base, x) for x in X]
    oracle_iv = [_games(trees, base, x, bg) for x in X]
    return trees, base, paths, X, bg, oracle_pd, oracle_iv


ALL = np.tile(np.arange(K), (6, 1))


def test_random_trees_exercise_the_edge_cases(case):
    _, _, paths, *_ = case
    assert paths.max_unique_features < paths.node_left.size  # merged repeated features
    assert (paths.zero_fraction == 0).any()  # a child without cover
    assert (paths.lower >= paths.upper).any()  # an interval only NaN can reach


@pytest.mark.parametrize("table", [None, True, False])
def test_path_dependent_equals_brute_force(case, table):
    trees, base, paths, X, _, oracle, _ = case
    phi = treeshap_cpu.shap_values(paths, X, ALL, table=table)
    expected = np.stack([_shapley(v) for v in oracle]).transpose(0, 2, 1)
    np.testing.assert_allclose(phi, expected, atol=1e-9, rtol=0)
    np.testing.assert_allclose(paths.expected_value(), oracle[0][frozenset()], atol=1e-12)
    fx = treeshap_cpu.predict(paths, X)
    np.testing.assert_allclose(fx, [_f(trees, base, x) for x in X], atol=1e-12)
    np.testing.assert_allclose(phi.sum(-1) + paths.expected_value(), fx, atol=1e-12)


@pytest.mark.parametrize("table", [None, True, False])
def test_interventional_equals_brute_force(case, table):
    _, _, paths, X, bg, _, oracle = case
    phi = treeshap_cpu.shap_values(paths, X, ALL, background=bg, table=table)
    expected = np.stack([_shapley(v) for v in oracle]).transpose(0, 2, 1)
    np.testing.assert_allclose(phi, expected, atol=1e-9, rtol=0)
    np.testing.assert_allclose(treeshap_cpu.expected_value(paths, bg), oracle[0][frozenset()], atol=1e-12)


def test_interactions_equal_brute_force(case):
    _, _, paths, X, _, oracle, _ = case
    inter = treeshap_cpu.interaction_values(paths, X, ALL)
    expected = np.stack([_interactions(v, _shapley(v)) for v in oracle]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(inter, expected, atol=1e-9, rtol=0)
    np.testing.assert_allclose(inter.sum(-1), treeshap_cpu.shap_values(paths, X, ALL), atol=1e-12)


def test_own_output_per_row_equals_all_outputs(case):
    _, _, paths, X, bg, _, _ = case
    own = np.array([0, 1, 1, 0, 1, 0])[:, None]
    full = treeshap_cpu.shap_values(paths, X, ALL, background=bg)
    np.testing.assert_allclose(treeshap_cpu.shap_values(paths, X, own, background=bg)[:, 0],
                               full[np.arange(6), own[:, 0]], atol=1e-14)


def _pair_games(trees, base, x, b) -> dict[frozenset, np.ndarray]:
    """v(S) = f(x_S, b_S̄) of one (row, background row) pair."""
    out = {}
    for mask in itertools.product([False, True], repeat=M):
        out[frozenset(np.flatnonzero(mask).tolist())] = _f(trees, base, np.where(np.asarray(mask), x, b))
    return out


@pytest.fixture(scope="module")
def pair_case():
    """NaN-free rows (the presence rule is then exactly x_j > b_j) with brute-force per-pair Shapley values."""
    trees, base, paths = _ensemble(seed=11, n_trees=3, depth=5)
    X, bg = _rows(12, 8, nan=False), _rows(13, 5, nan=False)
    own = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    pairs = np.stack([[_shapley(_pair_games(trees, base, x, b))[:, own[i]] for b in bg] for i, x in enumerate(X)])
    return paths, X, bg, own, pairs  # pairs: rows × background × features


ENGINES = {
    "cpu": treeshap_cpu,
    "xp": type("NumpyEngine", (), {
        name: staticmethod(lambda *a, _f=name, **k: getattr(treeshap_gpu, _f)(*a, xp=np, memory_budget=400, **k))
        for name in ("split_values", "pair_values", "group_sums")}),
}


@pytest.mark.parametrize("engine", ["cpu", "xp"])
def test_pairs_split_and_group_sums_equal_brute_force_per_pair(pair_case, engine):
    paths, X, bg, own, pairs = pair_case
    eng = ENGINES[engine]
    np.testing.assert_allclose(eng.pair_values(paths, X, own, background=bg), pairs, atol=1e-12, rtol=0)
    # each pair sums to f(x) − f(b) of the row's output
    fx, fb = treeshap_cpu.predict(paths, X), treeshap_cpu.predict(paths, bg)
    np.testing.assert_allclose(pairs.sum(-1), fx[np.arange(8), own][:, None] - fb[:, own].T, atol=1e-12)
    larger = X[:, None, :] > bg[None]  # presence: the pair's term where the row's value is the larger
    for table in ((None, True, False) if engine == "cpu" else (None,)):
        kw = {} if table is None else {"table": table}
        values, presence = eng.split_values(paths, X, own[:, None], background=bg, **kw)
        np.testing.assert_allclose(values[:, 0], pairs.mean(1), atol=1e-12, rtol=0)
        np.testing.assert_allclose(presence[:, 0], (pairs * larger).mean(1), atol=1e-12, rtol=0)
    groups = np.array([2, 0, 2, 2, 0, 1, 0, 2])
    expected = np.stack([pairs[groups == k].sum(0) for k in range(4)])  # group 3 has no rows: zeros
    np.testing.assert_allclose(eng.group_sums(paths, X, own, groups, 4, background=bg), expected, atol=1e-12,
                               rtol=0)


def test_group_sums_of_deep_paths_and_many_groups():
    """Paths too deep for a dense (group, pattern) histogram (n_groups · 2^d > HIST_MAX): the sorted-keys branch."""
    *_, paths = _ensemble(seed=7, n_trees=2, depth=12)
    assert paths.max_unique_features >= 5
    X, bg = _rows(8, 60), _rows(9, 9)
    own = np.arange(60) % K
    n_groups = treeshap_cpu.HIST_MAX  # one more than fits with d ≥ 1
    groups = (np.arange(60) * 7919) % n_groups
    pairs = treeshap_cpu.pair_values(paths, X, own, background=bg)
    S = treeshap_cpu.group_sums(paths, X, own, groups, n_groups, background=bg)
    used = np.unique(groups)
    np.testing.assert_allclose(S[used], np.stack([pairs[groups == k].sum(0) for k in used]), atol=1e-12)
    assert np.abs(np.delete(S, used, axis=0)).max() == 0


def test_split_with_missing_values_sums_to_the_values_and_engines_agree(case):
    _, _, paths, X, bg, _, _ = case  # NaN in rows and background
    values, presence = treeshap_cpu.split_values(paths, X, ALL, background=bg)
    np.testing.assert_allclose(values, treeshap_cpu.shap_values(paths, X, ALL, background=bg), atol=1e-13)
    assert np.abs(presence).sum() > 0 and np.abs(values - presence).sum() > 0
    xp_values, xp_presence = treeshap_gpu.split_values(paths, X, ALL, background=bg, xp=np, memory_budget=500)
    np.testing.assert_allclose(xp_values, values, atol=1e-13)
    np.testing.assert_allclose(xp_presence, presence, atol=1e-13)
    own = np.array([1, 0, 0, 1, 1, 0])
    np.testing.assert_allclose(treeshap_cpu.pair_values(paths, X, own, background=bg).mean(1),
                               values[np.arange(6), own], atol=1e-13)
    with pytest.raises(ValueError, match="interventional"):
        treeshap_cpu.split_values(paths, X, ALL, background=None)
    with pytest.raises(ValueError, match="one output per row"):
        treeshap_cpu.pair_values(paths, X, ALL, background=bg)
    with pytest.raises(ValueError, match="one output per row"):
        treeshap_gpu.group_sums(paths, X, ALL, np.zeros(6, int), 1, background=bg, xp=np)


def test_pairs_match_shap_with_a_single_background_row():
    """shap's interventional TreeExplainer with one background row is the pair's Shapley value."""
    shap = pytest.importorskip("shap")
    from sklearn.ensemble import RandomForestClassifier

    from scexplain.models._trees import tree_paths

    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 6))
    model = RandomForestClassifier(10, max_depth=6, random_state=0).fit(X, (X[:, 0] + X[:, 1] > 0).astype(int))
    paths = tree_paths(model)
    rows, bg = paths.prepare_input(X[:15]), paths.prepare_input(X[100:104])
    own = np.ones(15, dtype=np.int64)
    ours = treeshap_cpu.pair_values(paths, rows, own, background=bg)
    for b in range(4):
        explainer = shap.TreeExplainer(model, X[100 + b : 101 + b], feature_perturbation="interventional")
        expected = np.asarray(explainer.shap_values(X[:15], check_additivity=False))[..., 1]
        np.testing.assert_allclose(ours[:, b], expected, atol=1e-7)  # shap rounds its sums to float32


def test_gpu_algorithm_on_numpy_equals_cpu_engine(case):
    """The CuPy engine's code path, run with NumPy as the array module, tiles included."""
    _, _, paths, X, bg, _, _ = case
    own = np.array([1, 0, 0, 1, 1, 0])[:, None]
    for outputs in (ALL, own):
        np.testing.assert_allclose(
            treeshap_gpu.shap_values(paths, X, outputs, xp=np, memory_budget=300),
            treeshap_cpu.shap_values(paths, X, outputs), atol=1e-13)
        np.testing.assert_allclose(
            treeshap_gpu.shap_values(paths, X, outputs, background=bg, xp=np, memory_budget=3000),
            treeshap_cpu.shap_values(paths, X, outputs, background=bg), atol=1e-13)
        np.testing.assert_allclose(
            treeshap_gpu.interaction_values(paths, X, outputs, xp=np, memory_budget=500),
            treeshap_cpu.interaction_values(paths, X, outputs), atol=1e-13)
    np.testing.assert_allclose(treeshap_gpu.predict(paths, X, xp=np), treeshap_cpu.predict(paths, X), atol=1e-13)
    np.testing.assert_allclose(treeshap_gpu.expected_value(paths, bg, xp=np), treeshap_cpu.expected_value(paths, bg))


def test_deep_paths_and_errors():
    *_, paths = _ensemble(seed=7, n_trees=2, depth=12)
    X = _rows(8, 40)
    # deep paths: the per-row branch (no table) and the tables agree
    np.testing.assert_allclose(treeshap_cpu.shap_values(paths, X, ALL[:1].repeat(40, 0), table=False),
                               treeshap_cpu.shap_values(paths, X, ALL[:1].repeat(40, 0), table=True), atol=1e-12)
    with pytest.raises(ValueError, match="features per row"):
        treeshap_cpu.shap_values(paths, X[:, :3], ALL[:1].repeat(40, 0))
    with pytest.raises(ValueError, match="outputs"):
        treeshap_cpu.shap_values(paths, X, np.full((40, 1), K))
    deep = TreePaths(**{**paths.__dict__, "path_ptr": np.array([0, 70]), "feature": np.arange(70),
                        "leaf_value": np.zeros((1, K))})
    with pytest.raises(ValueError, match="at most 62"):
        treeshap_cpu.shap_values(deep, np.zeros((1, 70)), np.zeros((1, 1), int))
    with pytest.raises(ValueError, match="at most 62"):
        treeshap_gpu.shap_values(deep, np.zeros((1, 70)), np.zeros((1, 1), int), xp=np)


def test_cuda_available_without_cupy_is_false():
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert treeshap_gpu.cuda_available() is False
        with pytest.raises(ImportError, match=r"scexplain\[gpu\]"):
            treeshap_gpu.get_cupy()


# ----------------------------------------------------------------------------------------------------------------------
# CuPy on a CUDA device


def _cupy_or_skip():
    if not treeshap_gpu.cuda_available():
        pytest.skip("needs CuPy and a CUDA GPU")
    import cupy

    return cupy


@pytest.mark.gpu
def test_cupy_engine_equals_cpu_engine(case):
    cupy = _cupy_or_skip()
    _, _, paths, X, bg, _, _ = case
    for outputs in (ALL, np.array([1, 0, 0, 1, 1, 0])[:, None]):
        np.testing.assert_allclose(treeshap_gpu.shap_values(paths, X, outputs, xp=cupy),
                                   treeshap_cpu.shap_values(paths, X, outputs), atol=1e-12)
        np.testing.assert_allclose(treeshap_gpu.shap_values(paths, X, outputs, background=bg, xp=cupy),
                                   treeshap_cpu.shap_values(paths, X, outputs, background=bg), atol=1e-12)
        np.testing.assert_allclose(treeshap_gpu.interaction_values(paths, X, outputs, xp=cupy),
                                   treeshap_cpu.interaction_values(paths, X, outputs), atol=1e-12)
    np.testing.assert_allclose(treeshap_gpu.predict(paths, X, xp=cupy), treeshap_cpu.predict(paths, X), atol=1e-12)
    own = np.array([1, 0, 0, 1, 1, 0])
    for ours, theirs in zip(treeshap_gpu.split_values(paths, X, ALL, background=bg, xp=cupy),
                            treeshap_cpu.split_values(paths, X, ALL, background=bg), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-12)
    np.testing.assert_allclose(treeshap_gpu.pair_values(paths, X, own, background=bg, xp=cupy),
                               treeshap_cpu.pair_values(paths, X, own, background=bg), atol=1e-12)
    groups = np.array([0, 2, 2, 1, 0, 2])
    np.testing.assert_allclose(treeshap_gpu.group_sums(paths, X, own, groups, 3, background=bg, xp=cupy),
                               treeshap_cpu.group_sums(paths, X, own, groups, 3, background=bg), atol=1e-12)


@pytest.mark.gpu
def test_cupy_engine_on_a_forest_matches_shap():
    cupy = _cupy_or_skip()
    shap = pytest.importorskip("shap")
    from sklearn.ensemble import RandomForestClassifier

    from scexplain.models._trees import tree_paths

    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 10))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    model = RandomForestClassifier(20, max_depth=8, random_state=0).fit(X, y)
    paths = tree_paths(model)
    outputs = np.tile(np.arange(3), (500, 1))
    ours = treeshap_gpu.shap_values(paths, paths.prepare_input(X), outputs, xp=cupy)
    expected = np.asarray(shap.TreeExplainer(model).shap_values(X)).transpose(0, 2, 1)
    np.testing.assert_allclose(ours, expected, atol=1e-9)
