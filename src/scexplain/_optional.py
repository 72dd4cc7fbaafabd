"""Lazy imports of optional dependencies, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "import_optional"]

#: module name -> the ``pip install 'scexplain[EXTRA]'`` that provides it
EXTRAS: dict[str, str] = {
    "cupy": "gpu",
    "dask": "dask",
    "distributed": "dask",
    "scvi": "scvi",
    "xgboost": "trees",
    "lightgbm": "trees",
    "shap": "test",
    "captum": "test",
}


def import_optional(module: str, *, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise an :class:`ImportError` naming the extra that installs it.

    Parameters
    ----------
    module
        Importable module name, e.g. ``"cupy"``.
    purpose
        What needs it, e.g. ``"the GPU TreeSHAP engine"``; included in the error message.

    Examples
    --------
    >>> from scexplain._optional import import_optional
    >>> np = import_optional("numpy")
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        extra = EXTRAS.get(top)
        what = f" for {purpose}" if purpose else ""
        hint = f"pip install 'scexplain[{extra}]'" if extra else f"pip install {top}"
        raise ImportError(f"`{top}` is needed{what} but is not installed. Install it with: {hint}") from err
