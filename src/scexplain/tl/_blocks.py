"""One map/reduce over blocks of cells, for every method (DESIGN.md "Data flow").

A *block function* takes a block of cells — its rows of the input matrix and their global indices — and returns a
:class:`BlockOutput`: the block's attributions (``layers``: rows × width arrays), partial reductions that add up over
blocks (``sums``: per-group sums of φ and |φ|, counts, ...) and per-cell values (``cells``: additivity errors,
summaries, ...). :func:`map_reduce` runs it over every block and combines the results in block order:

- in memory (numpy or scipy matrices): a loop over row ranges; layers are assembled in memory;
- a dask array: the array's own row chunks, each read and computed exactly once (the next block is read while one
  is explained); each block's attributions are written to a zarr *spill* store during the pass and the layers are
  returned as dask arrays read back from it, so that ``write_zarr``/``write_h5ad`` stream them without recomputing
  and the driver's memory does not grow with the number of cells;
- with an active ``distributed.Client`` (or ``DASK_SCHEDULER_ADDRESS``, which the CLI honours): one task per block
  on the workers. The block function (model, background, ...) is broadcast once per worker, torch/numba threads
  are set to the worker's threads, the workers write the spill store themselves (a shared filesystem), and only
  the small reductions come back to the client.

Sums are added in block order and per-cell values concatenated in block order, whatever order blocks finish in, so
results do not depend on the scheduler or the number of workers. Seeds depend on global cell indices only (block
functions get them).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._progress import progress_iter

__all__ = ["BlockOutput", "Reduced", "is_dask", "map_reduce", "spill_dir"]

logger = logging.getLogger("scexplain")

BlockFunction = Callable[..., "BlockOutput"]


@dataclass
class BlockOutput:
    """What a block function returns for one block of ``n`` cells.

    Attributes
    ----------
    layers
        ``n × width`` arrays by name (cast to float32): the block's rows of each result layer.
    sums
        Arrays added up over blocks (float64), e.g. per-group sums of attributions.
    cells
        Per-cell arrays (first axis ``n``), concatenated over blocks in cell order.
    """

    layers: dict[str, np.ndarray] = field(default_factory=dict)
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    cells: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Reduced:
    """The combined result: full layers (numpy, or dask arrays read from the spill store), sums, per-cell arrays."""

    layers: dict[str, object]
    sums: dict[str, np.ndarray]
    cells: dict[str, np.ndarray]
    n_blocks: int
    n_rows: int


def is_dask(X) -> bool:
    """Whether ``X`` is a dask array."""
    return hasattr(X, "dask") and hasattr(X, "chunks")


# --- spill store -------------------------------------------------------------------------------------------------
_SPILLS: list[Path] = []
_SPILL_LOCK = threading.Lock()


def spill_dir() -> Path:
    """Folder of the spill stores: dask's ``temporary-directory`` setting, else the system's temporary folder.

    On ``dask.distributed`` it must be on a filesystem the workers share with the client.
    """
    import dask

    base = dask.config.get("temporary-directory", None) or tempfile.gettempdir()
    return Path(base)


def _new_spill() -> Path:
    root = spill_dir()
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="scexplain-spill-", dir=root))
    with _SPILL_LOCK:
        _SPILLS.append(path)
    return path


@atexit.register
def _remove_spills() -> None:  # pragma: no cover - runs at interpreter exit
    for path in _SPILLS:
        shutil.rmtree(path, ignore_errors=True)


def _spill_path(root: str, name: str, block: int) -> str:
    return os.path.join(root, name, f"{block:06d}.zarr")


def _write_spill(root: str, block: int, layers: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Write each layer of a block to its own zarr array; returns their shapes."""
    import zarr

    shapes = {}
    for name, value in layers.items():
        arr = zarr.create_array(
            store=_spill_path(root, name, block), shape=value.shape, chunks=value.shape, dtype=np.float32,
            overwrite=True,
        )
        arr[...] = value
        shapes[name] = value.shape
    return shapes


def _read_spill(root: str, name: str, shapes: list[tuple[int, ...]]):
    """A dask array of layer ``name`` over all blocks, read back from the spill store (one chunk per block)."""
    import dask.array as da
    import zarr

    parts = [da.from_zarr(zarr.open_array(_spill_path(root, name, b), mode="r")) for b in range(len(shapes))]
    return da.concatenate(parts, axis=0)


# --- blocks ---------------------------------------------------------------------------------------------------------
def _row_blocks(X, block_rows: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each block: the dask array's own row chunks, else ranges of ``block_rows`` rows."""
    n = X.shape[0]
    if is_dask(X):
        bounds = np.cumsum((0, *X.chunks[0]))
        return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]
    return [(s, min(s + block_rows, n)) for s in range(0, n, block_rows)]


def _dense_block(x) -> np.ndarray | object:
    """A computed block: dask chunks are computed; sparse blocks stay sparse (the block function densifies)."""
    if hasattr(x, "compute"):
        x = x.compute(scheduler="threads")
    return x


class _Combiner:
    """Adds sums and collects per-cell arrays in block order, whatever order blocks arrive in."""

    def __init__(self, n_blocks: int):
        self.n_blocks = n_blocks
        self.sums: dict[str, np.ndarray] = {}
        self.cells: dict[str, list[np.ndarray]] = {}
        self._pending: dict[int, BlockOutput] = {}
        self._next = 0

    def add(self, index: int, out: BlockOutput) -> None:
        self._pending[index] = out
        while self._next in self._pending:
            part = self._pending.pop(self._next)
            for k, v in part.sums.items():
                v = np.asarray(v, dtype=np.float64)
                self.sums[k] = v.copy() if k not in self.sums else self.sums[k] + v
            for k, v in part.cells.items():
                self.cells.setdefault(k, []).append(np.asarray(v))
            self._next += 1

    def cells_concatenated(self) -> dict[str, np.ndarray]:
        if self._next != self.n_blocks:  # pragma: no cover - every block is added before this is called
            raise RuntimeError(f"{self.n_blocks - self._next} blocks were not combined.")
        return {k: np.concatenate(v, axis=0) for k, v in self.cells.items()}


