"""Load a saved scvi-tools model folder (``model.save(dir)``) without touching the AnnData to be explained.

``SCANVI.load(dir, adata=query)`` registers the query in place (``_scvi_*`` columns and random UUIDs in
``uns``) and rebuilds the label categories from it, which fails on a subset or on a query without labels. Here
the model is loaded with the AnnData saved beside it (``save_anndata=True``) or, without one, with a one-cell
stand-in built from the model's own registry (its genes, layer and every category); the cells to explain are
then read by :class:`~scexplain.models._scvi.ScviAdapter`, aligned by name.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

__all__ = ["load_scvi_model"]

#: model classes that can be explained, by the name scvi-tools records in the registry
SUPPORTED = ("SCANVI", "SCVI")


def load_scvi_model(path: str | Path):
    """The scvi-tools model saved in the folder ``path``, on the CPU.

    Raises
    ------
    ValueError
        The folder is not a saved SCANVI or SCVI model.
    """
    from .._optional import import_optional

    scvi = import_optional("scvi", purpose="loading scvi-tools models")
    path = Path(path)
    if not (path / "model.pt").is_file():
        raise ValueError(f"{str(path)!r} is a folder but not a saved scvi-tools model (no model.pt in it).")
    registry = scvi.model.base.BaseModelClass.load_registry(str(path))
    name = registry.get("model_name")
    if name not in SUPPORTED:
        raise ValueError(f"{str(path)!r} holds a saved {name} model; supported: {', '.join(SUPPORTED)}.")
    cls = getattr(scvi.model, name)
    stand_in = None if (path / "adata.h5ad").is_file() else _stand_in(registry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scvi-tools' notices about the saved version and the accelerator
        return cls.load(str(path), adata=stand_in, accelerator="cpu")


def _stand_in(registry: dict) -> AnnData:
    """One cell of zeros with the model's genes, its counts layer and every registered category."""
    fields = registry["field_registries"]
    setup = registry.get("setup_args", {})
    genes = np.asarray(fields["X"]["state_registry"]["column_names"]).astype(str)
    obs: dict[str, object] = {}
    for field, key in (("batch", setup.get("batch_key")), ("labels", setup.get("labels_key"))):
        state = fields.get(field, {}).get("state_registry", {})
        if key is not None and "categorical_mapping" in state:
            mapping = [str(c) for c in state["categorical_mapping"]]
            obs[key] = pd.Categorical([str(state.get("unlabeled_category", mapping[0]))], categories=mapping)
    mappings = fields.get("extra_categorical_covs", {}).get("state_registry", {}).get("mappings", {})
    for key, mapping in mappings.items():
        mapping = [str(c) for c in mapping]
        obs[key] = pd.Categorical([mapping[0]], categories=mapping)
    for key in fields.get("extra_continuous_covs", {}).get("state_registry", {}).get("columns", []):
        obs[str(key)] = [0.0]
    if setup.get("size_factor_key") is not None:
        obs[setup["size_factor_key"]] = [1.0]
    x = np.zeros((1, len(genes)), dtype=np.float32)
    adata = AnnData(x, obs=pd.DataFrame(obs, index=["stand-in"]), var=pd.DataFrame(index=genes))
    if setup.get("layer") is not None:
        adata.layers[setup["layer"]] = x.copy()
    return adata
