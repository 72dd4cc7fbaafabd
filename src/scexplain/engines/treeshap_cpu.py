"""Exact TreeSHAP on the CPU (Numba, parallel over tiles of rows), over :class:`~scexplain.models._trees.TreePaths`.

For one path with unique features U (zero fractions z_j, intervals) and a row x, let o_j = 1 if x lies in feature j's
interval (or is NaN and NaN follows the path), else 0; the row's *pattern* is the bitmask of the o_j.

- Path-dependent: φ_i += v · (o_i − z_i) · ∫₀¹ Π_{j≠i} (z_j + (o_j − z_j) t) dt, the integral by Gauss–Legendre
  quadrature with ⌈|U|/2⌉ nodes (exact: the integrand is a polynomial of degree |U| − 1).
- Interventional (background rows r with patterns p_r): the path's game is v · 1[A ⊆ S, B ∩ S = ∅] with A = features
  only x satisfies and B = features only r satisfies (0 if some feature fails for both); its Shapley values are
  +v·W(|A| − 1, n) for A and −v·W(|A|, n) for B, W(s, n) = s!(n − s − 1)!/n!, n = |A| + |B|; averaged over r.
- Interactions (path-dependent): Φ_ij = ½ v (o_i − z_i)(o_j − z_j) ∫ Π_{k∉{i,j}} F_k dt, Φ_ii = φ_i − Σ_{j≠i} Φ_ij.

The per-feature weights of a path depend on the row only through its pattern. When a path has few unique features
compared with the number of rows (2^|U| ≤ rows), they are tabulated once for every pattern and the row loop is a
table lookup; otherwise they are computed per row. Both give the same numbers. Accumulation is in float64; inputs
must be finite or NaN.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numba as nb
import numpy as np

__all__ = [
    "MAX_PATH_FEATURES",
    "check_depth",
    "expected_value",
    "gauss_legendre_table",
    "group_sums",
    "interaction_values",
    "pair_values",
    "predict",
    "shap_values",
    "shapley_weight_table",
    "split_values",
]

#: Largest number of unique features on one root-to-leaf path (patterns are int64 bitmasks).
MAX_PATH_FEATURES = 62
#: Paths with at most this many unique features may use pattern tables (size |U| · 2^|U| each).
TABLE_MAX_FEATURES = 14
#: Table entries built at once (float64, 32 MiB); trees are processed in chunks below it (few: each chunk is
#: two parallel launches, and a launch costs milliseconds on a busy machine).
TABLE_BUDGET = 1 << 22

Progress = Callable[[Iterable], Iterable] | None


# ----------------------------------------------------------------------------------------------------------------------
# numeric tables shared with the GPU engine


def gauss_legendre_table(max_nodes: int = (MAX_PATH_FEATURES + 1) // 2) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights on [0, 1] for 1 … ``max_nodes`` nodes, concatenated.

    The rule with ``q`` nodes starts at offset ``q (q − 1) / 2``.
    """
    xs, ws = [], []
    for q in range(1, max_nodes + 1):
        x, w = np.polynomial.legendre.leggauss(q)
        xs.append((x + 1.0) / 2.0)
        ws.append(w / 2.0)
    return np.concatenate(xs), np.concatenate(ws)


def shapley_weight_table(max_n: int = MAX_PATH_FEATURES) -> np.ndarray:
    """``W[s, n] = s! (n − s − 1)! / n!`` for ``0 ≤ s < n ≤ max_n`` (0 elsewhere)."""
    table = np.zeros((max_n + 1, max_n + 1))
    for n in range(1, max_n + 1):
        for s in range(n):
            table[s, n] = 1.0 / (n * math.comb(n - 1, s))
    return table


def check_depth(paths) -> None:
    """Raise a :class:`ValueError` if a path has more unique features than the engines support."""
    deepest = paths.max_unique_features
    if deepest > MAX_PATH_FEATURES:
        raise ValueError(
            f"The model has a root-to-leaf path with {deepest} distinct features; TreeSHAP here supports at most "
            f"{MAX_PATH_FEATURES}. Limit the tree depth (e.g. max_depth=32)."
        )


_GL_X, _GL_W = gauss_legendre_table()
_W = shapley_weight_table()


# ----------------------------------------------------------------------------------------------------------------------
# kernels


@nb.njit(cache=True)
def _popcount(v):
    c = 0
    while v:
        v &= v - 1
        c += 1
    return c


@nb.njit(cache=True, inline="always")
def _pair_weights(m, pu, full, nb_x, wtab, v):
    """Interventional weights of a row pattern ``m`` against a background pattern ``pu`` on a path of ``full``.

    ``(a, wa, wb)``: ``a`` the features where only the row satisfies the path, ``wa`` the weight each of them
    gains and ``wb`` the weight each feature neither satisfies loses, both times ``v``; ``a = -1`` when the pair
    contributes nothing (some feature satisfied by neither, or no feature to share).
    """
    if (m | pu) != full:
        return -1, 0.0, 0.0
    a = m & ~pu
    sa = _popcount(a)
    nn = sa + nb_x
    if nn == 0:
        return -1, 0.0, 0.0
    wa = wtab[sa - 1, nn] * v if sa > 0 else 0.0
    return a, wa, wtab[sa, nn] * v


@nb.njit(cache=True)
def _weights(mode, d, s, m, zf, gl_x, gl_w, b0, b1, bg_pat, bg_abv, bg_cnt, inv_nbg, wtab, fb, suf, w, split, pw):
    """Per-feature weights ``w[:d]`` of path (start ``s``, ``d`` features) for the row pattern ``m``.

    With ``split`` (interventional): ``pw[j]``, for the features the row satisfies (bit ``j`` of ``m``), is the part
    of ``w[j]`` from background rows *below* the feature's interval (neither in it nor above: the row's value is
    the larger one, presence). ``pw`` of the other features is left to the caller (their presence depends on
    whether the row is above the interval).
    """
    for j in range(d):
        w[j] = 0.0
        if split:
            pw[j] = 0.0
    if mode == 0:
        nq = (d + 1) // 2
        q0 = nq * (nq - 1) // 2
        for q in range(nq):
            t = gl_x[q0 + q]
            for j in range(d):
                z = zf[s + j]
                fb[j] = z + (((m >> j) & 1) - z) * t
            suf[d] = 1.0
            for j in range(d - 1, -1, -1):
                suf[j] = suf[j + 1] * fb[j]
            pre = gl_w[q0 + q]
            for j in range(d):
                w[j] += pre * suf[j + 1]
                pre *= fb[j]
        for j in range(d):
            w[j] *= ((m >> j) & 1) - zf[s + j]
    else:
        full = (np.int64(1) << d) - 1
        nb_x = d - _popcount(m)
        for b in range(b0, b1):
            pr = bg_pat[b]
            if (m | pr) != full:
                continue
            a = m & ~pr
            sa = _popcount(a)
            n = sa + nb_x
            if n == 0:
                continue
            c = bg_cnt[b]
            wa = wtab[sa - 1, n] * c if sa > 0 else 0.0
            wb = wtab[sa, n] * c
            below = a & ~bg_abv[b]
            for j in range(d):
                if (a >> j) & 1:
                    w[j] += wa
                    if split and (below >> j) & 1:
                        pw[j] += wa
                elif not ((m >> j) & 1):
                    w[j] -= wb
        for j in range(d):
            w[j] *= inv_nbg
            if split:
                pw[j] *= inv_nbg


