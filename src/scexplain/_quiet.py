"""Quiet command-line runs: no third-party banners, log lines or warnings unless asked for.

scvi-tools and lightning announce themselves on every model they train or load ("GPU available: False",
"TPU available", the LitLogger "💡 Tip", "INFO Training for ... epochs") through :mod:`logging`, and libraries warn
about deprecations that mean nothing to the user of a pipeline. :func:`quiet` silences both for the length of a
command; scexplain's own warnings (e.g. an op without a DeepLIFT rule) are still shown, one line each.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["quiet"]

_PACKAGE = str(Path(__file__).resolve().parent)


@contextmanager
def quiet(*, verbose: bool = False, prefix: str = "scexplain") -> Iterator[None]:
    """Silence third-party logging and warnings while the block runs (``verbose``: change nothing).

    Logging at WARNING level and below is disabled for every logger (:func:`logging.disable`, which also covers
    loggers created by imports inside the block); warnings raised outside scexplain are dropped, and scexplain's
    own are printed as one line: ``{prefix}: warning: message``.
    """
    if verbose:
        yield
        return
    previous_disable = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        show = warnings.showwarning
        warnings.showwarning = partial_show(prefix)
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous_disable)
            warnings.showwarning = show


def partial_show(prefix: str):
    """A :func:`warnings.showwarning` that prints scexplain's warnings on one line and drops the others."""

    def show(message, category, filename, lineno, file=None, line=None):
        if not _ours(category, filename):
            return
        text = " ".join(str(message).split())
        print(f"{prefix}: warning: {text}", file=sys.stderr if file is None else file)

    return show


def _ours(category: type, filename: str) -> bool:
    """A warning class defined in scexplain, or a warning raised from scexplain's code."""
    if getattr(category, "__module__", "").split(".")[0] == "scexplain":
        return True
    try:
        return str(Path(filename).resolve()).startswith(_PACKAGE)
    except (OSError, ValueError):
        return False
