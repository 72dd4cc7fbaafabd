"""``--threads N``: keep a command within ``N`` CPU threads (torch, numba, BLAS/OpenMP, dask's local scheduler).

Galaxy passes ``${GALAXY_SLOTS}`` and nf-core ``task.cpus``; a tool that starts one thread per core of a shared node
slows every other job on it. The limit is set in three ways, so that it holds whatever is imported when:

* environment variables read by the libraries when they load (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
  ``OPENBLAS_NUM_THREADS``, ``NUMBA_NUM_THREADS``, ``DASK_NUM_WORKERS``, ...), set before the command imports them;
* the runtime setters of libraries already loaded (``torch.set_num_threads``, ``numba.set_num_threads``,
  dask's ``num_workers``);
* :func:`threadpoolctl.threadpool_limits` for the BLAS and OpenMP pools loaded so far.

Everything is restored when the block ends (the CLI's ``main`` can run in-process, e.g. in tests).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["ENV_VARS", "available_cores", "effective_limits", "limit_threads"]

#: environment variables that bound the thread pools of the libraries scexplain loads
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS", "DASK_NUM_WORKERS")


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


@contextmanager
def limit_threads(n: int) -> Iterator[None]:
    """Run the block with at most ``n`` threads in each pool (see the module docstring)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"--threads must be a positive integer, got {n!r}.")
    saved = {k: os.environ.get(k) for k in ENV_VARS}
    os.environ.update(dict.fromkeys(ENV_VARS, str(n)))
    try:
        with _RuntimeLimits(n):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _RuntimeLimits:
    """The pools of the libraries loaded when the block starts, set to ``n`` threads and restored at its end.

    Libraries imported inside the block read the environment variables set by :func:`limit_threads`.
    """

    def __init__(self, n: int):
        self.n = n
        self._undo: list[Callable[[], object]] = []

    def __enter__(self):
        n = self.n
        torch = sys.modules.get("torch")
        if torch is not None:
            old_torch = torch.get_num_threads()
            torch.set_num_threads(n)
            self._undo.append(lambda: torch.set_num_threads(old_torch))
        numba = sys.modules.get("numba")
        if numba is not None:
            old_numba = numba.get_num_threads()
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
            self._undo.append(lambda: numba.set_num_threads(old_numba))
        dask = sys.modules.get("dask")
        if dask is not None and hasattr(dask, "config"):
            setting = dask.config.set(num_workers=n)
            self._undo.append(lambda: setting.__exit__(None, None, None))
        if "numpy" in sys.modules:
            from threadpoolctl import threadpool_limits

            self._undo.append(threadpool_limits(limits=n).restore_original_limits)
        return self

    def __exit__(self, *exc):
        for undo in reversed(self._undo):
            undo()
        return False


def effective_limits() -> dict[str, int]:
    """The thread limits in force now, per pool of the loaded libraries (``torch``, ``numba``, BLAS/OpenMP)."""
    out: dict[str, int] = {}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = int(torch.get_num_threads())
    numba = sys.modules.get("numba")
    if numba is not None:
        out["numba"] = int(numba.get_num_threads())
    if "numpy" in sys.modules:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            key = f"{pool['user_api']}:{pool['internal_api']}"
            out[key] = max(out.get(key, 0), int(pool["num_threads"]))
    return out