@nb.njit(cache=True)
def _pd_table(d, s, zf, gl_x, gl_w, tp, tab, fb, suf, w):
    """Path-dependent weights of one path for every pattern, ``tab[tp + (j << d) + m]`` = weight of feature j.

    With Π_q(m) = w_q Π_j F_j(m_j, t_q) built pattern by pattern (one factor swap each), the weight of feature j is
    (m_j − z_j) Σ_q Π_q(m) / F_j(m_j, t_q). A zero factor (zero cover) falls back to prefix/suffix products.
    """
    nq = (d + 1) // 2
    q0 = nq * (nq - 1) // 2
    size = 1 << d
    f0 = np.empty((d, nq))
    f1 = np.empty((d, nq))
    for j in range(d):
        z = zf[s + j]
        for q in range(nq):
            t = gl_x[q0 + q]
            f0[j, q] = z * (1.0 - t)
            f1[j, q] = z + (1.0 - z) * t
    if f0.min() <= 0.0 or f1.min() <= 0.0:
        no_pat = np.zeros(1, np.int64)
        no_cnt = np.zeros(1)
        no_w = np.zeros((1, 1))
        for m in range(size):
            _weights(0, d, s, m, zf, gl_x, gl_w, 0, 0, no_pat, no_pat, no_cnt, 1.0, no_w, fb, suf, w, False, w)
            for j in range(d):
                tab[tp + (j << d) + m] = w[j]
        return
    prod = np.empty((nq, size))
    for q in range(nq):
        acc = gl_w[q0 + q]
        for j in range(d):
            acc *= f0[j, q]
        prod[q, 0] = acc
        for m in range(1, size):
            hb = 63 - _clz(m)
            prod[q, m] = prod[q, m ^ (np.int64(1) << hb)] * (f1[hb, q] / f0[hb, q])
    for j in range(d):
        row = tab[tp + (j << d) : tp + ((j + 1) << d)]
        z = zf[s + j]
        for m in range(size):
            row[m] = 0.0
        for q in range(nq):
            a0 = 1.0 / f0[j, q]
            a1 = 1.0 / f1[j, q]
            pq = prod[q]
            for m in range(size):
                row[m] += pq[m] * (a1 if (m >> j) & 1 else a0)
        for m in range(size):
            row[m] *= ((m >> j) & 1) - z


@nb.njit(cache=True)
def _clz(v):
    n = 0
    while v > 0:
        v >>= 1
        n += 1
    return 64 - n


@nb.njit(parallel=True, cache=True)
def _pd_table_kernel(ptr, zf, p_lo, p_hi, tab_ptr, tab, gl_x, gl_w):
    for p in nb.prange(p_lo, p_hi):
        tp = tab_ptr[p]
        if tp >= 0:
            d = ptr[p + 1] - ptr[p]
            _pd_table(d, ptr[p], zf, gl_x, gl_w, tp, tab, np.empty(d), np.empty(d + 1), np.empty(d))


@nb.njit(parallel=True, cache=True)
def _iv_table_kernel(ptr, p_lo, p_hi, tab_ptr, tab, split, bg_stride, bg_n, bg_pat, bg_abv, bg_cnt, inv_nbg, wtab):
    """Interventional weights of each path for every row pattern.

    With ``split``, each entry ``e`` is interleaved with its presence part (``tab[2e]``, ``tab[2e + 1]``).
    """
    for p in nb.prange(p_lo, p_hi):
        tp = tab_ptr[p]
        if tp < 0:
            continue
        s = ptr[p]
        d = ptr[p + 1] - s
        w = np.empty(d)
        pw = np.empty(d)
        b0 = p * bg_stride
        for m in range(1 << d):
            # (interventional weights use neither the zero fractions nor the quadrature: `w` fills those slots)
            _weights(1, d, s, m, w, w, w, b0, b0 + bg_n[p], bg_pat, bg_abv, bg_cnt, inv_nbg, wtab, w, w, w, split,
                     pw)
            for j in range(d):
                e = tp + (j << d) + m
                if split:  # interleaved; where the row misses feature j its presence part is all (above) or none
                    tab[2 * e] = w[j]
                    tab[2 * e + 1] = pw[j] if (m >> j) & 1 else w[j]
                else:
                    tab[e] = w[j]


@nb.njit(cache=True)
def _step(XT, r0, nr, f, th, want, nan_here, pos, rep, par, cur, apar, acur, above):
    """Row patterns at a node from its parent's, for the rows ``r0 : r0 + nr``.

    Bit ``pos`` of ``cur`` is set iff the row follows the split into this node (ANDed when the feature was split
    on before). With ``above``, bit ``pos`` of ``acur`` is set where the row exceeds the threshold of a split it
    had to go left at (it lies above the feature's interval; NaN never does).
    """
    if rep:
        for i in range(nr):
            x = XT[f, r0 + i]
            isn = x != x
            ok = (((x <= th) == want) & (not isn)) | (isn & nan_here)
            cur[i] = par[i] & ~(np.int64(not ok) << pos)
    else:
        for i in range(nr):
            x = XT[f, r0 + i]
            isn = x != x
            ok = (((x <= th) == want) & (not isn)) | (isn & nan_here)
            cur[i] = par[i] | (np.int64(ok) << pos)
    if above:
        if want:
            for i in range(nr):
                acur[i] = apar[i] | (np.int64(XT[f, r0 + i] > th) << pos)
        else:
            for i in range(nr):
                acur[i] = apar[i]


