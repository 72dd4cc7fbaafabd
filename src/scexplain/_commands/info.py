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
    from .._results import get_result
    from .._store import is_result

    for key, value in adata.uns.items():
        if is_result(value):
            found = True
            print(_describe(get_result(adata, key)))
    if not found:
        print("no scexplain results")
    return 0


def _names(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return f"{len(names)} ({shown}{', …' if len(names) > limit else ''})"


def _describe(res) -> str:
    """One line per result: method, target, groups and outputs by name (mapped back from the stored arrays)."""
    params = res.params
    target = params.get("target", "")
    target = ",".join(str(t) for t in target) if not isinstance(target, str) else target
    parts = [f"{res.key}: method={res.method}", f"target={target}"]
    if params.get("groupby") is not None:
        parts.append(f"groupby={params['groupby']}")
    if res.stored_groups:
        parts.append(f"groups={_names(res.stored_groups)}")
    if res.output_names:
        parts.append(f"outputs={_names(res.output_names)}")
    if res.latent_dims:
        parts.append(f"latent_dims={_names(res.latent_dims)}")
    parts.append(f"layout={res.layout}")
    return " ".join(parts)


_info.add_arguments = _info_arguments
