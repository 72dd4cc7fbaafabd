"""Execute the tutorial notebooks in fresh kernels, offline, and fail if any cell raises.

    python tutorials/run_all.py                 # CI: execute each notebook into a temporary copy
    python tutorials/run_all.py --inplace       # store the outputs in the committed notebooks
    python tutorials/run_all.py 02_trees_on_embedding.ipynb   # one notebook (names or paths)

Each notebook runs in its own ``python3`` kernel with the ``tutorials/`` folder as working directory. Before its
first cell the kernel is made offline: ``socket.connect`` to anything but the loopback address raises, so a notebook
that tries the network fails here instead of depending on it (dask's ``LocalCluster`` talks over loopback and still
works). That guard cell is removed again before outputs are stored, and execution counts are renumbered from 1.

Prints each notebook's wall time and the total; exits 1 if a notebook raised or timed out.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

OFFLINE_GUARD = """\
def _scexplain_offline():
    import socket

    def guard(connect):
        def guarded(self, address, *args):
            host = address[0] if isinstance(address, tuple) else None
            if self.family in (socket.AF_INET, socket.AF_INET6) and not (
                str(host).startswith("127.") or host in ("::1", "localhost")
            ):
                raise OSError(f"the tutorials run offline: connection to {address!r} refused")
            return connect(self, address, *args)
        return guarded

    socket.socket.connect = guard(socket.socket.connect)
    socket.socket.connect_ex = guard(socket.socket.connect_ex)

_scexplain_offline()
del _scexplain_offline
"""


def notebooks(names: list[str]) -> list[Path]:
    """The notebooks named (file names in ``tutorials/`` or paths), or every ``tutorials/*.ipynb`` in order."""
    if not names:
        return sorted(HERE.glob("[0-9]*.ipynb"))
    paths = []
    for name in names:
        path = Path(name) if Path(name).exists() else HERE / name
        if not path.is_file():
            raise SystemExit(f"run_all.py: error: no notebook {name!r} (give a file name in tutorials/ or a path)")
        paths.append(path.resolve())
    return paths


def execute(path: Path, *, timeout: int) -> tuple[object, str | None]:
    """Run ``path`` in a fresh kernel; returns the executed notebook (guard cell removed) and the error, if any."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    guard = nbformat.v4.new_code_cell(OFFLINE_GUARD)
    guard["id"] = "offline-guard"
    nb.cells.insert(0, guard)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", record_timing=False,  # no timestamps in the stored cells
        resources={"metadata": {"path": str(path.parent)}},
    )
    error = None
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
        error = str(exc)
    nb.cells.pop(0)
    count = 0
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.get("execution_count") is not None:
            count += 1
            cell.execution_count = count
            for output in cell.get("outputs", []):
                if "execution_count" in output:
                    output["execution_count"] = count
    return nb, error


def main(argv: list[str] | None = None) -> int:
    """Run the notebooks; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebooks to run (default: every tutorials/NN_*.ipynb)")
    parser.add_argument("--inplace", action="store_true", help="store the outputs in the notebooks themselves")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (default: %(default)s)")
    args = parser.parse_args(argv)

    import nbformat

    # A plain kernel: the inline backend draws the figures (CI exports MPLBACKEND=Agg, which would hide them).
    os.environ.pop("MPLBACKEND", None)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    failed = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scexplain-tutorials-") as tmp:
        for path in notebooks(args.notebooks):
            t0 = time.perf_counter()
            nb, error = execute(path, timeout=args.timeout)
            seconds = time.perf_counter() - t0
            target = path if args.inplace and error is None else Path(tmp) / path.name
            nbformat.write(nb, target)
            print(f"{path.name:<36} {seconds:7.1f} s  {'ok' if error is None else 'FAILED'}", flush=True)
            if error is not None:
                failed.append(path.name)
                print(error, file=sys.stderr)
    print(f"{'total':<36} {time.perf_counter() - start:7.1f} s  {len(failed)} failed", flush=True)
    return int(bool(failed))


if __name__ == "__main__":
    sys.exit(main())