@nb.njit(cache=True)
def _traversal(left, right, feat, thr, nan_left, node_path, roots):
    """Pre-order walk of every tree, one entry per node, for computing row patterns node by node.

    Per entry: its depth and, for a non-root node, the split leading to it: feature, threshold, whether it is the
    left child, whether NaN goes to it, the bit of that feature in the patterns of the paths below (features are
    numbered by first split from the root, as in the paths) and whether the feature was split on before (then
    the bit is ANDed). ``path`` is the path index at leaves (else -1); ``tree_ptr`` delimits the trees.
    """
    n_nodes = left.shape[0]
    depth = np.zeros(n_nodes, np.int64)
    e_feat = np.zeros(n_nodes, np.int64)
    e_thr = np.zeros(n_nodes)
    e_left = np.zeros(n_nodes, np.bool_)
    e_nan = np.zeros(n_nodes, np.bool_)
    e_pos = np.zeros(n_nodes, np.int64)
    e_rep = np.zeros(n_nodes, np.bool_)
    e_path = np.full(n_nodes, -1, np.int64)
    tree_ptr = np.zeros(roots.shape[0] + 1, np.int64)
    stack = np.empty(n_nodes + 1, np.int64)
    sdepth = np.empty(n_nodes + 1, np.int64)
    on_path = np.empty(n_nodes + 1, np.int64)  # node at each depth of the current root path
    ucount = np.zeros(n_nodes + 2, np.int64)  # unique split features above a node at each depth
    upos = np.zeros(n_nodes + 1, np.int64)  # bit of the split at each depth
    k = 0
    max_depth = 0
    for t in range(roots.shape[0]):
        top = 0
        stack[0] = roots[t]
        sdepth[0] = 0
        while top >= 0:
            node = stack[top]
            dep = sdepth[top]
            top -= 1
            on_path[dep] = node
            depth[k] = dep
            max_depth = max(max_depth, dep)
            if dep > 0:
                par = on_path[dep - 1]
                f = feat[par]
                pos = -1
                for a in range(dep - 1):
                    if feat[on_path[a]] == f:
                        pos = upos[a]
                        break
                if pos >= 0:
                    e_rep[k] = True
                    ucount[dep] = ucount[dep - 1]
                else:
                    pos = ucount[dep - 1]
                    ucount[dep] = ucount[dep - 1] + 1
                upos[dep - 1] = pos
                e_pos[k] = pos
                e_feat[k] = f
                e_thr[k] = thr[par]
                e_left[k] = left[par] == node
                e_nan[k] = nan_left[par] if e_left[k] else not nan_left[par]
            if left[node] >= 0:
                top += 1
                stack[top] = right[node]
                sdepth[top] = dep + 1
                top += 1
                stack[top] = left[node]
                sdepth[top] = dep + 1
            else:
                e_path[k] = node_path[node]
            k += 1
        tree_ptr[t + 1] = k
    return depth, e_feat, e_thr, e_left, e_nan, e_pos, e_rep, e_path, tree_ptr, max_depth


@nb.njit(parallel=True, cache=True)
def _attr_kernel(
    XT, depth, e_feat, e_thr, e_left, e_nan, e_pos, e_rep, e_path, tree_ptr, max_depth, tree_out,
    ptr, feat, zf, val, osel, t_lo, t_hi, tab_ptr, tab,
    mode, bg_stride, bg_n, bg_pat, bg_abv, bg_cnt, inv_nbg, wtab, gl_x, gl_w, tile, dmax, split, out, pout,
):  # fmt: skip
    n = XT.shape[1]
    n_sel = osel.shape[0]
    n_out = val.shape[1]
    n_tiles = (n + tile - 1) // tile
    for ti in nb.prange(n_tiles):
        r0 = ti * tile
        r1 = min(n, r0 + tile)
        nr = r1 - r0
        mstack = np.zeros((max_depth + 1, nr), np.int64)
        astack = np.zeros((max_depth + 1, nr if split else 1), np.int64)  # above-bits (split only)
        vv = np.empty((n_sel, nr))
        wj = np.empty(nr)
        pj = np.empty(nr if split else 1)
        wr = np.empty((dmax, nr))
        pr = np.empty((dmax, nr if split else 1))
        w = np.empty(dmax)
        pw = np.empty(dmax)
        fb = np.empty(dmax)
        suf = np.empty(dmax + 1)
        present = np.zeros(n_out, np.bool_)
        uniform = np.ones(n_sel, np.bool_)  # the tile's rows share output k: one leaf value per path
        vs = np.empty(n_sel)
        for k in range(n_sel):
            for i in range(nr):
                present[osel[k, r0 + i]] = True
                uniform[k] &= osel[k, r0 + i] == osel[k, r0]
        for t in range(t_lo, t_hi):
            to = tree_out[t]
            if to == -2 or (to >= 0 and not present[to]):
                continue
            for e in range(tree_ptr[t], tree_ptr[t + 1]):
                dep = depth[e]
                if dep > 0:
                    _step(XT, r0, nr, e_feat[e], e_thr[e], e_left[e], e_nan[e], e_pos[e], e_rep[e], mstack[dep - 1],
                          mstack[dep], astack[dep - 1], astack[dep], split)
                p = e_path[e]
                if p < 0:
                    continue
                s = ptr[p]
                d = ptr[p + 1] - s
                if d == 0:
                    continue
                mrow = mstack[dep]
                arow = astack[dep]
                tp = tab_ptr[p]
                if tp < 0:
                    b0 = p * bg_stride
                    b1 = b0 + bg_n[p]
                    for i in range(nr):
                        _weights(mode, d, s, mrow[i], zf, gl_x, gl_w, b0, b1, bg_pat, bg_abv, bg_cnt, inv_nbg, wtab,
                                 fb, suf, w, split, pw)
                        for j in range(d):
                            wr[j, i] = w[j]
                        if split:
                            mi = mrow[i]
                            ai = arow[i]
                            for j in range(d):
                                pr[j, i] = pw[j] if (mi >> j) & 1 else w[j] * ((ai >> j) & 1)
                any_nonzero = False
                for k in range(n_sel):
                    if uniform[k]:
                        vs[k] = val[p, osel[k, r0]]
                        any_nonzero |= vs[k] != 0.0
                    else:
                        for i in range(nr):
                            v = val[p, osel[k, r0 + i]]
                            vv[k, i] = v
                            any_nonzero |= v != 0.0
                if not any_nonzero:
                    continue
                for j in range(d):
                    if tp >= 0:
                        base = tp + (j << d)
                        if split:  # the presence entry holds the full weight where the row misses j: kept if above
                            for i in range(nr):
                                mi = mrow[i]
                                e = 2 * (base + mi)
                                wj[i] = tab[e]
                                pj[i] = tab[e + 1] * (((mi | arow[i]) >> j) & 1)
                        else:
                            for i in range(nr):
                                wj[i] = tab[base + mrow[i]]
                    else:
                        for i in range(nr):
                            wj[i] = wr[j, i]
                        if split:
                            for i in range(nr):
                                pj[i] = pr[j, i]
                    f = feat[s + j]
                    for k in range(n_sel):
                        orow = out[k, f, r0:r1]
                        if uniform[k]:
                            v = vs[k]
                            if v == 0.0:
                                continue
                            if split:
                                prow = pout[k, f, r0:r1]
                                for i in range(nr):
                                    orow[i] += wj[i] * v
                                    prow[i] += pj[i] * v
                            else:
                                for i in range(nr):
                                    orow[i] += wj[i] * v
                        else:
                            vk = vv[k]
                            if split:
                                prow = pout[k, f, r0:r1]
                                for i in range(nr):
                                    orow[i] += wj[i] * vk[i]
                                    prow[i] += pj[i] * vk[i]
                            else:
                                for i in range(nr):
                                    orow[i] += wj[i] * vk[i]


