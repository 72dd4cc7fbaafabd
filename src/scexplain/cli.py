"""The ``scexplain`` command line: h5ad in → h5ad out, for Galaxy tools and nf-core modules.

Exit status: 0 success, 1 error (message on stderr), 2 usage error. Never uses the network; refuses to overwrite its
input; writes the output atomically (temporary file in the same folder, then rename).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main", "register", "write_h5ad_atomic", "write_zarr_atomic"]

#: name -> (run, help, add_arguments or None)
_COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, Callable | None]] = {}


def register(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] | None = None):
    """Register a subcommand: decorate ``run(args) -> int``.

    Its options come from ``arguments(parser)``, or from a ``run.add_arguments`` attribute set after decorating.
    """

    def decorator(run):
        _COMMANDS[name] = (run, help, arguments)
        return run

    return decorator


def write_h5ad_atomic(adata, path: str | os.PathLike) -> None:
    """Write ``adata`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    from ._store import check_storable

    check_storable(adata, "h5ad")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the output the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_zarr_atomic(adata, path: str | os.PathLike) -> None:
    """Write ``adata`` to the zarr store ``path`` through a temporary folder beside it and a rename."""
    import shutil

    from ._store import check_storable

    check_storable(adata, "zarr")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        adata.write_zarr(tmp / "store.zarr")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp / "store.zarr", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_io_paths(input_path: str, output_path: str) -> None:
    """Refuse a missing input or an output that is the input."""
    src = Path(input_path)
    if not src.is_file():
        raise FileNotFoundError(f"Input file {input_path!r} does not exist.")
    dst = Path(output_path)
    if (dst.exists() and dst.resolve() == src.resolve()) or dst.resolve() == src.resolve():
        raise ValueError("--output must differ from --input; scexplain never overwrites its input.")


def add_io_arguments(parser: argparse.ArgumentParser) -> None:
    """``--input``/``--output`` options shared by every h5ad → h5ad command."""
    parser.add_argument("--input", "-i", required=True, help="input .h5ad")
    parser.add_argument("--output", "-o", required=True, help="output .h5ad (written atomically)")


def _import_commands() -> None:
    """Import modules that register commands (lazily: keeps `--version` and `--help` fast)."""
    from . import _commands  # noqa: F401


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="scexplain",
        description="Explain models trained on single-cell data; results are written into the AnnData (h5ad).",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (run, help_text, arguments) in sorted(_COMMANDS.items()):
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments = arguments or getattr(run, "add_arguments", None)
        if add_arguments is not None:
            add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scexplain`` console script."""
    _import_commands()
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    run = _COMMANDS[args.command][0]
    try:
        return int(run(args) or 0)
    except (ValueError, TypeError, KeyError, FileNotFoundError, ImportError) as err:
        print(f"scexplain {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    # run through the package module, whose registry the commands fill (not this __main__ copy)
    from scexplain.cli import main as _main

    sys.exit(_main())
