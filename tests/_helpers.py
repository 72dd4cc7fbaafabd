"""Assertions shared by tests (importable: `tests` is on pytest's pythonpath)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def assert_adata_equal(a, b) -> None:
    """Deep equality of two AnnData objects (X, layers, obs, var, obsm, varm, uns)."""
    assert a.shape == b.shape
    np.testing.assert_array_equal(_dense(a.X), _dense(b.X))
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    for attr in ("layers", "obsm", "varm"):
        da, db = getattr(a, attr), getattr(b, attr)
        assert set(da.keys()) == set(db.keys()), attr
        for k in da.keys():
            assert_value_equal(da[k], db[k])
    assert_value_equal(dict(a.uns), dict(b.uns))


def _dense(x):
    return x.toarray() if hasattr(x, "toarray") else np.asarray(x)


def assert_value_equal(x, y, path: str = "") -> None:
    """Recursive equality for what AnnData stores (dicts, arrays, recarrays, DataFrames, scalars)."""
    if isinstance(x, dict):
        assert isinstance(y, dict), path
        assert set(x) == set(y), f"{path}: keys {set(x) ^ set(y)}"
        for k in x:
            assert_value_equal(x[k], y[k], f"{path}/{k}")
    elif isinstance(x, pd.DataFrame):
        pd.testing.assert_frame_equal(x, y, obj=path)
    elif isinstance(x, np.ndarray) and x.dtype.names:
        assert tuple(x.dtype.names) == tuple(y.dtype.names), path
        for name in x.dtype.names:
            assert_value_equal(np.asarray(x[name]), np.asarray(y[name]), f"{path}[{name}]")
    elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        xa, ya = np.asarray(x), np.asarray(y)
        assert xa.shape == ya.shape, path
        if xa.dtype.kind in "OUST" or ya.dtype.kind in "OUST":  # T: numpy's StringDType (zarr v3 strings)
            assert [str(v) for v in xa.ravel()] == [str(v) for v in ya.ravel()], path
        else:
            np.testing.assert_array_equal(xa, ya, err_msg=path)
    elif hasattr(x, "toarray"):
        np.testing.assert_array_equal(x.toarray(), y.toarray(), err_msg=path)
    else:
        assert x == y or (x != x and y != y), f"{path}: {x!r} != {y!r}"
