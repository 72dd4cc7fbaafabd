"""Shims that scanvi-explainer (``SCANVIDeep``, version 0.3.1 on PyPI) needs to run at all on a current stack.

Each shim is named and kept minimal; none changes its attribution algorithm:

1. ``shim_counts_layer_sparse``: ``train_test_group_split`` calls ``adata[...].layers[layer].todense()``, which a
   dense ``numpy`` layer (what ``pbmc68k_counts()`` and many pipelines hold) lacks. The layer the model was set up
   with is converted to a CSR matrix with the same values. (Older releases used ``.A``, which current scipy
   removed.) A model set up on ``adata.X`` (``layer=None``) cannot be run at all: it reads ``layers[None]``.
2. ``shim_batch_column``: it reads ``adata.obs["batch"]`` (``REGISTRY_KEYS.BATCH_KEY``) whatever the model's batch
   key is, as categorical codes. The column is set to the batch the model registered for each cell.
3. ``shim_same_split``: it draws its background/explained split with an unseeded RNG. To explain the same cells
   against the same background as scexplain, the split is replaced by given indices, and ``expected_value`` is
   recomputed exactly as its ``__init__`` computes it (``classify`` on the background with the background cells'
   own batches, no covariates).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse


def shim_counts_layer_sparse(model) -> None:
    """Shim 1: the model's counts layer as CSR (same values) so that ``.todense()`` works."""
    layer = model.registry_["setup_args"]["layer"]
    if layer is None:
        raise RuntimeError("scanvi-explainer cannot explain a model set up on adata.X (it reads layers[None]).")
    adata = model.adata
    if not sparse.issparse(adata.layers[layer]):
        adata.layers[layer] = sparse.csr_matrix(adata.layers[layer])


def shim_batch_column(model) -> None:
    """Shim 2: ``adata.obs["batch"]`` holding the model's registered batch (categories in the model's order)."""
    adata = model.adata
    codes = np.asarray(adata.obs["_scvi_batch"]).astype(int)
    mapping = model.registry_["field_registries"]["batch"]["state_registry"]["categorical_mapping"]
    adata.obs["batch"] = pd.Categorical.from_codes(codes, categories=[str(c) for c in mapping])


def _tensors(adata, idx: np.ndarray, layer: str, labels_key: str) -> dict:
    """Exactly the tensors ``train_test_group_split`` builds for a set of rows."""
    import torch
    from scvi import REGISTRY_KEYS

    sub = adata[idx]
    return {
        REGISTRY_KEYS.X_KEY: torch.from_numpy(np.asarray(sub.layers[layer].todense())).type(torch.float32),
        REGISTRY_KEYS.BATCH_KEY: torch.from_numpy(sub.obs[REGISTRY_KEYS.BATCH_KEY].cat.codes.values[:, None].copy()),
        REGISTRY_KEYS.LABELS_KEY: torch.from_numpy(sub.obs[labels_key].cat.codes.values[:, None].copy()),
    }


def shim_same_split(explainer, model, background_idx: np.ndarray, test_idx: np.ndarray) -> None:
    """Shim 3: explain ``test_idx`` against ``background_idx`` (rows of ``model.adata``), as its split would."""
    import torch
    from scvi import REGISTRY_KEYS

    layer = explainer.layer_key
    explainer.data = _tensors(model.adata, background_idx, layer, explainer.labels_key)
    explainer.test = _tensors(model.adata, test_idx, layer, explainer.labels_key)
    with torch.no_grad():  # as in SCANVIDeep.__init__
        outputs = explainer.model.classify(
            explainer.data[REGISTRY_KEYS.X_KEY],
            batch_index=explainer.data[REGISTRY_KEYS.BATCH_KEY],
            cat_covs=None,
            cont_covs=None,
            use_posterior_mean=True,
        )
    explainer.expected_value = outputs.mean(0).cpu().numpy()


def make_scanvi_deep(model, background_idx: np.ndarray, test_idx: np.ndarray):
    """A ``SCANVIDeep`` on ``model`` with all three shims applied, explaining ``test_idx`` against ``background_idx``."""
    from scanvi_explainer import SCANVIDeep

    shim_counts_layer_sparse(model)
    shim_batch_column(model)
    explainer = SCANVIDeep(model, train_size=0.8, batch_size=-1)
    shim_same_split(explainer, model, background_idx, test_idx)
    return explainer
