"""Subcommands of the ``scexplain`` CLI; each registers itself with :func:`scexplain.cli.register`."""

from __future__ import annotations

import argparse

from ..cli import register


def _info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", "-i", required=True, help="an .h5ad file or .zarr store")


@register("info", help="List the scexplain results stored in an h5ad file.")
def _info(args: argparse.Namespace) -> int:
    from .._io import read_input

    adata = read_input(args.input, backed=True)
    found = False
    from .._store import is_result

    for key, value in adata.uns.items():
        if is_result(value):
            found = True
            params = value["params"]
            print(f"{key}: method={params['method']} target={params.get('target', '')}")
    if not found:
        print("no scexplain results")
    return 0


_info.add_arguments = _info_arguments
