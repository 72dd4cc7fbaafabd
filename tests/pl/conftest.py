"""Fixtures of the plot tests: Agg backend, default style, synthetic results of every storage layout.

Results are written through ``scexplain._store.write`` with planted attributions (each cell type's marker genes get
large positive values toward that type, the other types' markers small negative ones), so the plots can be checked
without running any model.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

#: long names like the PBMC demo's, to stress label layout
LONG_NAMES = [
    "CD14+ Monocyte",
    "CD19+ B",
    "CD34+",
    "CD4+/CD25 T Reg",
    "CD4+/CD45RA+/CD25- Naive T",
    "CD4+/CD45RO+ Memory",
    "CD56+ NK",
    "CD8+ Cytotoxic T",
    "CD8+/CD45RA+ Naive Cytotoxic",
    "Dendritic",
]


@pytest.fixture(autouse=True)
def _mpl_defaults():
    """Default rcParams, a fixed font and no leaked figures, for every test."""
    import matplotlib.pyplot as plt

    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams["font.family"] = "DejaVu Sans"
        matplotlib.rcParams["figure.dpi"] = 100
        matplotlib.rcParams["savefig.dpi"] = 100
        matplotlib.rcParams["text.hinting"] = "none"
        yield
    plt.close("all")


def planted_attributions(adata, *, signed: bool = True, seed: int = 0) -> np.ndarray:
    """cells × genes attributions: own markers large positive, other markers slightly negative, noise."""
    rng = np.random.default_rng(seed)
    markers = adata.uns["toy"]["markers"]
    groups = adata.obs["cell_type"].astype(str).to_numpy()
    cats = list(adata.obs["cell_type"].cat.categories)
    pos = {g: adata.var_names.get_indexer(list(markers[g])) for g in markers}
    values = rng.normal(scale=0.02, size=adata.shape)
    for gi, g in enumerate(cats):
        cells = groups == g
        weights = np.linspace(1.0, 0.5, len(pos[g])) * (1 + 0.1 * gi)
        values[np.ix_(cells, pos[g])] += weights + rng.normal(scale=0.1, size=(cells.sum(), len(pos[g])))
        for other, idx in pos.items():
            if other != g:
                values[np.ix_(cells, idx)] -= 0.15
    return np.abs(values) if not signed else values


#: planted marks: (group index, marker index) of pairs whose score comes mostly from absence, ...
ABSENCE_PAIRS = ((1, 0), (2, 1))
#: ... a pair mostly from presence but with a large absence part (|absence| = 0.45 |mean| < |presence|) ...
MIXED_PAIRS = ((3, 0),)
#: ... and pairs with a low rank stability (below 0.5), one exactly at 0.5 (stable: the rule is "< threshold")
UNSTABLE_PAIRS = ((0, 1), (2, 2))
BORDERLINE_PAIRS = ((3, 1),)
#: n_top of the planted bootstrap (small, so that the top-n_top restriction of the marks is exercised)
N_TOP = 5


def planted_pairs(adata, pairs) -> list[tuple[str, str]]:
    """``(group, gene)`` names of planted ``(group index, marker index)`` pairs."""
    cats = list(adata.obs["cell_type"].cat.categories)
    markers = adata.uns["toy"]["markers"]
    return [(cats[g], str(list(markers[cats[g]])[m])) for g, m in pairs]


def _planted_split(adata, layer: np.ndarray) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Per-cell presence parts: all of φ, except for the planted pairs (and one off-top absence-driven pair)."""
    presence = layer.copy()
    cells_of = {g: (adata.obs["cell_type"] == g).to_numpy() for g in adata.obs["cell_type"].cat.categories}
    for share, pairs in ((-0.25, ABSENCE_PAIRS), (0.55, MIXED_PAIRS)):
        for g, gene in planted_pairs(adata, pairs):
            j = adata.var_names.get_loc(gene)
            presence[cells_of[g], j] = share * layer[cells_of[g], j]
    # an absence-driven pair far down its group's ranking (another type's marker, negative): not among the top
    # N_TOP, never marked
    cats = adata.obs["cell_type"].cat.categories
    far = adata.var_names.get_loc(str(list(adata.uns["toy"]["markers"][cats[-1]])[-1]))
    presence[cells_of[cats[0]], far] = -0.25 * layer[cells_of[cats[0]], far]
    return presence, [(str(cats[0]), str(adata.var_names[far]))]