def _client():
    """The active ``distributed.Client``, or ``None``."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def map_reduce(X, fn: BlockFunction, *, block_rows: int, desc: str, progress: bool = True) -> Reduced:
    """Run ``fn(x_block, rows)`` over the blocks of ``X`` and combine the results in block order.

    Parameters
    ----------
    X
        cells × features input (numpy, scipy sparse, or dask array chunked along cells).
    fn
        The block function: ``fn(x_block, rows) -> BlockOutput`` with ``x_block`` the block's rows of ``X``
        (numpy or scipy sparse) and ``rows`` their global indices. It must be picklable for ``dask.distributed``.
    block_rows
        Rows per block for in-memory inputs (a dask array uses its own chunks).
    desc, progress
        Progress bar over blocks.

    Returns
    -------
    The combined :class:`Reduced`.
    """
    if is_dask(X) and len(X.chunks[1]) > 1:
        X = X.rechunk({1: -1})  # a block holds all features of its cells
    blocks = _row_blocks(X, block_rows)
    combiner = _Combiner(len(blocks))
    if not is_dask(X):
        layers: dict[str, np.ndarray] = {}
        for b, (start, stop) in enumerate(progress_iter(blocks, total=len(blocks), desc=desc, enabled=progress)):
            out = fn(X[start:stop], np.arange(start, stop))
            for name, value in out.layers.items():
                if name not in layers:
                    layers[name] = np.zeros((X.shape[0], value.shape[1]), dtype=np.float32)
                layers[name][start:stop] = value
            combiner.add(b, out)
        return Reduced(layers, combiner.sums, combiner.cells_concatenated(), len(blocks), X.shape[0])

    root = str(_new_spill())
    client = _client()
    try:
        if client is not None:
            shapes = _run_distributed(client, X, fn, blocks, root, combiner, desc=desc, progress=progress)
        else:
            shapes = _run_local(X, fn, blocks, root, combiner, desc=desc, progress=progress)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)  # bad input found in a block: nothing of the pass is kept
        raise
    names = sorted({name for block in shapes for name in block})
    layers = {name: _read_spill(root, name, [s[name] for s in shapes]) for name in names}
    return Reduced(layers, combiner.sums, combiner.cells_concatenated(), len(blocks), X.shape[0])


def _run_block(fn: BlockFunction, x, start: int, stop: int, block: int, root: str, threads: int | None):
    """One block on a worker (or in process): explain, spill the layers, return the reductions and layer shapes."""
    if threads is not None:
        _set_threads(threads)
    out = fn(_dense_block(x), np.arange(start, stop))
    shapes = _write_spill(root, block, out.layers)
    return BlockOutput(sums=out.sums, cells=out.cells), shapes


def _run_local(X, fn, blocks, root, combiner, *, desc, progress) -> list[dict]:
    """Blocks one after the other in this process, the next block read while one is explained."""
    from concurrent.futures import ThreadPoolExecutor

    shapes: list[dict] = []

    def read(b: int):
        start, stop = blocks[b]
        return _dense_block(X[start:stop])

    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(read, 0)
        for b in progress_iter(range(len(blocks)), total=len(blocks), desc=desc, enabled=progress):
            x = ahead.result()
            if b + 1 < len(blocks):
                ahead = pool.submit(read, b + 1)
            start, stop = blocks[b]
            out, shape = _run_block(fn, x, start, stop, b, root, None)
            combiner.add(b, out)
            shapes.append(shape)
    return shapes


def _run_distributed(client, X, fn, blocks, root, combiner, *, desc, progress) -> list[dict]:
    """One task per block on the workers; the block function is broadcast once to every worker.

    Each task reads its block of ``X`` on the worker (a lazily read zarr store is read there), explains it and
    writes the spill store; the scheduler's root-task queuing keeps only a few blocks in memory at a time.
    """
    import dask
    from distributed import as_completed

    [fn_future] = client.scatter([fn], broadcast=True, hash=False)
    threads = [int(info.get("nthreads", 1)) for info in client.scheduler_info()["workers"].values()]
    per_worker = min(threads) if threads else None
    run = dask.delayed(_run_block, pure=False)
    tasks = [run(fn_future, part, start, stop, b, root, per_worker)
             for b, ((start, stop), part) in enumerate(zip(blocks, X.to_delayed().ravel(), strict=True))]
    futures = {fut: b for b, fut in enumerate(client.compute(tasks))}
    shapes: list[dict | None] = [None] * len(blocks)
    for fut in progress_iter(as_completed(futures), total=len(futures), desc=desc, enabled=progress):
        out, shape = fut.result()
        b = futures[fut]
        combiner.add(b, out)
        shapes[b] = shape
        fut.release()
    return shapes  # type: ignore[return-value]


def _set_threads(n: int) -> None:
    """Intra-op threads of torch, numba and BLAS for this process (a worker's threads)."""
    try:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover
        pass


def iter_batches(n: int, batch_size: int) -> Iterator[slice]:
    """Slices of at most ``batch_size`` rows covering ``range(n)``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
