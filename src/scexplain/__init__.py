"""scexplain: explain models trained on single-cell data, results in AnnData.

``import scexplain`` is light: the subpackages (``tl``, ``pl``, ``get``, ``datasets``) are imported on first use
(PEP 562), so that ``scexplain --version`` and ``import scexplain`` pull in neither numpy, anndata nor torch.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scexplain")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__", "datasets", "get", "pl", "tl"]

_SUBPACKAGES = frozenset({"datasets", "get", "pl", "tl"})


def __getattr__(name: str):
    """Import a subpackage on first access (``sx.tl``, ``from scexplain import pl``)."""
    if name in _SUBPACKAGES:
        module = import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBPACKAGES)