def _planted_bootstrap(adata, mean: pd.DataFrame) -> dict[str, np.ndarray]:
    """Intervals ``mean ± (0.02 + 0.1 |mean|)``; stability 0.95 in the top N_TOP, 0.02 below, planted lows."""
    half = 0.02 + 0.1 * np.abs(mean)
    top = mean.rank(ascending=False, method="first") <= N_TOP
    stability = pd.DataFrame(np.where(top, 0.95, 0.02), index=mean.index, columns=mean.columns)
    for value, pairs in ((0.3, UNSTABLE_PAIRS), (0.5, BORDERLINE_PAIRS)):
        for g, gene in planted_pairs(adata, pairs):
            stability.loc[gene, g] = value
    return {"ci_low": (mean - half).to_numpy(), "ci_high": (mean + half).to_numpy(),
            "rank_stability": stability.to_numpy()}


def write_gene_result(adata, method: str = "deep_shap", *, key: str | None = None, signed: bool = True,
                      latent: bool = False, groupby: str | None = "cell_type", seed: int = 0,
                      split: bool = False, bootstrap: bool = False) -> str:
    """Store a gene-level result as a ``tl`` function does; returns its key.

    ``split``: with planted presence parts (``ABSENCE_PAIRS`` absence-driven); ``bootstrap``: with planted
    intervals and rank stabilities (``UNSTABLE_PAIRS`` unstable, bootstrap ``n_top = N_TOP``, ``ci_level`` 0.9).
    """
    from scexplain import _store
    from scexplain._inputs import get_groups, group_means
    from scexplain._keys import Key

    key = key or method
    layer = planted_attributions(adata, signed=signed, seed=seed).astype(np.float32)
    presence = _planted_split(adata, layer.astype(np.float64))[0].astype(np.float32) if split else None
    tables, names = {}, None
    params = {"groupby": groupby, "target": "label", "layer": "lognorm"}
    if groupby is not None:
        groups = get_groups(adata, groupby)
        mean = group_means(layer, groups, adata.var_names)
        names = list(mean.columns)
        tables = {Key.table.mean: mean.to_numpy(), Key.table.mean_abs: group_means(np.abs(layer), groups,
                                                                                   adata.var_names).to_numpy()}
        if split:
            tables[Key.table.presence] = group_means(presence, groups, adata.var_names).to_numpy()
        if bootstrap:
            tables.update(_planted_bootstrap(adata, mean.astype(np.float64)))
            params["bootstrap"] = {"n_bootstrap": 25, "ci_level": 0.9, "n_top": N_TOP}
    extra, uns = {}, {}
    if latent:
        rng = np.random.default_rng(seed + 1)
        lat = rng.normal(scale=0.05, size=(adata.n_vars, 4))
        for d in range(4):
            lat[d * 3:(d + 1) * 3, d] += (-1) ** d * np.array([1.0, 0.8, 0.6])
        extra[Key.latent(key)] = lat
        uns[Key.uns.latent_dims] = [f"z{d}" for d in range(4)]
    _store.write(adata, _store.Result(
        method=method, key=key, params=params, layer=layer, presence=presence, groups=names, group_tables=tables,
        varm_extra=extra, ranking=(tables[Key.table.mean], names) if tables else None, uns=uns,
    ))
    return key