@nb.njit(parallel=True, cache=True)
def _pair_kernel(
    XT, depth, e_feat, e_thr, e_left, e_nan, e_pos, e_rep, e_path, tree_ptr, max_depth, tree_out,
    ptr, feat, val, osel, bg_stride, bg_n, bg_pat, order, start, wtab, tile, out,
):  # fmt: skip
    """Interventional SHAP values of every (row, background row) pair toward one output per row (``osel``).

    ``out[i, b, f]`` gets the pair's terms (not averaged over the background); background patterns unweighted.
    """
    n = XT.shape[1]
    n_bg = out.shape[1]
    n_out = val.shape[1]
    n_tiles = (n + tile - 1) // tile
    for ti in nb.prange(n_tiles):
        r0 = ti * tile
        r1 = min(n, r0 + tile)
        nr = r1 - r0
        mstack = np.zeros((max_depth + 1, nr), np.int64)
        nothing = np.zeros((max_depth + 1, 1), np.int64)
        present = np.zeros(n_out, np.bool_)
        for i in range(nr):
            present[osel[r0 + i]] = True
        for t in range(tree_ptr.shape[0] - 1):
            to = tree_out[t]
            if to == -2 or (to >= 0 and not present[to]):
                continue
            for e in range(tree_ptr[t], tree_ptr[t + 1]):
                dep = depth[e]
                if dep > 0:
                    _step(XT, r0, nr, e_feat[e], e_thr[e], e_left[e], e_nan[e], e_pos[e], e_rep[e], mstack[dep - 1],
                          mstack[dep], nothing[0], nothing[0], False)
                p = e_path[e]
                if p < 0:
                    continue
                s = ptr[p]
                d = ptr[p + 1] - s
                if d == 0:
                    continue
                full = (np.int64(1) << d) - 1
                b0 = p * bg_stride
                nu = bg_n[p]
                mrow = mstack[dep]
                for i in range(nr):
                    v = val[p, osel[r0 + i]]
                    if v == 0.0:
                        continue
                    m = mrow[i]
                    nb_x = d - _popcount(m)
                    for u in range(nu):
                        a, wa, wb = _pair_weights(m, bg_pat[b0 + u], full, nb_x, wtab, v)
                        if a < 0:
                            continue
                        q0 = start[b0 + u]
                        q1 = start[b0 + u + 1] if u + 1 < nu else n_bg
                        for j in range(d):
                            if (a >> j) & 1:
                                c = wa
                            elif not ((m >> j) & 1):
                                c = -wb
                            else:
                                continue
                            f = feat[s + j]
                            for q in range(q0, q1):
                                out[r0 + i, order[b0 + q], f] += c


@nb.njit(cache=True)
def _sort_pairs(tp, tq, idx):
    """Order ``idx`` by ``(tp, tq)`` (stable): by ``tp``, then within runs of equal ``tp`` by ``tq``."""
    n = tp.shape[0]
    first = np.argsort(tp, kind="mergesort")
    for q in range(n):
        idx[q] = first[q]
    a0 = 0
    while a0 < n:
        a1 = a0 + 1
        while a1 < n and tp[idx[a1]] == tp[idx[a0]]:
            a1 += 1
        if a1 - a0 > 1:
            sub = idx[a0:a1].copy()
            o = np.argsort(tq[sub], kind="mergesort")
            for q in range(a1 - a0):
                idx[a0 + q] = sub[o[q]]
        a0 = a1


@nb.njit(parallel=True, cache=True)
def _bg_kernel(B, ptr, feat, lo, hi, nan_ok, split, rows, pat, abv, cnt, n_unique, order, start):
    """Distinct background patterns per path (sorted), at offset ``p * n_bg``.

    ``pat``: bit j set iff the row satisfies feature j's interval; with ``split`` also ``abv``: bit j set iff the
    row lies above it (NaN never does), and patterns are distinct pairs ``(pat, abv)``. ``cnt``: how many rows
    have the pattern. With ``rows``, ``order`` lists the rows sorted by pattern and ``start`` where each pattern's
    rows begin.
    """
    n_bg = B.shape[0]
    for p in nb.prange(ptr.shape[0] - 1):
        s = ptr[p]
        d = ptr[p + 1] - s
        tp = np.zeros(n_bg, np.int64)
        tq = np.zeros(n_bg, np.int64)
        for b in range(n_bg):
            mm = np.int64(0)
            qq = np.int64(0)
            for j in range(d):
                x = B[b, feat[s + j]]
                ok = ((x > lo[s + j]) & (x <= hi[s + j])) | (nan_ok[s + j] & (x != x))
                mm |= np.int64(ok) << j
                if split:
                    qq |= np.int64(x > hi[s + j]) << j
            tp[b] = mm
            tq[b] = qq
        base = p * n_bg
        u = -1
        if rows or (split and 2 * d > 62):
            idx = np.empty(n_bg, np.int64)
            if split:
                _sort_pairs(tp, tq, idx)
            else:
                first = np.argsort(tp, kind="mergesort")
                for q in range(n_bg):
                    idx[q] = first[q]
            for q in range(n_bg):
                b = idx[q]
                if rows:
                    order[base + q] = b
                if u < 0 or tp[b] != pat[base + u] or tq[b] != abv[base + u]:
                    u += 1
                    pat[base + u] = tp[b]
                    abv[base + u] = tq[b]
                    cnt[base + u] = 1.0
                    start[base + u] = q
                else:
                    cnt[base + u] += 1.0
        else:  # no order wanted: sort the packed keys
            for b in range(n_bg):
                tp[b] |= tq[b] << d
            tp.sort()
            mask = (np.int64(1) << d) - 1
            for q in range(n_bg):
                if u < 0 or tp[q] != tp[q - 1]:
                    u += 1
                    pat[base + u] = tp[q] & mask
                    abv[base + u] = tp[q] >> d
                    cnt[base + u] = 1.0
                else:
                    cnt[base + u] += 1.0
        n_unique[p] = u + 1


