"""The ``scexplain`` command line: AnnData in (``.h5ad`` or ``.zarr``) → AnnData out, for Galaxy and nf-core.

Exit status: 0 success, 1 error (one line on stderr naming the problem and the fix; ``--debug`` adds the
traceback), 2 usage error. Never uses the network; refuses to overwrite its input; writes the output atomically;
never unpickles a model file without ``--allow-pickle``; stays within ``--threads`` threads; quiet unless
``--verbose``. ``scexplain --version`` imports nothing heavy (no numpy, anndata or torch).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

__all__ = ["add_io_arguments", "check_io_paths", "main", "register", "write_h5ad_atomic", "write_zarr_atomic"]

#: name -> (run, help, add_arguments or None)
_COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, Callable | None]] = {}

#: exceptions whose message already names the problem (anything else is prefixed by its type)
_EXPECTED = (ValueError, TypeError, KeyError, FileNotFoundError, ImportError, PermissionError)


def register(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] | None = None):
    """Register a subcommand: decorate ``run(args) -> int``.

    Its options come from ``arguments(parser)``, or from a ``run.add_arguments`` attribute set after decorating.
    Every command also gets ``--threads``, ``--verbose`` and ``--debug``.
    """

    def decorator(run):
        _COMMANDS[name] = (run, help, arguments)
        return run

    return decorator


def write_h5ad_atomic(adata, path) -> None:
    """Write ``adata`` to ``path`` atomically (see :func:`scexplain._io.write_h5ad_atomic`)."""
    from ._io import write_h5ad_atomic as write

    write(adata, path)


def write_zarr_atomic(adata, path) -> None:
    """Write ``adata`` to the zarr store ``path`` atomically (see :func:`scexplain._io.write_zarr_atomic`)."""
    from ._io import write_zarr_atomic as write

    write(adata, path)


def check_io_paths(input_path, output_path) -> None:
    """Refuse a missing input or an output that is the input (see :func:`scexplain._io.check_io_paths`)."""
    from ._io import check_io_paths as check

    check(input_path, output_path)


def add_io_arguments(parser: argparse.ArgumentParser) -> None:
    """``--input``/``--output`` options shared by every AnnData → AnnData command."""
    parser.add_argument("--input", "-i", required=True,
                        help="input AnnData: .h5ad, or .zarr (its matrices are read lazily, block by block)")
    parser.add_argument("--output", "-o", required=True,
                        help="output AnnData, .h5ad or .zarr (written atomically; must differ from --input)")


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    from ._commands._threads import available_cores

    group = parser.add_argument_group("run options")
    group.add_argument("--threads", type=_positive_int, default=available_cores(), metavar="N",
                       help="CPU threads for torch, numba, BLAS and dask (default: the cores this process may use, "
                            "%(default)s here)")
    group.add_argument("--verbose", action="store_true",
                       help="show third-party log lines and warnings (scvi-tools/lightning banners, deprecations) "
                            "and the thread limits in force")
    group.add_argument("--debug", action="store_true", help="on an error, print the full traceback (implies --verbose)")


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _import_commands() -> None:
    """Import the modules that register commands (they import nothing heavy at module level)."""
    from . import _commands  # noqa: F401


def _parser() -> argparse.ArgumentParser:
    import argparse

    from . import __version__

    parser = argparse.ArgumentParser(
        prog="scexplain",
        description="Explain models trained on single-cell data; results are written into the AnnData "
                    "(.h5ad or .zarr).",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (run, help_text, arguments) in sorted(_COMMANDS.items()):
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments = arguments or getattr(run, "add_arguments", None)
        if add_arguments is not None:
            add_arguments(p)
        _common_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scexplain`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # the fast path nf-core evaluates in every task: no command modules
        from . import __version__

        print(__version__)
        return 0
    _import_commands()
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    run = _COMMANDS[args.command][0]
    return _run(run, args)


def _run(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command within its thread limit, quietly, turning any error into one line (or a traceback)."""
    from ._commands._threads import effective_limits, limit_threads
    from ._quiet import quiet

    verbose = args.verbose or args.debug
    prefix = f"scexplain {args.command}"
    try:
        with limit_threads(args.threads), quiet(verbose=verbose, prefix=prefix):
            code = int(run(args) or 0)
            if verbose:
                limits = ", ".join(f"{k} {v}" for k, v in effective_limits().items())
                print(f"{prefix}: threads {args.threads} ({limits or 'no thread pools loaded'})", file=sys.stderr)
            return code
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"{prefix}: error: {error_line(err)}", file=sys.stderr)
        return 1


def error_line(err: BaseException) -> str:
    """One line for an error: its message, prefixed by its type when that is not one of the expected ones."""
    message = " ".join(str(err).split())
    if isinstance(err, KeyError) and len(err.args) == 1:
        message = f"missing key {err.args[0]!r}"
    if isinstance(err, _EXPECTED) and message:
        return message
    hint = "rerun with --debug for the traceback and report it if the message does not name the fix"
    return f"{type(err).__name__}: {message or 'no message'} ({hint})"


if __name__ == "__main__":  # pragma: no cover
    # run through the package module, whose registry the commands fill (not this __main__ copy)
    from scexplain.cli import main as _main

    sys.exit(_main())