def write_rep_result(adata, *, key: str = "tree_shap_gpu", n_dims: int = 8, seed: int = 0) -> str:
    """Store a tree-SHAP-on-embedding result (``obsm[key]`` over PC dims, group tables in ``uns``)."""
    from scexplain import _store
    from scexplain._inputs import get_groups, group_means
    from scexplain._keys import Key

    rng = np.random.default_rng(seed)
    groups = get_groups(adata, "cell_type")
    codes = np.asarray(groups.codes)
    pcs = rng.normal(size=(adata.n_obs, n_dims))
    for g in range(len(groups.categories)):
        pcs[codes == g, g % n_dims] += 2.0
    adata.obsm["X_pca"] = pcs.astype(np.float32)
    phi = 0.05 * rng.normal(size=(adata.n_obs, n_dims))
    for g in range(len(groups.categories)):
        phi[codes == g, g % n_dims] += 0.5 * (pcs[codes == g, g % n_dims] - 1.0)
        phi[codes == g, (g + 1) % n_dims] -= 0.2
    names = [f"PC{i + 1}" for i in range(n_dims)]
    mean = group_means(phi, groups, names)
    tables = {Key.table.mean: mean.to_numpy(), Key.table.mean_abs: group_means(np.abs(phi), groups, names).to_numpy()}
    _store.write(adata, _store.Result(
        method="tree_shap_gpu", key=key, params={"groupby": "cell_type", "use_rep": "X_pca", "target": "label"},
        obsm=phi, features=names, groups=list(mean.columns), group_tables=tables,
        ranking=(tables[Key.table.mean], list(mean.columns)),
    ))
    return key


@pytest.fixture(scope="session")
def _base10():
    import scexplain as sx

    adata = sx.datasets.toy(n_cells=300, n_genes=60, n_groups=10, n_markers=5, seed=0)
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.rename_categories(LONG_NAMES)
    adata.uns["toy"]["markers"] = {
        new: v for new, v in zip(LONG_NAMES, adata.uns["toy"]["markers"].values(), strict=True)
    }
    return adata


@pytest.fixture
def adata10(_base10):
    """10 cell types with long names × 60 genes (5 markers each), a planted DeepSHAP result with split and bootstrap."""
    adata = _base10.copy()
    write_gene_result(adata, "deep_shap", split=True, bootstrap=True)
    return adata


@pytest.fixture(scope="session")
def _base4():
    import scexplain as sx

    return sx.datasets.toy(n_cells=120, n_genes=24, n_groups=4, n_markers=3, seed=1)


@pytest.fixture
def adata4(_base4):
    """4 cell types × 24 genes with planted DeepSHAP (with latent, split, bootstrap), VarGrad and TreeSHAP-on-PCA
    results, and a plain DeepSHAP result without split or bootstrap (``"deep_shap_plain"``)."""
    adata = _base4.copy()
    write_gene_result(adata, "deep_shap", latent=True, split=True, bootstrap=True)
    write_gene_result(adata, "deep_shap", key="deep_shap_plain")
    write_gene_result(adata, "vargrad", signed=False, seed=2)
    write_rep_result(adata)
    return adata


# -- helpers handed to tests as fixtures (tests/pl has no package to import them from) ----------------------------
def visible_texts(fig) -> list:
    """Every drawn, non-empty text of ``fig``: tick labels in view, titles, axis labels, legends, free texts."""
    from matplotlib.text import Text

    fig.canvas.draw()
    out = []

    def axes_tree(ax):
        yield ax
        for child in ax.child_axes:
            yield from axes_tree(child)

    for top in fig.axes:
        for ax in axes_tree(top):
            if not ax.get_visible():
                continue
            for axis in (ax.xaxis, ax.yaxis):
                if not ax.axison or not axis.get_visible():
                    continue
                for tick in axis._update_ticks():
                    out.extend(t for t in (tick.label1, tick.label2) if t.get_visible())
                out.append(axis.label)
            out.extend([ax.title, ax._left_title, ax._right_title, *ax.texts])
    out.extend(fig.texts)
    out.extend(t for t in (fig._suptitle, fig._supxlabel, fig._supylabel) if t is not None)
    unique = list({id(t): t for t in out}.values())
    return [t for t in unique if isinstance(t, Text) and t.get_visible() and t.get_text().strip()]