#: largest dense (group, pattern) histogram of a path in :func:`_group_kernel` (else keys are sorted)
HIST_MAX = 1 << 16


@nb.njit(parallel=True, cache=True)
def _group_kernel(XT, ptr, feat, lo, hi, nan_ok, val, own, groups, n_groups, p_lo, p_hi, bg_stride, bg_n, bg_pat,
                  wtab, g_ptr, n_threads, G):
    """Per path of ``p_lo:p_hi``, the sums over each group's rows of their pairs' terms, per background pattern.

    Stored at ``G[g_ptr[p − p_lo] + (k · U_p + u) · d + j]`` (group ``k``, distinct background pattern ``u``).

    The rows are first reduced to their distinct (group, pattern) with summed leaf values (a dense histogram when
    ``n_groups · 2^d ≤ HIST_MAX``, else sorted keys), so the pairs' weights are computed once per distinct
    (group, row pattern, background pattern).
    """
    n = XT.shape[1]
    for t in nb.prange(n_threads):
        pats = np.empty(n, np.int64)
        hist = np.zeros(HIST_MAX)
        seen = np.zeros(HIST_MAX, np.bool_)
        touched = np.empty(n, np.int64)
        keys = np.empty(n, np.int64)
        wts = np.empty(n)
        merged = np.empty(n)
        for p in range(p_lo + t, p_hi, n_threads):
            s = ptr[p]
            d = ptr[p + 1] - s
            nu = bg_n[p]
            if d == 0 or nu == 0:
                continue
            for i in range(n):
                pats[i] = np.int64(groups[i]) << d
            for j in range(d):  # feature by feature over contiguous rows of XT
                xf = XT[feat[s + j]]
                lj, hj, nj = lo[s + j], hi[s + j], nan_ok[s + j]
                for i in range(n):
                    x = xf[i]
                    pats[i] |= np.int64(((x > lj) & (x <= hj)) | (nj & (x != x))) << j
            cnt = 0
            for i in range(n):
                v = val[p, own[i]]
                if v != 0.0:
                    keys[cnt] = pats[i]
                    wts[cnt] = v
                    cnt += 1
            if cnt == 0:
                continue
            n_keys = 0
            if (np.int64(n_groups) << d) <= HIST_MAX:  # dense histogram, reset where touched
                for q in range(cnt):
                    key = keys[q]
                    if not seen[key]:
                        seen[key] = True
                        touched[n_keys] = key
                        n_keys += 1
                    hist[key] += wts[q]
                for q in range(n_keys):
                    key = touched[q]
                    keys[q] = key
                    wts[q] = hist[key]
                    hist[key] = 0.0
                    seen[key] = False
            else:  # sorted keys, runs summed
                order = np.argsort(keys[:cnt])
                for q in range(cnt):
                    key = keys[order[q]]
                    if n_keys > 0 and touched[n_keys - 1] == key:
                        merged[n_keys - 1] += wts[order[q]]
                    else:
                        touched[n_keys] = key
                        merged[n_keys] = wts[order[q]]
                        n_keys += 1
                for q in range(n_keys):
                    keys[q] = touched[q]
                    wts[q] = merged[q]
            full = (np.int64(1) << d) - 1
            base = g_ptr[p - p_lo]
            b0 = p * bg_stride
            for q in range(n_keys):
                c = wts[q]
                if c == 0.0:
                    continue
                m = keys[q] & full
                k = keys[q] >> d
                nb_x = d - _popcount(m)
                for u in range(nu):
                    a, wa, wb = _pair_weights(m, bg_pat[b0 + u], full, nb_x, wtab, c)
                    if a < 0:
                        continue
                    off = base + (k * nu + u) * d
                    for j in range(d):
                        if (a >> j) & 1:
                            G[off + j] += wa
                        elif not ((m >> j) & 1):
                            G[off + j] -= wb


@nb.njit(parallel=True, cache=True)
def _group_scatter_kernel(ptr, feat, p_lo, p_hi, bg_stride, bg_n, pattern_of, g_ptr, G, S):
    """``S[k, b, f] += G[…, (k, u, j)]`` for every background row ``b`` (its pattern ``u`` on each path).

    Parallel over groups, paths outermost: a path's sums and a group's ``B × F`` slice of ``S`` stay in cache.
    """
    n_groups, n_bg = S.shape[0], S.shape[1]
    for k in nb.prange(n_groups):
        Sk = S[k]
        for p in range(p_lo, p_hi):
            nu = bg_n[p]
            s = ptr[p]
            d = ptr[p + 1] - s
            if nu == 0 or d == 0:
                continue
            base = g_ptr[p - p_lo] + k * nu * d
            pb = p * bg_stride
            for b in range(n_bg):
                off = base + pattern_of[pb + b] * d
                for j in range(d):
                    Sk[b, feat[s + j]] += G[off + j]


@nb.njit(cache=True)
def _patterns_of_rows(bg_n, order, start, n_bg, out):
    """``out[p * n_bg + b]`` = index of background row ``b``'s distinct pattern on path ``p``."""
    for p in range(bg_n.shape[0]):
        nu = bg_n[p]
        base = p * n_bg
        for u in range(nu):
            q1 = start[base + u + 1] if u + 1 < nu else n_bg
            for q in range(start[base + u], q1):
                out[base + order[base + q]] = u


