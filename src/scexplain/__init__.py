"""scexplain: explain models trained on single-cell data, results in AnnData."""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, get, pl, tl

try:
    __version__ = version("scexplain")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__", "datasets", "get", "pl", "tl"]
