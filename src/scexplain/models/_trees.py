"""Tree ensembles (scikit-learn, XGBoost, LightGBM) → one flat root-to-leaf path representation.

Every supported model is first read into a generic node table per tree (children, feature, threshold with the
convention "go left iff x ≤ threshold" on the model's input dtype, the child taken by NaN, covers, leaf values per
output), then each root-to-leaf path is flattened: the features it splits on (each feature once: repeated splits are
merged into one interval ``(lower, upper]``), whether NaN follows the path at every split on that feature, and the
product of the cover ratios ("zero fraction"). One path holds its leaf value for every output, so multiclass forests
are not copied per class. :class:`TreePaths` also keeps the node tables, for fast predictions.

Model output per type (shap.TreeExplainer's ``model_output="raw"``): class probabilities averaged over trees for
scikit-learn tree/forest classifiers, the raw margin (log-odds per class) for gradient boosting (scikit-learn,
XGBoost, LightGBM), the prediction for regressors. Binary boosted classifiers have one output, the log-odds of the
second class (see :meth:`TreePaths.two_sided`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SUPPORTED_MODELS", "TreePaths", "tree_paths"]

#: What :func:`tree_paths` accepts (named in the error for anything else).
SUPPORTED_MODELS = (
    "sklearn DecisionTreeClassifier/Regressor",
    "RandomForestClassifier/Regressor",
    "ExtraTreesClassifier/Regressor",
    "GradientBoostingClassifier/Regressor",
    "HistGradientBoostingClassifier/Regressor",
    "xgboost XGBClassifier/XGBRegressor/Booster (gbtree, dart)",
    "lightgbm LGBMClassifier/LGBMRegressor/Booster",
)


@dataclass(frozen=True)
class TreePaths:
    """Flat path representation of a fitted tree ensemble (CSR over paths).

    Attributes
    ----------
    n_features
        Number of input features of the model.
    path_ptr
        ``n_paths + 1`` offsets: path ``p`` owns entries ``path_ptr[p]:path_ptr[p + 1]`` of the per-feature arrays.
    feature, lower, upper, nan_ok, zero_fraction
        Per (path, unique feature): feature index, the interval ``(lower, upper]`` the feature must lie in to follow
        the path, whether NaN follows the path at every split on that feature, and the product of
        ``cover(child) / cover(parent)`` over those splits. Features are in order of first split from the root.
    leaf_value
        ``n_paths × n_outputs`` leaf values (already scaled: forest averaging, learning rates, DART weights).
    path_tree
        Tree index of each path.
    base_offset
        Per output constant added to the sum over trees (boosting's initial prediction).
    node_left, node_right, node_feature, node_threshold, node_nan_left, node_path, tree_root
        Node tables of all trees (children as absolute indices, ``-1`` at leaves; go left iff ``x ≤ threshold``,
        NaN goes left iff ``node_nan_left``; ``node_path`` = path index of a leaf), used for predictions.
    input_dtype
        The model compares its inputs in this dtype (``float32`` for scikit-learn trees and XGBoost).
    model_class
        ``module.QualName`` of the model.
    output_names
        Class names (``None`` when the model has none, or its classes are the codes ``0 … K-1``).
    output_kind
        ``"probability"``, ``"margin"`` (log-odds) or ``"value"`` (regression).
    feature_names
        The model's input names when it was fitted on named columns (else ``None``).
    binary_margin
        One output that is the log-odds of the second of two classes (named in ``output_names``).
    negative_class
        Name of the first class of a binary margin model (when the classes are named).
    """

    n_features: int
    path_ptr: np.ndarray
    feature: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    nan_ok: np.ndarray
    zero_fraction: np.ndarray
    leaf_value: np.ndarray
    path_tree: np.ndarray
    base_offset: np.ndarray
    node_left: np.ndarray
    node_right: np.ndarray
    node_feature: np.ndarray
    node_threshold: np.ndarray
    node_nan_left: np.ndarray
    node_path: np.ndarray
    tree_root: np.ndarray
    input_dtype: type = np.float64
    model_class: str = ""
    output_names: list[str] | None = None
    output_kind: str = "value"
    feature_names: list[str] | None = None
    binary_margin: bool = False
    negative_class: str | None = None

    @property
    def n_paths(self) -> int:
        """Number of root-to-leaf paths."""
        return len(self.path_ptr) - 1

    @property
    def n_outputs(self) -> int:
        """Number of model outputs (classes, or 1)."""
        return self.leaf_value.shape[1]

    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return len(self.tree_root)

    @property
    def path_length(self) -> np.ndarray:
        """Number of unique features on each path."""
        return np.diff(self.path_ptr)

    @property
    def max_unique_features(self) -> int:
        """Largest number of unique features on one path."""
        return int(self.path_length.max(initial=0))

    def prepare_input(self, X: np.ndarray) -> np.ndarray:
        """``X`` rounded to the model's input dtype as the model compares it, returned as C-contiguous float64."""
        X = np.asarray(X)
        return np.ascontiguousarray(X.astype(self.input_dtype, copy=False), dtype=np.float64)

    def path_weights(self) -> np.ndarray:
        """Probability of reaching each leaf under the covers: ``Π zero_fraction`` over the path."""
        weights = np.ones(self.n_paths)
        nonempty = self.path_length > 0
        if nonempty.any():
            weights[nonempty] = np.multiply.reduceat(self.zero_fraction, self.path_ptr[:-1][nonempty])
        return weights

    def expected_value(self) -> np.ndarray:
        """Path-dependent expected value per output: ``base + Σ_paths leaf_value · Π zero_fraction``."""
        return self.base_offset + self.path_weights() @ self.leaf_value

    def two_sided(self) -> TreePaths:
        """For one binary log-odds output: two outputs ``[-margin, margin]``, one per class; else ``self``.

        Explaining the first class of a binary boosted classifier then means explaining the negated log-odds.
        """
        if not self.binary_margin:
            return self
        names = None
        if self.output_names is not None and self.negative_class is not None:
            names = [self.negative_class, *self.output_names]
        return dataclasses.replace(
            self,
            leaf_value=np.concatenate([-self.leaf_value, self.leaf_value], axis=1),
            base_offset=np.concatenate([-self.base_offset, self.base_offset]),
            output_names=names,
            binary_margin=False,
            negative_class=None,
        )


# ----------------------------------------------------------------------------------------------------------------------
# generic node tables → paths


@dataclass
class _Tree:
    """One tree as a node table; ``left[i] == -1`` marks a leaf. ``value`` rows are only read at leaves."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray  # go left iff x <= threshold (float64, on the model's input dtype)
    nan_left: np.ndarray
    cover: np.ndarray
    value: np.ndarray  # n_nodes × n_outputs


def _malformed(tree: int, what: str) -> ValueError:
    return ValueError(f"the tree model is malformed (tree {tree}: {what}); save it again from its library")


def _child_fraction(cover: np.ndarray, parent: int, child: int, sibling: int) -> float:
    """``cover(child) / cover(parent)``; when the parent has no cover, split by the children's covers (or evenly)."""
    cp = float(cover[parent])
    if cp > 0:
        return float(cover[child]) / cp
    total = float(cover[child]) + float(cover[sibling])
    return float(cover[child]) / total if total > 0 else 0.5


class _Builder:
    """Accumulates trees and flattens them into :class:`TreePaths`."""

    def __init__(self, n_features: int, n_outputs: int):
        self.n_features = n_features
        self.n_outputs = n_outputs
        self.ptr = [0]
        self.feature: list[int] = []
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.nan_ok: list[bool] = []
        self.zfrac: list[float] = []
        self.values: list[np.ndarray] = []
        self.path_tree: list[int] = []
        self.nodes: list[_Tree] = []
        self.node_paths: list[np.ndarray] = []

    def add(self, tree: _Tree) -> None:
        """Flatten ``tree``'s root-to-leaf paths (depth-first, left before right)."""
        t = len(self.nodes)
        n_nodes = len(tree.left)
        node_path = np.full(n_nodes, -1, dtype=np.int64)
        leaves = []
        # stack of (node, splits so far): a split is (feature, goes_left, threshold, nan_follows, fraction)
        stack: list[tuple[int, list]] = [(0, [])]
        seen = np.zeros(n_nodes, dtype=bool)
        while stack:
            node, splits = stack.pop()
            if seen[node]:
                raise _malformed(t, f"node {node} is reached twice")
            seen[node] = True
            lft, rgt = int(tree.left[node]), int(tree.right[node])
            if lft < 0:
                if len(tree.value[node]) != self.n_outputs:
                    raise _malformed(t, f"leaf {node} has {len(tree.value[node])} values, not {self.n_outputs}")
                leaves.append((node, splits))
                continue
            f, thr, nl = int(tree.feature[node]), float(tree.threshold[node]), bool(tree.nan_left[node])
            if not (0 < lft < n_nodes and 0 < rgt < n_nodes):
                raise _malformed(t, f"node {node} has children {lft}, {rgt} outside its {n_nodes} nodes")
            if not 0 <= f < self.n_features:
                raise _malformed(t, f"node {node} splits on feature {f}, not one of the model's {self.n_features}")
            zr = _child_fraction(tree.cover, node, rgt, lft)
            zl = _child_fraction(tree.cover, node, lft, rgt)
            stack.append((rgt, [*splits, (f, False, thr, not nl, zr)]))
            stack.append((lft, [*splits, (f, True, thr, nl, zl)]))
        for node, splits in leaves:
            node_path[node] = len(self.path_tree)
            merged: dict[int, list] = {}
            for f, go_left, thr, nan_follows, z in splits:
                entry = merged.setdefault(f, [-np.inf, np.inf, True, 1.0])
                if go_left:
                    entry[1] = min(entry[1], thr)
                else:
                    entry[0] = max(entry[0], thr)
                entry[2] = entry[2] and nan_follows
                entry[3] *= z
            for f, (lo, hi, nan_ok, z) in merged.items():
                self.feature.append(f)
                self.lower.append(lo)
                self.upper.append(hi)
                self.nan_ok.append(nan_ok)
                self.zfrac.append(z)
            self.ptr.append(len(self.feature))
            self.values.append(np.asarray(tree.value[node], dtype=np.float64))
            self.path_tree.append(t)
        self.nodes.append(tree)
        self.node_paths.append(node_path)

    def build(self, base_offset, **meta: Any) -> TreePaths:
        """Concatenate everything into a :class:`TreePaths`."""
        offsets = np.cumsum([0] + [len(tr.left) for tr in self.nodes])
        cat = lambda attr, dtype: np.concatenate([getattr(tr, attr) for tr in self.nodes]).astype(dtype)  # noqa: E731
        left, right = cat("left", np.int64), cat("right", np.int64)
        shift = np.repeat(offsets[:-1], [len(tr.left) for tr in self.nodes])
        leaf = left < 0
        left = np.where(leaf, -1, left + shift)
        right = np.where(leaf, -1, right + shift)
        base = np.broadcast_to(np.asarray(base_offset, dtype=np.float64).ravel(), (self.n_outputs,)).copy()
        values = np.asarray(self.values, dtype=np.float64).reshape(len(self.values), self.n_outputs)
        return TreePaths(
            n_features=int(self.n_features),
            path_ptr=np.asarray(self.ptr, dtype=np.int64),
            feature=np.asarray(self.feature, dtype=np.int64),
            lower=np.asarray(self.lower, dtype=np.float64),
            upper=np.asarray(self.upper, dtype=np.float64),
            nan_ok=np.asarray(self.nan_ok, dtype=np.bool_),
            zero_fraction=np.asarray(self.zfrac, dtype=np.float64),
            leaf_value=values,
            path_tree=np.asarray(self.path_tree, dtype=np.int64),
            base_offset=base,
            node_left=left,
            node_right=right,
            node_feature=np.where(leaf, 0, cat("feature", np.int64)),
            node_threshold=cat("threshold", np.float64),
            node_nan_left=cat("nan_left", np.bool_),
            node_path=np.concatenate(self.node_paths),
            tree_root=offsets[:-1].astype(np.int64),
            **meta,
        )


# ----------------------------------------------------------------------------------------------------------------------
# names


def _class_names(classes) -> list[str] | None:
    """Class names, or ``None`` when the classes are the label codes ``0 … K-1`` (then outputs are unnamed)."""
    if classes is None:
        return None
    classes = np.asarray(classes)
    if np.issubdtype(classes.dtype, np.number) and np.array_equal(classes, np.arange(len(classes))):
        return None
    return [str(c) for c in classes]


def _binary_names(names: list[str] | None, binary: bool) -> tuple[list[str] | None, str | None]:
    """``(output_names, negative_class)``: a binary margin's one output is named after the second class."""
    if not binary or names is None:
        return names, None
    return names[1:], names[0]


_GENERIC_NAME = re.compile(r"^(Column_|f|x|feature_?)\d+$")


def _feature_names(names) -> list[str] | None:
    """The model's input names unless absent or generic (``f0``, ``Column_0``, ...)."""
    if names is None:
        return None
    names = [str(n) for n in names]
    if all(_GENERIC_NAME.match(n) for n in names):
        return None
    return names


def _qualname(model) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


# ----------------------------------------------------------------------------------------------------------------------
# scikit-learn


def _sklearn_tree(tree_, value: np.ndarray) -> _Tree:
    left = tree_.children_left.astype(np.int64)
    leaf = left < 0
    nan_left = getattr(tree_, "missing_go_to_left", None)
    nan_left = np.ones(len(left), dtype=bool) if nan_left is None else np.asarray(nan_left).astype(bool)
    return _Tree(
        left=np.where(leaf, -1, left),
        right=np.where(leaf, -1, tree_.children_right.astype(np.int64)),
        feature=np.where(leaf, 0, tree_.feature.astype(np.int64)),
        threshold=tree_.threshold.astype(np.float64),
        nan_left=nan_left,
        cover=tree_.weighted_n_node_samples.astype(np.float64),
        value=value,
    )


def _check_fitted(model, attr: str) -> None:
    if not hasattr(model, attr):
        raise ValueError(f"The {type(model).__name__} is not fitted; call `fit` before explaining it.")


def _single_output(model) -> None:
    if getattr(model, "n_outputs_", 1) != 1:
        raise ValueError(
            f"Multi-output {type(model).__name__} (n_outputs_={model.n_outputs_}) is not supported; fit one model "
            "per output."
        )


def _from_sklearn_forest(model, estimators, classifier: bool) -> TreePaths:
    _single_output(model)
    n_out = len(model.classes_) if classifier else 1
    b = _Builder(model.n_features_in_, n_out)
    scale = 1.0 / len(estimators)
    for est in estimators:
        raw = est.tree_.value[:, 0, :].astype(np.float64)
        if classifier:
            total = raw.sum(axis=1, keepdims=True)
            raw = raw / np.where(total > 0, total, 1.0)
        b.add(_sklearn_tree(est.tree_, raw * scale))
    return b.build(
        np.zeros(n_out),
        input_dtype=np.float32,
        model_class=_qualname(model),
        output_names=_class_names(model.classes_) if classifier else ["value"],
        output_kind="probability" if classifier else "value",
        feature_names=_feature_names(getattr(model, "feature_names_in_", None)),
    )


def _gb_constant_init(model) -> np.ndarray:
    """Initial raw prediction of a fitted GradientBoosting model; it must not depend on the input."""
    from sklearn.dummy import DummyClassifier, DummyRegressor

    init = model.init_
    if not (isinstance(init, DummyClassifier | DummyRegressor) or (isinstance(init, str) and init == "zero")):
        raise ValueError(
            f"{type(model).__name__} with init={type(init).__name__} has an input-dependent initial prediction; "
            "only the default (or init='zero') is supported."
        )
    x0 = np.zeros((1, model.n_features_in_), dtype=np.float32)
    raw_fn = model.decision_function if hasattr(model, "decision_function") else model.predict
    raw = np.asarray(raw_fn(x0), dtype=np.float64).reshape(-1)
    per_class = model.estimators_.shape[1]
    summed = np.zeros(per_class)
    for stage in model.estimators_:
        for k in range(per_class):
            summed[k] += model.learning_rate * float(stage[k].predict(x0)[0])
    return raw - summed


def _from_sklearn_gb(model, classifier: bool) -> TreePaths:
    _check_fitted(model, "estimators_")
    n_out = model.estimators_.shape[1]
    b = _Builder(model.n_features_in_, n_out)
    for stage in model.estimators_:
        for k, est in enumerate(stage):
            value = np.zeros((est.tree_.node_count, n_out))
            value[:, k] = model.learning_rate * est.tree_.value[:, 0, 0]
            b.add(_sklearn_tree(est.tree_, value))
    binary = classifier and n_out == 1
    names, negative = _binary_names(_class_names(model.classes_) if classifier else ["value"], binary)
    return b.build(
        _gb_constant_init(model),
        input_dtype=np.float32,
        model_class=_qualname(model),
        output_names=names,
        output_kind="margin" if classifier else "value",
        feature_names=_feature_names(getattr(model, "feature_names_in_", None)),
        binary_margin=binary,
        negative_class=negative,
    )


def _from_sklearn_hgb(model, classifier: bool) -> TreePaths:
    _check_fitted(model, "_predictors")
    n_out = len(model._predictors[0])
    b = _Builder(model.n_features_in_, n_out)
    for iteration in model._predictors:
        for k, predictor in enumerate(iteration):
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                raise ValueError(
                    f"{type(model).__name__} has categorical splits; only numerical splits are supported."
                )
            leaf = nodes["is_leaf"].astype(bool)
            value = np.zeros((len(nodes), n_out))
            value[:, k] = nodes["value"]
            b.add(
                _Tree(
                    left=np.where(leaf, -1, nodes["left"].astype(np.int64)),
                    right=np.where(leaf, -1, nodes["right"].astype(np.int64)),
                    feature=np.where(leaf, 0, nodes["feature_idx"].astype(np.int64)),
                    threshold=nodes["num_threshold"].astype(np.float64),
                    nan_left=nodes["missing_go_to_left"].astype(bool),
                    cover=nodes["count"].astype(np.float64),
                    value=value,
                )
            )
    binary = classifier and n_out == 1
    names, negative = _binary_names(_class_names(model.classes_) if classifier else ["value"], binary)
    return b.build(
        np.asarray(model._baseline_prediction, dtype=np.float64).ravel(),
        input_dtype=np.float64,
        model_class=_qualname(model),
        output_names=names,
        output_kind="margin" if classifier else "value",
        feature_names=_feature_names(getattr(model, "feature_names_in_", None)),
        binary_margin=binary,
        negative_class=negative,
    )


def _from_sklearn(model) -> TreePaths | None:
    from sklearn import ensemble, tree

    if isinstance(model, tree.BaseDecisionTree):
        _check_fitted(model, "tree_")
        cls = isinstance(model, tree.DecisionTreeClassifier | tree.ExtraTreeClassifier)
        _single_output(model)
        if cls and not hasattr(model, "classes_"):  # pragma: no cover - fitted classifiers have classes_
            raise ValueError("The classifier has no `classes_`.")
        return _from_sklearn_forest(model, [model], cls)
    forests_c = (ensemble.RandomForestClassifier, ensemble.ExtraTreesClassifier)
    forests_r = (ensemble.RandomForestRegressor, ensemble.ExtraTreesRegressor)
    if isinstance(model, forests_c + forests_r):
        _check_fitted(model, "estimators_")
        return _from_sklearn_forest(model, model.estimators_, isinstance(model, forests_c))
    if isinstance(model, ensemble.GradientBoostingClassifier | ensemble.GradientBoostingRegressor):
        return _from_sklearn_gb(model, isinstance(model, ensemble.GradientBoostingClassifier))
    if isinstance(model, ensemble.HistGradientBoostingClassifier | ensemble.HistGradientBoostingRegressor):
        return _from_sklearn_hgb(model, isinstance(model, ensemble.HistGradientBoostingClassifier))
    return None


# ----------------------------------------------------------------------------------------------------------------------
# XGBoost

_XGB_LOGIT = ("binary:logistic", "reg:logistic")
_XGB_LOG = ("count:poisson", "reg:gamma", "reg:tweedie", "survival:cox", "survival:aft")


def _xgb_base_margin(base_score: str, objective: str, n_out: int) -> np.ndarray:
    """``base_score`` (a number or a list, in the objective's output space) → margin per output."""
    value = json.loads(base_score.replace("E", "e")) if isinstance(base_score, str) else base_score
    base = np.atleast_1d(np.asarray(value, dtype=np.float32))
    if objective in _XGB_LOGIT:
        base = np.log(base / (np.float32(1) - base))
    elif objective in _XGB_LOG:
        base = np.log(base)
    return np.broadcast_to(base.astype(np.float64), (n_out,)).copy()


def _from_xgboost(model) -> TreePaths | None:
    names = None
    if not (hasattr(model, "save_raw") or hasattr(model, "get_booster")):
        return None
    if hasattr(model, "get_booster"):
        try:
            booster = model.get_booster()
        except Exception as err:  # xgboost raises NotFittedError (a ValueError subclass) or XGBoostError
            raise ValueError(f"The {type(model).__name__} is not fitted; call `fit` before explaining it.") from err
        classes = getattr(model, "classes_", None)
        names = _class_names(classes)
    else:
        booster = model
    feature_names = _feature_names(booster.feature_names)
    config = json.loads(booster.save_raw(raw_format="json"))
    learner = config["learner"]
    objective = learner["objective"]["name"]
    gb = learner["gradient_booster"]
    weights = None
    if gb["name"] == "dart":
        weights = np.asarray(gb["weight_drop"], dtype=np.float64)
        gb = gb["gbtree"]
    elif gb["name"] != "gbtree":
        raise ValueError(f"XGBoost booster {gb['name']!r} has no trees; only gbtree and dart are supported.")
    params = learner["learner_model_param"]
    n_class = int(params.get("num_class", 0))
    if int(params.get("num_target", 1)) > 1:
        raise ValueError("Multi-target XGBoost models are not supported; fit one model per target.")
    n_out = max(n_class, 1)
    n_features = int(params["num_feature"])
    trees = gb["model"]["trees"]
    info = np.asarray(gb["model"]["tree_info"], dtype=np.int64)
    n_trees = len(trees)
    n_iter = booster.num_boosted_rounds()
    best = booster.attr("best_iteration")
    if best is not None and "iteration_indptr" in gb["model"]:  # early stopping: predictions use the best one
        n_iter = int(best) + 1
        n_trees = int(gb["model"]["iteration_indptr"][n_iter])
    b = _Builder(n_features, n_out)
    for t in range(n_trees):
        tr = trees[t]
        if int(tr["tree_param"].get("size_leaf_vector", "1")) > 1:
            raise ValueError("XGBoost vector-leaf trees (multi_strategy='multi_output_tree') are not supported.")
        if any(int(s) != 0 for s in tr["split_type"]):
            raise ValueError("The XGBoost model has categorical splits; only numerical splits are supported.")
        left = np.asarray(tr["left_children"], dtype=np.int64)
        leaf = left < 0
        cond = np.asarray(tr["split_conditions"], dtype=np.float32)
        # XGBoost goes left iff x < threshold (float32): x <= the next float32 below
        thr = np.nextafter(cond, np.float32(-np.inf)).astype(np.float64)
        value = np.zeros((len(left), n_out))
        scale = 1.0 if weights is None else float(weights[t])
        value[:, int(info[t])] = np.where(leaf, cond.astype(np.float64), 0.0) * scale
        b.add(
            _Tree(
                left=np.where(leaf, -1, left),
                right=np.where(leaf, -1, np.asarray(tr["right_children"], dtype=np.int64)),
                feature=np.where(leaf, 0, np.asarray(tr["split_indices"], dtype=np.int64)),
                threshold=thr,
                nan_left=np.asarray(tr["default_left"], dtype=bool),
                cover=np.asarray(tr["sum_hessian"], dtype=np.float64),
                value=value,
            )
        )
    binary = n_out == 1 and objective.startswith("binary:")
    is_classifier = n_class > 1 or binary
    names, negative = _binary_names(names if is_classifier else ["value"], binary)
    paths = b.build(
        _xgb_base_margin(params["base_score"], objective, n_out),
        input_dtype=np.float32,
        model_class=_qualname(model),
        output_names=names,
        output_kind="margin" if is_classifier else "value",
        feature_names=feature_names,
        binary_margin=binary,
        negative_class=negative,
    )
    return _check_base(
        paths, lambda x: booster.predict(_xgb_dmatrix(x), output_margin=True, iteration_range=(0, n_iter))
    )


def _xgb_dmatrix(x):
    import xgboost

    return xgboost.DMatrix(x, missing=np.nan)


def _check_base(paths: TreePaths, margin) -> TreePaths:
    """Compare the parsed base margin with the booster's own margin on one row; fix it from there if it differs."""
    from ..engines.treeshap_cpu import predict

    x0 = np.zeros((1, paths.n_features), dtype=np.float32)
    ours = predict(paths, paths.prepare_input(x0))[0]
    theirs = np.asarray(margin(x0), dtype=np.float64).reshape(-1)
    if np.allclose(ours, theirs, rtol=1e-5, atol=1e-5):
        return paths
    return dataclasses.replace(paths, base_offset=paths.base_offset + (theirs - ours))


# ----------------------------------------------------------------------------------------------------------------------
# LightGBM


def _lgb_tree(structure: dict, n_out: int, k: int, scale: float) -> _Tree:
    """LightGBM ``dump_model()`` tree structure → node table (numerical splits only)."""
    left, right, feature, thr, nan_left, cover, values = [], [], [], [], [], [], []

    def visit(node: dict) -> int:
        i = len(left)
        for lst in (left, right, feature, thr, nan_left, cover):
            lst.append(0)
        values.append(0.0)
        if "split_index" not in node:  # leaf (a stump has only leaf_value)
            if node.get("leaf_coeff"):
                raise ValueError("LightGBM linear trees (linear_tree=True) are not supported.")
            left[i] = right[i] = -1
            cover[i] = float(node.get("leaf_count", 0))
            values[i] = float(node["leaf_value"]) * scale
            return i
        if node["decision_type"] != "<=":
            raise ValueError("The LightGBM model has categorical splits; only numerical splits are supported.")
        missing = node.get("missing_type", "None")
        if missing == "Zero":
            raise ValueError(
                "The LightGBM model treats zeros as missing (zero_as_missing=True); this is not supported."
            )
        threshold = float(node["threshold"])
        feature[i] = int(node["split_feature"])
        thr[i] = threshold
        # missing_type None: LightGBM replaces NaN by 0 before comparing; NaN: NaN takes the default child
        nan_left[i] = bool(node["default_left"]) if missing == "NaN" else (0.0 <= threshold)
        cover[i] = float(node["internal_count"])
        left[i] = visit(node["left_child"])
        right[i] = visit(node["right_child"])
        return i

    visit(structure)
    value = np.zeros((len(left), n_out))
    value[:, k] = values
    return _Tree(
        left=np.asarray(left, dtype=np.int64),
        right=np.asarray(right, dtype=np.int64),
        feature=np.asarray(feature, dtype=np.int64),
        threshold=np.asarray(thr, dtype=np.float64),
        nan_left=np.asarray(nan_left, dtype=bool),
        cover=np.asarray(cover, dtype=np.float64),
        value=value,
    )


def _from_lightgbm(model) -> TreePaths | None:
    names = None
    if not (hasattr(model, "dump_model") or hasattr(type(model), "booster_")):
        return None
    if not hasattr(model, "dump_model"):
        try:
            booster = model.booster_
        except Exception as err:  # LGBMNotFittedError
            raise ValueError(f"The {type(model).__name__} is not fitted; call `fit` before explaining it.") from err
        names = _class_names(getattr(model, "classes_", None))
    else:
        booster = model
    dump = booster.dump_model()
    per_iter = int(dump["num_tree_per_iteration"])
    objective = str(dump.get("objective", ""))
    trees = dump["tree_info"]
    if any(t.get("is_linear") for t in trees):
        raise ValueError("LightGBM linear trees (linear_tree=True) are not supported.")
    scale = 1.0 / max(len(trees) // per_iter, 1) if dump.get("average_output") else 1.0
    n_out = per_iter
    b = _Builder(int(dump["max_feature_idx"]) + 1, n_out)
    for t, tree in enumerate(trees):
        b.add(_lgb_tree(tree["tree_structure"], n_out, t % per_iter, scale))
    binary = n_out == 1 and objective.startswith(("binary", "cross_entropy"))
    is_classifier = binary or objective.startswith(("multiclass", "multiclassova"))
    names, negative = _binary_names(names if is_classifier else ["value"], binary)
    paths = b.build(
        np.zeros(n_out),
        input_dtype=np.float64,
        model_class=_qualname(model),
        output_names=names,
        output_kind="margin" if is_classifier else "value",
        feature_names=_feature_names(dump.get("feature_names")),
        binary_margin=binary,
        negative_class=negative,
    )
    return paths


# ----------------------------------------------------------------------------------------------------------------------


def tree_paths(model) -> TreePaths:
    """Flatten a fitted tree ensemble into :class:`TreePaths`.

    Parameters
    ----------
    model
        A fitted scikit-learn tree/forest/boosting model, an XGBoost ``XGBClassifier``/``XGBRegressor``/``Booster``
        or a LightGBM ``LGBMClassifier``/``LGBMRegressor``/``Booster``, or an already built :class:`TreePaths`.

    Returns
    -------
    The path representation; its outputs follow shap.TreeExplainer's raw model output.

    Raises
    ------
    TypeError
        For an unsupported model (the message lists the supported types).
    ValueError
        For an unfitted model, categorical splits, multi-output models and other unsupported features.
    """
    if isinstance(model, TreePaths):
        return model
    top = type(model).__module__.split(".")[0]
    paths = None
    if top == "sklearn":
        paths = _from_sklearn(model)
    elif top == "xgboost":
        paths = _from_xgboost(model)
    elif top == "lightgbm":
        paths = _from_lightgbm(model)
    if paths is None:
        raise TypeError(
            f"Cannot explain a {_qualname(model)} with TreeSHAP; supported: " + ", ".join(SUPPORTED_MODELS) + "."
        )
    return paths