@nb.njit(parallel=True, cache=True)
def _predict_kernel(X, left, right, feat, thr, nan_left, node_path, roots, val, out):
    n = X.shape[0]
    n_out = val.shape[1]
    for r in nb.prange(n):
        for t in range(roots.shape[0]):
            node = roots[t]
            while left[node] >= 0:
                x = X[r, feat[node]]
                if x != x:
                    go_left = nan_left[node]
                else:
                    go_left = x <= thr[node]
                node = left[node] if go_left else right[node]
            p = node_path[node]
            for k in range(n_out):
                out[r, k] += val[p, k]


@nb.njit(parallel=True, cache=True)
def _interaction_kernel(X, ptr, feat, lo, hi, nan_ok, zf, val, osel, gl_x, gl_w, dmax, out):
    n = X.shape[0]
    n_sel = osel.shape[1]
    for r in nb.prange(n):
        o = np.empty(dmax)
        fb = np.empty(dmax)
        suf = np.empty(dmax + 1)
        integral = np.empty((dmax, dmax))
        for p in range(ptr.shape[0] - 1):
            s = ptr[p]
            d = ptr[p + 1] - s
            if d == 0:
                continue
            nonzero = False
            for k in range(n_sel):
                if val[p, osel[r, k]] != 0.0:
                    nonzero = True
            if not nonzero:
                continue
            for j in range(d):
                x = X[r, feat[s + j]]
                ok = ((x > lo[s + j]) & (x <= hi[s + j])) | (nan_ok[s + j] & (x != x))
                o[j] = 1.0 if ok else 0.0
            for i in range(d):
                for j in range(d):
                    integral[i, j] = 0.0
            nq = (d + 1) // 2
            q0 = nq * (nq - 1) // 2
            for q in range(nq):
                t = gl_x[q0 + q]
                wq = gl_w[q0 + q]
                for j in range(d):
                    fb[j] = zf[s + j] + (o[j] - zf[s + j]) * t
                # integral[i, i] = ∫ Π_{k≠i} F_k ; integral[i, j] = ∫ Π_{k∉{i,j}} F_k
                for i in range(d):
                    suf[d] = 1.0
                    for j in range(d - 1, -1, -1):
                        suf[j] = suf[j + 1] * (1.0 if j == i else fb[j])
                    pre = wq
                    for j in range(d):
                        if j == i:
                            integral[i, i] += pre * suf[j + 1]
                        else:
                            integral[i, j] += pre * suf[j + 1]
                            pre *= fb[j]
            for k in range(n_sel):
                v = val[p, osel[r, k]]
                if v == 0.0:
                    continue
                for i in range(d):
                    fi = feat[s + i]
                    dzi = o[i] - zf[s + i]
                    acc = 0.0
                    for j in range(d):
                        if j != i:
                            phij = 0.5 * v * dzi * (o[j] - zf[s + j]) * integral[i, j]
                            out[r, k, fi, feat[s + j]] += phij
                            acc += phij
                    out[r, k, fi, fi] += v * dzi * integral[i, i] - acc


# ----------------------------------------------------------------------------------------------------------------------
# wrappers


def _as_float64(X: np.ndarray, n_features: int, what: str = "X") -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"{what} has shape {X.shape}; the model expects {n_features} features per row.")
    return X


def predict(paths, X: np.ndarray) -> np.ndarray:
    """Raw model output (rows × outputs, float64) of the ensemble on ``X`` (already :meth:`prepare_input`-ed)."""
    X = _as_float64(X, paths.n_features)
    out = np.zeros((X.shape[0], paths.n_outputs))
    if paths.n_trees:
        _predict_kernel(
            X, paths.node_left, paths.node_right, paths.node_feature, paths.node_threshold,
            paths.node_nan_left, paths.node_path, paths.tree_root, paths.leaf_value, out,
        )  # fmt: skip
    return out + paths.base_offset


def expected_value(paths, background: np.ndarray | None = None) -> np.ndarray:
    """Expected model output per output: path-dependent (covers) or the mean over ``background`` rows."""
    if background is None:
        return paths.expected_value()
    return predict(paths, background).mean(axis=0)


@dataclass
class _Background:
    """Background patterns per path for the kernels (see :func:`_bg_kernel`); ``mode`` 0: path-dependent."""

    mode: int
    stride: int
    n_unique: np.ndarray
    pat: np.ndarray
    abv: np.ndarray
    cnt: np.ndarray
    inv_n: float
    order: np.ndarray
    start: np.ndarray

    def args(self) -> tuple:
        """``(mode, bg_stride, bg_n, bg_pat, bg_abv, bg_cnt, inv_nbg)`` in the kernels' order."""
        return self.mode, self.stride, self.n_unique, self.pat, self.abv, self.cnt, self.inv_n


def _background_patterns(paths, background: np.ndarray | None, *, split: bool = False,
                         rows: bool = False) -> _Background:
    """The kernels' background (``None``: path-dependent); ``rows``: also the rows of each pattern."""
    if background is None:
        none = np.zeros(1, np.int64)
        return _Background(0, 0, np.zeros(paths.n_paths, np.int64), none, none, np.zeros(1), 1.0, none, none)
    B = _as_float64(background, paths.n_features, "background")
    if B.shape[0] == 0:
        raise ValueError("The background is empty.")
    n_bg = B.shape[0]
    size = paths.n_paths * n_bg
    pat, abv, order, start = (np.zeros(size, np.int64) for _ in range(4))
    cnt = np.zeros(size)
    n_unique = np.zeros(paths.n_paths, np.int64)
    _bg_kernel(B, paths.path_ptr, paths.feature, paths.lower, paths.upper, paths.nan_ok, split, rows, pat, abv, cnt,
               n_unique, order, start)
    return _Background(1, n_bg, n_unique, pat, abv, cnt, 1.0 / n_bg, order, start)


