"""Shared docstring parts: ``@doc_params(...)`` fills ``{name}`` placeholders in numpydoc docstrings."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

__all__ = ["PARAMS", "doc_params"]

PARAMS: dict[str, str] = {
    "adata": """adata
    Annotated data matrix (cells × genes).""",
    "groupby": """groupby
    Column of ``adata.obs`` with each cell's class; needed for ``target="label"``, for the stratified background
    and for the per-group summaries (``varm[key]``, rankings). ``None`` with an scvi-tools model: the model's
    labels key; a query AnnData without that column gets no per-group summaries, and ``target="label"`` then
    explains each cell's predicted class (as for cells in the unlabeled category).""",
    "layer": """layer
    Key of ``adata.layers`` holding the model's input; ``None`` uses ``adata.X``.""",
    "use_raw": """use_raw
    Use ``adata.raw.X`` as the model's input.""",
    "target": """target
    ``"label"``: each cell toward its own ``groupby`` class (matched by name to the outputs); ``"predicted"``: toward
    the model's predicted class; ``"all"``: every output; or a list of output names.""",
    "background": """background
    Reference cells: an AnnData with the same genes, a cells × genes array, a boolean mask or integer indices over
    ``adata``'s cells; ``None`` draws ``n_background`` cells of ``adata`` stratified by ``groupby``.""",
    "n_background": """n_background
    Number of background cells drawn when ``background`` is ``None``.""",
    "output_names": """output_names
    Names of the model's outputs in order; default: the ``groupby`` categories when their number matches,
    else ``"0"``, ``"1"``, ….""",
    "batch_size": """batch_size
    Cells processed per chunk; bounds memory.""",
    "device": """device
    ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.""",
    "dtype": """dtype
    ``"float32"`` (fast) or ``"float64"`` (exact to ~1e-12).""",
    "random_state": """random_state
    Seed of every random draw; same seed → same numbers.""",
    "key_added": """key_added
    Storage key; default: the method's name.""",
    "copy": """copy
    Return a modified copy instead of writing into ``adata``.""",
    "progress": """progress
    Show a progress bar.""",
}


def doc_params(**extra: str) -> Callable[[F], F]:
    """Fill ``{name}`` placeholders in a docstring with :data:`PARAMS` entries (and ``extra``)."""
    table = {**PARAMS, **extra}

    def decorator(func: F) -> F:
        if func.__doc__:
            # cleandoc removes the docstring's indentation so the (unindented) blocks line up with it
            func.__doc__ = inspect.cleandoc(func.__doc__).format(**table)
        return func

    return decorator