def overlapping_texts(fig, *, tol_px: float = 0.5, inside: bool = True) -> list[tuple[str, str]]:
    """Pairs of texts whose rendered bounding boxes overlap, and (``inside``) texts sticking out of the figure.

    scanpy's plot classes let long labels reach past the figure's edge and rely on ``bbox_inches="tight"`` when
    saving (as Jupyter does when showing): their figures are checked with ``inside=False``.
    """
    renderer = fig.canvas.get_renderer()
    texts = visible_texts(fig)
    boxes = [t.get_window_extent(renderer) for t in texts]
    bad = []
    for i in range(len(texts)):
        a = boxes[i]
        if inside and (a.x0 < fig.bbox.x0 - tol_px or a.y0 < fig.bbox.y0 - tol_px or a.x1 > fig.bbox.x1 + tol_px
                or a.y1 > fig.bbox.y1 + tol_px):
            bad.append((texts[i].get_text(), "<outside the figure>"))
        for j in range(i + 1, len(texts)):
            b = boxes[j]
            w = min(a.x1, b.x1) - max(a.x0, b.x0)
            h = min(a.y1, b.y1) - max(a.y0, b.y0)
            if w > tol_px and h > tol_px:
                bad.append((texts[i].get_text(), texts[j].get_text()))
    return bad


@pytest.fixture
def overlaps():
    """``overlaps(fig)``: list of overlapping text pairs (empty when the figure is legible)."""
    return overlapping_texts


def marked_cells(ax, kind: str) -> set[tuple[str, str]]:
    """``(row label, column label)`` of the cells of a heatmap/dotplot main axes that carry the mark ``kind``.

    ``kind``: ``"absence"`` (hatched cells or dots) or ``"unstable"`` (``?`` marks).
    """
    from matplotlib.collections import PatchCollection

    rows = [t.get_text() for t in ax.get_yticklabels()]
    cols = [t.get_text() for t in ax.get_xticklabels()]
    out = set()
    for coll in ax.collections:
        if coll.get_label() != f"{kind}_marks":
            continue
        if isinstance(coll, PatchCollection):
            corners = [p.vertices.min(axis=0) for p in coll.get_paths()]
            cells = [(round(y), round(x)) for x, y in corners]
        else:
            cells = [(int(np.floor(y)), int(np.floor(x))) for x, y in coll.get_offsets()]
        out.update((rows[r], cols[c]) for r, c in cells)
    return out


@pytest.fixture
def marks_on():
    """``marks_on(ax, kind)``: the (row, column) labels of the cells carrying a mark."""
    return marked_cells


PLANTED = {"absence": ABSENCE_PAIRS, "mixed": MIXED_PAIRS, "unstable": UNSTABLE_PAIRS, "borderline": BORDERLINE_PAIRS}


def planted_of(adata, kind: str) -> set[tuple[str, str]]:
    """``(group, gene)`` of the planted pairs of ``kind``: ``"absence"``, ``"mixed"``, ``"unstable"``,
    ``"borderline"`` or ``"far"`` (absence-driven, far below the top ``N_TOP``)."""
    if kind == "far":
        layer = np.asarray(adata.layers["deep_shap"], dtype=np.float64)
        return set(_planted_split(adata, layer)[1])
    return set(planted_pairs(adata, PLANTED[kind]))


@pytest.fixture
def planted():
    """``planted(adata, kind)``: the planted ``(group, gene)`` pairs of ``kind`` (see :func:`planted_of`)."""
    return planted_of


@pytest.fixture
def write_gene():
    """``write_gene(adata, method, ...)``: store a planted gene-level result."""
    return write_gene_result


@pytest.fixture
def write_rep():
    """``write_rep(adata, ...)``: store a planted tree-SHAP-on-PCA result."""
    return write_rep_result


@pytest.fixture
def show_calls(monkeypatch):
    """Count calls of ``plt.show`` (harmless under Agg, but counted to check the ``show`` logic)."""
    import matplotlib.pyplot as plt

    calls = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: calls.append(1))
    return calls
