"""The command line on a dask cluster: dask's own ``DASK_SCHEDULER_ADDRESS`` setting is honoured."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["scheduler_client"]


@contextmanager
def scheduler_client() -> Iterator[object | None]:
    """A ``distributed.Client`` of the scheduler dask's config names (``DASK_SCHEDULER_ADDRESS``), else ``None``.

    While it is open, ``tl`` functions run one task per block of a dask-backed input on the cluster's workers.
    """
    import dask

    address = dask.config.get("scheduler-address", None)
    if not address:
        yield None
        return
    try:
        from distributed import Client
    except ImportError as err:  # pragma: no cover - distributed comes with the dask extra
        raise ImportError(
            f"DASK_SCHEDULER_ADDRESS is set ({address}) but dask.distributed is not installed: "
            "pip install 'scexplain[dask]', or unset it."
        ) from err
    with Client(address, timeout="30s") as client:
        yield client
