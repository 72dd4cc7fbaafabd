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
    and for the per-group summaries (``varm[key]``, rankings). Its declared categories count, with or without
    cells (a subset of cell types of a many-class model is explained toward the right outputs); groups without
    cells get no summary. ``None`` with an scvi-tools model: the model's labels key; a query AnnData without that
    column gets no per-group summaries, and ``target="label"`` then explains each cell's predicted class (as for
    cells in the unlabeled category).""",
    "layer": """layer
    Key of ``adata.layers`` holding the model's input; ``None`` uses ``adata.X``.""",
    "use_raw": """use_raw
    Use ``adata.raw.X`` as the model's input.""",
    "target": """target
    ``"label"``: each cell toward its own ``groupby`` class (matched by name to the outputs); ``"predicted"``: toward
    the model's predicted class; ``"all"``: every output; or a list of output names. A model with a single output
    (a regressor, one logit) is explained toward that output with ``"label"`` or ``"predicted"``, with or without
    ``groupby`` (``uns[key]["params"]["single_output"]`` says so).""",
    "background": """background
    Reference cells: an AnnData with the same genes, a cells × genes array, a boolean mask or integer indices over
    ``adata``'s cells; ``None`` draws ``n_background`` cells of ``adata`` stratified by ``groupby``.""",
    "n_background": """n_background
    Number of background cells drawn when ``background`` is ``None``.""",
    "output_names": """output_names
    Names of the model's outputs in order; default: the declared ``groupby`` categories when their number
    matches, else ``"0"``, ``"1"``, …. Stored as an array (``uns[key]["output_names"]``), never as keys, so any
    name (``"CD4+/CD25 T Reg"``) is fine.""",
    "batch_size": """batch_size
    Cells processed per chunk; bounds memory.""",
    "device": """device
    ``"auto"`` (CUDA when torch sees a GPU, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; anything else, or
    a GPU that is not visible, is an error before anything runs.""",
    "dtype": """dtype
    ``"float32"`` (fast) or ``"float64"`` (exact to ~1e-12).""",
    "random_state": """random_state
    Seed of every random draw; same seed → same numbers.""",
    "key_added": """key_added
    Storage key; default: the method's name. May not contain ``'/'`` (h5ad and zarr reject it).""",
    "copy": """copy
    Return a modified copy instead of writing into ``adata``.""",
    "progress": """progress
    Show a progress bar.""",
    "returns": """``None``, or the modified copy when ``copy=True``. Writes (``key`` = ``key_added`` or the method's name;
storage layout 2, see :doc:`/storage`):

- ``layers[key]``: cells × genes attributions toward each cell's own target (its label, else the prediction;
  a single-output model's only output);
- ``varm[key]`` and ``varm[key + "_mean_abs"]`` (with ``groupby``): genes × groups mean and mean absolute
  attribution of each group's cells toward their group, columns in the order of ``uns[key]["groups"]``;
- ``obsm[key]`` (methods with a completeness property): per-cell DataFrame ``output`` f(x), ``expected_value``,
  ``sum_attributions``, ``relative_error`` ‖Σφ − Δf‖/‖Δf‖ for the own target;
- ``layers[key + "_out{j}"]`` with ``keep_all=True``: toward output ``j`` of ``uns[key]["output_names"]`` (the
  stored ``j`` in ``uns[key]["kept_outputs"]``);
- ``uns[key]``: ``params``, ``layout``, ``output_names``, ``groups``, ``expected_value`` (per output; per cell
  with covariates, see ``obsm``), ``additivity`` (max and median relative error over cells), and
  ``names``/``scores`` rankings readable by ``sc.get.rank_genes_groups_df(adata, group, key=key)``.

Latent mode (``explain="latent"``, scvi-tools encoders) explains every cell toward every latent dimension and
writes genes × dims tables instead of ``layers[key]``: ``varm[key + "_latent"]``, ``varm[key + "_latent_abs"]``,
``varm[key + "_latent_groups"]`` (genes × groups × dims, with ``groupby``), the dimension names in
``uns[key]["latent_dims"]``, per-cell references in ``obsm[key + "_expected_value"]``.""",
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
