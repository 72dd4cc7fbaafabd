"""Load a saved scvi-tools model folder (``model.save(dir)``) without touching the AnnData to be explained.

``SCANVI.load(dir, adata=query)`` registers the query in place (``_scvi_*`` columns and random UUIDs in
``uns``) and rebuilds the label categories from it, which fails on a subset or on a query without labels. Here
the model is loaded with the AnnData saved beside it (``save_anndata=True``) or, without one, with a one-cell
stand-in built from the model's own registry (its genes, layer and every category); the cells to explain are
then read by :class:`~scexplain.models._scvi.ScviAdapter`, aligned by name.

scvi-tools reads ``model.pt`` with ``torch.load(weights_only=False)``, which unpickles anything. Unless
``allow_pickle=True``, the file is read here instead, with ``weights_only=True`` and only the types scvi-tools
stores allowed beyond torch's own (numpy arrays and dtypes, dicts, bytes; :data:`SAFE_GLOBALS`), and handed to
scvi-tools' loader in place of its own reading.
"""

from __future__ import annotations

import pickle
import types
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

__all__ = ["SAFE_GLOBALS", "load_scvi_model", "read_model_file"]

#: globals an scvi-tools ``model.pt`` may hold beyond what ``torch.load(weights_only=True)`` allows by default
SAFE_GLOBALS = (
    "numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "builtins.dict", "builtins.list",
    "builtins.set", "builtins.tuple", "builtins.bytes", "collections.defaultdict", "collections.OrderedDict",
)

#: model classes that can be explained, by the name scvi-tools records in the registry
SUPPORTED = ("SCANVI", "SCVI")


def load_scvi_model(path: str | Path, *, allow_pickle: bool = False):
    """The scvi-tools model saved in the folder ``path``, on the CPU.

    ``allow_pickle``: let scvi-tools unpickle ``model.pt`` itself (any type; for trusted folders only).

    Raises
    ------
    ValueError
        The folder is not a saved SCANVI or SCVI model, or (:class:`~scexplain._io.UnsafeFileError`)
        ``model.pt`` holds types that only full unpickling can read and ``allow_pickle`` is false.
    """
    from .._optional import import_optional

    scvi = import_optional("scvi", purpose="loading scvi-tools models")
    path = Path(path)
    if not (path / "model.pt").is_file():
        raise ValueError(f"{str(path)!r} is a folder but not a saved scvi-tools model (no model.pt in it); pass the "
                         "folder written by model.save(folder).")
    reading = nullcontext() if allow_pickle else _read_without_pickle(scvi)
    with reading, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scvi-tools' notices about the saved version and the accelerator
        registry = scvi.model.base.BaseModelClass.load_registry(str(path))
        name = registry.get("model_name")
        if name not in SUPPORTED:
            raise ValueError(f"{str(path)!r} holds a saved {name} model; supported: {', '.join(SUPPORTED)}.")
        cls = getattr(scvi.model, name)
        stand_in = None if (path / "adata.h5ad").is_file() else _stand_in(registry)
        return cls.load(str(path), adata=stand_in, accelerator="cpu")


def read_model_file(path: str | Path, map_location=None) -> dict:
    """An scvi-tools ``model.pt`` read with ``torch.load(weights_only=True)`` and :data:`SAFE_GLOBALS` allowed.

    The pickle's globals are listed first (without running it); any outside the allowed ones is refused.
    """
    import torch

    from .._io import UnsafeFileError

    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as err:
        raise ValueError(f"Cannot read {str(path)!r} as a torch file: {' '.join(str(err).split())}; pass the folder "
                         "written by model.save(folder).") from err
    refused = [g for g in needed if g not in SAFE_GLOBALS]
    if refused:
        raise UnsafeFileError(
            f"{str(path)!r} holds types that only full unpickling can read ({', '.join(refused[:5])}), which can "
            "run code; save the model again with model.save(folder), or pass --allow-pickle if you trust it."
        )
    allowed = [g for g in (_resolve(name) for name in needed) if g is not None] + _numpy_dtype_classes()
    with torch.serialization.safe_globals(allowed):
        try:
            return torch.load(str(path), map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            pass  # torch's restricted unpickler cannot fill a defaultdict (scvi-tools' registry holds some)
    try:  # the same allow-list, enforced by find_class: nothing but these globals can be called or built
        return torch.load(str(path), map_location=map_location, weights_only=False, pickle_module=_RESTRICTED)
    except pickle.UnpicklingError as err:
        raise UnsafeFileError(
            f"{str(path)!r} cannot be read without full unpickling ({' '.join(str(err).split())[:200]}); pass "
            "--allow-pickle if you trust the folder."
        ) from err


class _AllowListUnpickler(pickle.Unpickler):
    """An unpickler that finds only the globals of :data:`SAFE_GLOBALS` and torch's tensor rebuilders."""

    #: what a torch checkpoint itself needs (storages are found by torch before this class is asked)
    TORCH = ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter", "torch.Size", "_codecs.encode")

    def find_class(self, module, name):
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        if f"{module}.{name}" in SAFE_GLOBALS or f"{module}.{name}" in self.TORCH:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


#: a ``pickle_module`` for :func:`torch.load` whose unpickler is :class:`_AllowListUnpickler`
_RESTRICTED = types.SimpleNamespace(__name__="scexplain_allow_list_pickle", Unpickler=_AllowListUnpickler,
                                    load=lambda f, **kw: _AllowListUnpickler(f, **kw).load())


def _numpy_dtype_classes() -> list:
    """``numpy.dtypes.Float32DType``, ...: the classes numpy dtypes are rebuilt as (not listed as globals)."""
    import numpy as np

    dtypes = getattr(np, "dtypes", None)
    return [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")] if dtypes is not None else []


def _resolve(name: str):
    """The object a ``module.attribute`` global names (``None`` if this numpy does not have it)."""
    import importlib

    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


@contextmanager
def _read_without_pickle(scvi):
    """scvi-tools' loader, reading ``model.pt`` with :func:`read_model_file` instead of its own ``torch.load``."""
    from unittest import mock

    from .._io import UnsafeFileError

    base = scvi.model.base._base_model
    save_load = scvi.model.base._save_load
    keys = getattr(save_load, "SAVE_KEYS", None)
    if not hasattr(base, "_load_saved_files") or keys is None:
        raise UnsafeFileError(
            f"scvi-tools {scvi.__version__} reads its model files in a way scexplain cannot make safe; pass "
            "--allow-pickle if you trust the model folder."
        )

    def load_saved_files(dir_path, load_adata, prefix=None, map_location=None, backup_url=None):
        prefix = prefix or ""
        model = read_model_file(Path(dir_path) / f"{prefix}{keys.MODEL_FNAME}", map_location=map_location)
        attr_dict = model.get(keys.ATTR_DICT_KEY)
        adata = None
        if load_adata:
            if attr_dict["registry_"].get("setup_method_name") == "setup_mudata":
                raise ValueError("MuData scvi-tools models are not supported; pass a model set up on an AnnData.")
            adata_path = Path(dir_path) / f"{prefix}{keys.ADATA_FNAME}"
            if adata_path.exists():
                import anndata

                adata = anndata.read_h5ad(adata_path)
            else:
                adata = False
        return attr_dict, model.get(keys.VAR_NAMES_KEY), model.get(keys.MODEL_STATE_DICT_KEY), adata

    with mock.patch.object(base, "_load_saved_files", load_saved_files):
        yield


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