def _tree_chunks(tree_paths_ptr: np.ndarray, sizes: np.ndarray, n_chunks_min: int) -> list[tuple[int, int]]:
    """Consecutive tree ranges whose pattern tables fit :data:`TABLE_BUDGET` (at least ``n_chunks_min`` ranges)."""
    per_tree = np.add.reduceat(sizes, tree_paths_ptr[:-1]) if sizes.size else np.zeros(0, np.int64)
    per_tree = np.where(np.diff(tree_paths_ptr) > 0, per_tree, 0)
    n = len(per_tree)
    cap = max(1, -(-n // max(n_chunks_min, 1)))
    chunks, start, acc = [], 0, 0
    for t in range(n):
        if t > start and (acc + per_tree[t] > TABLE_BUDGET or t - start >= cap):
            chunks.append((start, t))
            start, acc = t, 0
        acc += per_tree[t]
    if n:
        chunks.append((start, n))
    return chunks


def _tree_outputs(paths) -> np.ndarray:
    """Per tree: the one output its leaves feed (boosting), -1 for several (forests), -2 for none."""
    nonzero = np.zeros((paths.n_trees, paths.n_outputs), dtype=bool)
    np.logical_or.at(nonzero, paths.path_tree, paths.leaf_value != 0)
    count = nonzero.sum(axis=1)
    return np.where(count == 0, -2, np.where(count == 1, nonzero.argmax(axis=1), -1)).astype(np.int64)


def _prepare(paths, X: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    check_depth(paths)
    X = _as_float64(X, paths.n_features)
    outputs = np.ascontiguousarray(np.asarray(outputs, dtype=np.int64).reshape(X.shape[0], -1))
    if outputs.size and (outputs.min() < 0 or outputs.max() >= paths.n_outputs):
        raise ValueError(f"`outputs` must index the model's {paths.n_outputs} outputs.")
    return X, outputs


def _walk(paths) -> tuple:
    return _traversal(
        paths.node_left, paths.node_right, paths.node_feature, paths.node_threshold, paths.node_nan_left,
        paths.node_path, paths.tree_root,
    )  # fmt: skip


def _explain(paths, X, outputs, bg: _Background, *, table, progress,
             split: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """SHAP values ``n × C × F`` (and their presence part with ``split``) of prepared rows against ``bg``."""
    n, n_sel = outputs.shape
    result = np.zeros((n, n_sel, paths.n_features))
    presence = np.zeros_like(result) if split else None
    if n == 0 or paths.n_paths == 0:
        return result, presence
    tree_out = _tree_outputs(paths)
    # rows sorted by their explained output: trees of other classes (boosting) are skipped per tile
    order = np.lexsort(outputs.T[::-1])
    XT = np.ascontiguousarray(X[order].T)
    osel = np.ascontiguousarray(outputs[order].T)
    walk = _walk(paths)
    lengths = paths.path_length
    capped = np.minimum(lengths, TABLE_MAX_FEATURES)
    if table is None:
        use_table = (lengths > 0) & (lengths <= TABLE_MAX_FEATURES) & ((1 << capped) <= n)
    else:
        use_table = (lengths > 0) & (lengths <= TABLE_MAX_FEATURES) & bool(table)
    sizes = np.where(use_table, lengths.astype(np.int64) << capped, 0)
    tree_paths_ptr = np.searchsorted(paths.path_tree, np.arange(paths.n_trees + 1))
    dmax = max(paths.max_unique_features, 1)
    # rows per tile: at least 4 tiles per thread, and the tile's outputs within 512 KiB (cache)
    tile_cap = (1 << 16) // max(n_sel * paths.n_features * (2 if split else 1), 1)
    tile = int(np.clip(min(-(-n // (4 * nb.get_num_threads())), tile_cap), 16, 1024))
    out = np.zeros((n_sel, paths.n_features, n))
    pout = np.zeros_like(out) if split else np.zeros((1, 1, 1))
    chunks = _tree_chunks(tree_paths_ptr, sizes * (2 if split else 1), 8 if progress is not None else 1)
    bg_args = bg.args()
    for t_lo, t_hi in progress(chunks) if progress is not None else chunks:
        p_lo, p_hi = tree_paths_ptr[t_lo], tree_paths_ptr[t_hi]
        chunk_sizes = sizes[p_lo:p_hi]
        tab_ptr = np.full(paths.n_paths, -1, np.int64)
        tab_ptr[p_lo:p_hi] = np.where(use_table[p_lo:p_hi], np.cumsum(chunk_sizes) - chunk_sizes, -1)
        tab = np.empty(max(int(chunk_sizes.sum()) * (2 if split else 1), 1))
        if chunk_sizes.any() and bg.mode == 0:
            _pd_table_kernel(paths.path_ptr, paths.zero_fraction, p_lo, p_hi, tab_ptr, tab, _GL_X, _GL_W)
        elif chunk_sizes.any():
            _iv_table_kernel(paths.path_ptr, p_lo, p_hi, tab_ptr, tab, split, *bg_args[1:], _W)
        _attr_kernel(
            XT, *walk, tree_out, paths.path_ptr, paths.feature, paths.zero_fraction, paths.leaf_value, osel,
            t_lo, t_hi, tab_ptr, tab, *bg_args, _W, _GL_X, _GL_W, tile, dmax, split, out, pout,
        )  # fmt: skip
    result[order] = out.transpose(2, 0, 1)
    if split:
        presence[order] = pout.transpose(2, 0, 1)
    return result, presence


def shap_values(
    paths,
    X: np.ndarray,
    outputs: np.ndarray,
    *,
    background: np.ndarray | None = None,
    table: bool | None = None,
    progress: Progress = None,
) -> np.ndarray:
    """Exact SHAP values of each row toward the listed outputs.

    Parameters
    ----------
    paths
        The ensemble (:class:`~scexplain.models._trees.TreePaths`).
    X
        ``n × n_features`` rows, float64 after :meth:`TreePaths.prepare_input` (finite or NaN).
    outputs
        ``n × C`` output indices to explain for each row.
    background
        ``None`` for path-dependent TreeSHAP; else ``B × n_features`` rows (prepared like ``X``) for interventional
        TreeSHAP against them.
    table
        Use pattern tables: ``None`` decides per path (2^|U| ≤ rows), ``True``/``False`` force it (for tests).
    progress
        Optional wrapper of the iterable of tree chunks (e.g. a progress bar).

    Returns
    -------
    ``n × C × n_features`` float64 SHAP values: ``values.sum(-1) == f(x)[outputs] − expected_value[outputs]``.
    """
    X, outputs = _prepare(paths, X, outputs)
    return _explain(paths, X, outputs, _background_patterns(paths, background), table=table, progress=progress,
                    split=False)[0]


def split_values(
    paths,
    X: np.ndarray,
    outputs: np.ndarray,
    *,
    background: np.ndarray,
    table: bool | None = None,
    progress: Progress = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Interventional SHAP values and their *presence* part, in one pass.

    Each (row, background row) pair's term of feature j goes to presence when the row's value is the larger one,
    x_j > b_j (a missing value counts as the smallest); the rest is absence. Trees see a feature only through its
    intervals, so the sign is read from them: a term of j exists only when one of x, b lies in the path's
    interval of j and the other outside, and then x is the larger iff b lies below the interval or x above it.

    Returns
    -------
    ``(values, presence)``, both ``n × C × n_features`` float64; arguments as in :func:`shap_values`.
    """
    if background is None:
        raise ValueError("The presence split of the engine is interventional: pass `background`.")
    X, outputs = _prepare(paths, X, outputs)
    bg = _background_patterns(paths, background, split=True)
    values, presence = _explain(paths, X, outputs, bg, table=table, progress=progress, split=True)
    return values, presence


def pair_values(paths, X: np.ndarray, outputs: np.ndarray, *, background: np.ndarray) -> np.ndarray:
    """Interventional SHAP values of every (row, background row) pair toward one output per row.

    Parameters
    ----------
    outputs
        ``n`` output indices (one per row).

    Returns
    -------
    ``n × B × n_features`` float64 values φ_ib; their mean over ``b`` is :func:`shap_values` against the whole
    background, and each pair sums to ``f(x_i) − f(b)`` of its output.
    """
    X, outputs = _prepare(paths, X, outputs)
    if outputs.shape[1] != 1:
        raise ValueError("`pair_values` explains one output per row: pass `outputs` of shape (n,) or (n, 1).")
    bg = _background_patterns(paths, background, rows=True)
    n = X.shape[0]
    out = np.zeros((n, bg.stride, paths.n_features))
    if n == 0 or paths.n_paths == 0:
        return out
    tile = int(np.clip(-(-n // (4 * nb.get_num_threads())), 1, 64))
    _pair_kernel(
        np.ascontiguousarray(X.T), *_walk(paths), _tree_outputs(paths), paths.path_ptr, paths.feature,
        paths.leaf_value, np.ascontiguousarray(outputs[:, 0]), bg.stride, bg.n_unique, bg.pat, bg.order, bg.start,
        _W, tile, out,
    )  # fmt: skip
    return out


#: float64 elements of the per-path group sums kept at once by :func:`group_sums` (paths are processed in chunks)
GROUP_BUDGET = 1 << 23


def group_sums(paths, X: np.ndarray, outputs: np.ndarray, groups: np.ndarray, n_groups: int, *,
               background: np.ndarray) -> np.ndarray:
    """Per-(group, background row) sums of the pairs' interventional SHAP values, ``S[k, b] = Σ_{i∈k} φ_ib``.

    Without forming the pairs: per path, the rows are reduced to their distinct (group, pattern) with summed leaf
    values, the pair weights are computed once per distinct (group, row pattern, background pattern), and
    scattered to the background rows of each pattern.

    Parameters
    ----------
    outputs
        ``n`` output indices (one per row).
    groups
        ``n`` group codes in ``[0, n_groups)``.

    Returns
    -------
    ``n_groups × B × n_features`` float64; ``S.sum(1) / B`` is the sum of :func:`shap_values` over each group.
    """
    X, outputs = _prepare(paths, X, outputs)
    if outputs.shape[1] != 1:
        raise ValueError("`group_sums` explains one output per row: pass `outputs` of shape (n,) or (n, 1).")
    groups = np.ascontiguousarray(groups, dtype=np.int64)
    bg = _background_patterns(paths, background, rows=True)
    n_bg = bg.stride
    S = np.zeros((n_groups, n_bg, paths.n_features))
    if X.shape[0] == 0 or paths.n_paths == 0:
        return S
    if n_groups > 1 and paths.max_unique_features + int(np.ceil(np.log2(n_groups))) > MAX_PATH_FEATURES:
        raise ValueError(f"{n_groups} groups and paths of {paths.max_unique_features} features exceed the "
                         "engine's 62-bit keys; use fewer groups or shallower trees.")
    pattern_of = np.zeros(paths.n_paths * n_bg, np.int64)
    _patterns_of_rows(bg.n_unique, bg.order, bg.start, n_bg, pattern_of)
    sizes = n_groups * bg.n_unique * paths.path_length
    bounds = np.searchsorted(np.cumsum(sizes), np.arange(1, -(-int(sizes.sum()) // GROUP_BUDGET) + 1) * GROUP_BUDGET)
    edges = np.unique(np.concatenate([[0], np.minimum(bounds + 1, paths.n_paths), [paths.n_paths]]))
    threads = nb.get_num_threads()
    XT = np.ascontiguousarray(X.T)
    for p_lo, p_hi in itertools.pairwise(edges):
        g_ptr = np.concatenate([[0], np.cumsum(sizes[p_lo:p_hi])]).astype(np.int64)
        G = np.zeros(max(int(g_ptr[-1]), 1))
        _group_kernel(XT, paths.path_ptr, paths.feature, paths.lower, paths.upper, paths.nan_ok, paths.leaf_value,
                      np.ascontiguousarray(outputs[:, 0]), groups, n_groups, p_lo, p_hi, n_bg, bg.n_unique, bg.pat,
                      _W, g_ptr, threads, G)
        _group_scatter_kernel(paths.path_ptr, paths.feature, p_lo, p_hi, n_bg, bg.n_unique, pattern_of, g_ptr, G, S)
    return S


def interaction_values(paths, X: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Exact path-dependent SHAP interaction values (``n × C × F × F``, float64) toward the listed outputs.

    Rows sum to the SHAP values: ``values.sum(-1) == shap_values(paths, X, outputs)``.
    """
    check_depth(paths)
    X = _as_float64(X, paths.n_features)
    outputs = np.ascontiguousarray(np.asarray(outputs, dtype=np.int64).reshape(X.shape[0], -1))
    if outputs.size and (outputs.min() < 0 or outputs.max() >= paths.n_outputs):
        raise ValueError(f"`outputs` must index the model's {paths.n_outputs} outputs.")
    out = np.zeros((X.shape[0], outputs.shape[1], paths.n_features, paths.n_features))
    if X.shape[0] and paths.n_paths:
        _interaction_kernel(
            X, paths.path_ptr, paths.feature, paths.lower, paths.upper, paths.nan_ok, paths.zero_fraction,
            paths.leaf_value, outputs, _GL_X, _GL_W, max(paths.max_unique_features, 1), out,
        )  # fmt: skip
    return out
