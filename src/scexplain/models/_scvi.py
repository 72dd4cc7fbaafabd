"""Adapter for scvi-tools ``SCANVI`` (cell-type classifier, latent space) and ``SCVI`` (latent space).

What the engines see
--------------------
Inputs
    The raw counts of the layer the model was set up with (``setup_anndata(layer=...)``, read from the model's
    registry), taken from the AnnData being explained (the training AnnData or a query one) and aligned to the
    model's genes by ``var_names``. Counts are checked to be finite, non-negative integers when the model's
    likelihood is a count likelihood (``nb``, ``zinb``, ``poisson``).
Covariates
    Only what the explained path actually reads. scVI/scANVI feed batch and the extra covariates to the
    encoder only with ``encode_covariates=True`` (scvi-tools' default is ``False``: the encoder, hence the
    classifier and the latent mean, then depends on the counts alone). When they are encoded, the covariate
    tensor packs, per cell, as float columns::

        [batch code]  [one code per registered categorical covariate]  [registered continuous covariates]

    with codes mapped through the model's registry (a query AnnData's categories are looked up by name in the
    model's categories; unknown ones are an error). The batch column is present when the model has more than
    one batch (one-hot) or uses a batch embedding.
Outputs
    ``explain="classifier"`` (SCANVI default): scANVI's classifier logits from the posterior mean of the latent,
    the path of ``module.classify(..., use_posterior_mean=True)``: ``log1p`` (when ``log_variational``), the
    z-encoder's FCLayers with covariates injected as scvi does, its mean head, then ``classify_helper``. The
    variance head and the posterior sample that ``classify`` also computes do not reach its output and are not
    run. Outputs are ordered like the model's label mapping (``model._label_mapping[:n_labels]``, the column
    order of ``model.predict(soft=True)``); the unlabeled category is not an output.
    ``explain="latent"`` (SCVI default): the z-encoder's posterior mean ``qz.loc`` per latent dimension, exactly
    as ``module.inference`` computes it (also with a batch embedding). For ``latent_distribution="ln"`` this is
    the mean of the normal before the softmax, not ``get_latent_representation``'s Monte-Carlo estimate.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._base import ModelAdapter

__all__ = ["ScviAdapter", "adapt_scvi"]

_COUNT_LIKELIHOODS = ("nb", "zinb", "poisson")


def _is_instance(model, names: tuple[str, ...]) -> bool:
    import scvi.model

    return any(isinstance(model, getattr(scvi.model, n)) for n in names if hasattr(scvi.model, n))


def adapt_scvi(model, *, output_names=None, explain: Literal["classifier", "latent"] | None = None) -> ScviAdapter:
    """Wrap a trained scvi-tools ``SCANVI`` or ``SCVI`` model for the engines.

    Parameters
    ----------
    model
        A trained ``scvi.model.SCANVI`` or ``scvi.model.SCVI``.
    output_names
        Leave ``None``: scANVI's outputs are its label categories and latent outputs are ``latent_0``, ...
        Names given for the classifier must equal the model's; for the latent space any unique names of the
        right length rename the dimensions.
    explain
        ``"classifier"`` (scANVI's cell-type logits; default for SCANVI) or ``"latent"`` (posterior mean of each
        latent dimension; default for SCVI).

    Returns
    -------
    The adapter.
    """
    if not _is_instance(model, ("SCANVI", "SCVI")):
        raise TypeError(
            f"Cannot explain a {type(model).__module__}.{type(model).__name__}; of scvi-tools models, "
            "scvi.model.SCANVI and scvi.model.SCVI are supported."
        )
    return ScviAdapter(model, explain=explain, output_names=output_names)


class ScviAdapter(ModelAdapter):
    """An scvi-tools ``SCANVI``/``SCVI`` model as "counts, covariates → classifier logits or latent means".

    See the module docstring for the inputs, the covariate packing and the output order.

    Parameters
    ----------
    model
        A trained ``SCANVI`` or ``SCVI``.
    explain
        ``"classifier"`` or ``"latent"`` (``None``: the classifier for SCANVI, the latent space for SCVI).
    output_names
        See :func:`adapt_scvi`.

    Attributes
    ----------
    explains_latent
        ``True`` with ``explain="latent"``: the driver then aggregates attributions per latent dimension.
    counts_layer
        The layer the model was set up with (``None``: ``adata.X``).
    """

    def __init__(self, model, *, explain: str | None = None, output_names=None):
        is_scanvi = _is_instance(model, ("SCANVI",))
        if explain is None:
            explain = "classifier" if is_scanvi else "latent"
        if explain not in ("classifier", "latent"):
            raise ValueError(f"`explain` must be 'classifier' or 'latent', got {explain!r}.")
        if explain == "classifier" and not is_scanvi:
            raise ValueError(
                f"`explain='classifier'` needs a model with a classifier (scvi.model.SCANVI); a "
                f"{type(model).__name__} is explained through its latent space: use explain='latent'."
            )
        if not getattr(model, "is_trained", False):
            raise ValueError(
                f"The {type(model).__name__} model is not trained; call `model.train()` before explaining it."
            )
        module = model.module  # the model itself (and its training AnnData) is not kept: the adapter travels to
        self.module = module   # dask workers
        self.explain = explain
        self.explains_latent = explain == "latent"

        registry = model.registry_
        fields = registry["field_registries"]
        setup = registry.get("setup_args", {})
        self.var_names = pd.Index(np.asarray(fields["X"]["state_registry"]["column_names"]).astype(str))
        self.n_inputs = len(self.var_names)
        self.counts_layer: str | None = setup.get("layer")
        self.expects_counts = getattr(module, "gene_likelihood", "zinb") in _COUNT_LIKELIHOODS

        # covariates the encoder reads (see module docstring)
        encoded = bool(getattr(module, "encode_covariates", False))
        self._embedding = getattr(module, "batch_representation", "one-hot") == "embedding"
        n_batch = int(getattr(module, "n_batch", 1) or 1)
        batch_state = fields.get("batch", {}).get("state_registry", {})
        self._batch_key: str | None = setup.get("batch_key")
        self._batch_mapping = np.asarray(batch_state.get("categorical_mapping", ["0"]))
        self._use_batch = encoded and (n_batch > 1 or self._embedding)
        cat_state = fields.get("extra_categorical_covs", {}).get("state_registry", {})
        cont_state = fields.get("extra_continuous_covs", {}).get("state_registry", {})
        self._cat_keys = [str(k) for k in cat_state.get("field_keys", [])] if encoded else []
        self._cat_mappings = [np.asarray(cat_state["mappings"][k]) for k in self._cat_keys]
        self._n_cats = [int(c) for c in cat_state.get("n_cats_per_key", [len(m) for m in self._cat_mappings])]
        self._n_cats = self._n_cats[: len(self._cat_keys)]
        self._n_batch = n_batch
        self._cont_keys = [str(k) for k in np.asarray(cont_state.get("columns", []))] if encoded else []
        self.has_covariates = bool(self._use_batch or self._cat_keys or self._cont_keys)

        # outputs
        labels_state = fields.get("labels", {}).get("state_registry", {})
        labels_key = setup.get("labels_key")
        self.default_groupby = None if labels_key is None else str(labels_key)
        unlabeled = labels_state.get("unlabeled_category")
        self.unlabeled_category = None if unlabeled is None else str(unlabeled)
        if explain == "classifier":
            n_labels = int(module.n_labels)
            names = [str(c) for c in np.asarray(labels_state["categorical_mapping"])[:n_labels]]
            if output_names is not None and [str(n) for n in output_names] != names:
                raise ValueError(
                    f"scANVI's outputs are its label categories {names} in this order; leave `output_names=None`."
                )
            if getattr(module, "use_labels_groups", False):
                warnings.warn(
                    "This scANVI uses label groups (`use_labels_groups=True`); its classifier renormalises "
                    "probabilities in place, which has no exact DeepLIFT rule: check the additivity summary.",
                    UserWarning,
                    stacklevel=3,
                )
        else:
            n_latent = int(module.n_latent)
            names = [f"latent_{i}" for i in range(n_latent)]
            if output_names is not None:
                given = [str(n) for n in output_names]
                if len(given) != n_latent or len(set(given)) != n_latent:
                    raise ValueError(
                        f"`output_names` must name the {n_latent} latent dimensions once each; got {given}."
                    )
                names = given
        self.output_names = names

    # --- inputs -------------------------------------------------------------------------------------------
    def input_matrix(self, adata: AnnData, *, layer: str | None, use_raw: bool):
        """Counts aligned to the model's genes: ``(X, model var_names)``.

        Without ``layer``/``use_raw`` the layer the model was set up with is read; ``layer="X"`` reads
        ``adata.X``. Genes are matched by name (any order; extra genes are ignored); missing genes and invalid
        counts are errors.
        """
        from .._inputs import get_matrix

        if layer is None and not use_raw:
            layer = self.counts_layer
            if layer is not None and layer not in adata.layers:
                raise ValueError(
                    f"The model was set up with counts in layers[{layer!r}], which this AnnData lacks (layers: "
                    f"{sorted(adata.layers)}); add the raw counts there, or pass `layer=` naming them "
                    "(`layer='X'` for adata.X)."
                )
        elif layer == "X" and "X" not in adata.layers:
            layer = None  # explicit request for adata.X
        X, names = get_matrix(adata, layer=layer, use_raw=use_raw)
        where = "adata.raw.X" if use_raw else (f"layers[{layer!r}]" if layer is not None else "adata.X")
        names = pd.Index(names).astype(str)
        if not (len(names) == self.n_inputs and (np.asarray(names) == np.asarray(self.var_names)).all()):
            if not names.is_unique:
                dup = names[names.duplicated()].unique()[:5].tolist()
                raise ValueError(f"Gene names of {where} are not unique (e.g. {dup}); make them unique first.")
            pos = names.get_indexer(self.var_names)
            if (pos < 0).any():
                missing = self.var_names[pos < 0]
                raise ValueError(
                    f"{len(missing)} of the model's {self.n_inputs} genes are missing from {where} (e.g. "
                    f"{missing[:5].tolist()}); the AnnData must hold every gene the model was trained on."
                )
            X = X[:, pos]
        self._where = where
        if self.expects_counts and not hasattr(X, "dask"):  # dask input: checked block by block (one pass)
            _check_counts(X, where, self.counts_layer)
        if self.has_covariates and all(k in adata.obs.columns for k in self._obs_keys()):
            self.covariates(adata, None)  # validate every cell's covariates now, before any work
        return X, self.var_names

    def check_rows(self, x: np.ndarray) -> None:
        """Raise unless the rows ``x`` (a block of a dask input) are finite counts as the model expects."""
        super().check_rows(x)
        if self.expects_counts:
            _check_counts(x, getattr(self, "_where", "the input"), self.counts_layer)

    def _obs_keys(self) -> list[str]:
        keys = [self._batch_key] if self._use_batch and self._batch_key is not None else []
        return keys + self._cat_keys + self._cont_keys

    def covariates(self, adata: AnnData, rows: np.ndarray | None = None):
        """Packed covariates (float tensor, cells × k) of ``rows`` mapped with the model's registry, or ``None``."""
        import torch

        if not self.has_covariates:
            return None
        obs = adata.obs if rows is None else adata.obs.iloc[np.asarray(rows)]
        cols = []
        if self._use_batch:
            if self._batch_key is None:
                cols.append(np.zeros(len(obs)))
            else:
                cols.append(_codes(obs, self._batch_key, self._batch_mapping, "batch key"))
        for key, mapping in zip(self._cat_keys, self._cat_mappings, strict=True):
            cols.append(_codes(obs, key, mapping, "categorical covariate"))
        for key in self._cont_keys:
            if key not in obs.columns:
                raise ValueError(f"adata.obs lacks {key!r}, a continuous covariate the model was set up with.")
            values = pd.to_numeric(obs[key], errors="coerce").to_numpy(dtype=np.float64)
            if not np.isfinite(values).all():
                raise ValueError(f"adata.obs[{key!r}] (a continuous covariate of the model) has missing or "
                                 "non-numeric values.")
            cols.append(values)
        return torch.as_tensor(np.stack(cols, axis=1), dtype=torch.float64)

    def _unpack(self, cov, n: int, device, dtype=None):
        """``(batch, [categorical], continuous (n × p) or None)`` from the packed covariates.

        Batch (one-hot mode) and categorical covariates are returned one-hot encoded in ``dtype`` (scvi's
        ``FCLayers`` takes a one-hot tensor as is, the same numbers as encoding the index itself; a float one-hot
        joins the encoder input without integer tensors in the graph); the batch stays an ``n × 1`` index for a
        batch embedding. With ``dtype=None`` indices are returned (``n × 1`` long), as ``module.classify`` takes.
        """
        import torch
        from torch.nn.functional import one_hot

        def encode(codes, n_cat: int):
            codes = codes.round().long()
            if dtype is None or n_cat <= 1:
                return codes
            return one_hot(codes.squeeze(-1), n_cat).to(dtype)

        j = 0
        batch = torch.zeros((n, 1), dtype=torch.long, device=device)
        if self._use_batch:
            batch = cov[:, 0:1].round().long() if self._embedding else encode(cov[:, 0:1], self._n_batch)
            j = 1
        cats = []
        for n_cat in self._n_cats:
            cats.append(encode(cov[:, j : j + 1], n_cat))
            j += 1
        cont = cov[:, j : j + len(self._cont_keys)] if self._cont_keys else None
        return batch, cats, cont

    # --- model --------------------------------------------------------------------------------------------
    def forward(self, x, cov=None):
        """Classifier logits or latent posterior means for counts ``x`` and packed covariates ``cov``."""
        import torch

        module = self.module
        if self.has_covariates and cov is None:
            raise ValueError("This model encodes covariates; pass the packed covariates of the cells.")
        batch, cats, cont = self._unpack(cov, x.shape[0], x.device, x.dtype)
        h = torch.log1p(x) if module.log_variational else x
        if cont is not None:
            h = torch.cat((h, cont.to(h.dtype)), dim=-1)
        encoder = module.z_encoder
        if self._embedding and module.encode_covariates:
            from scvi import REGISTRY_KEYS

            h = torch.cat([h, module.compute_embedding(REGISTRY_KEYS.BATCH_KEY, batch)], dim=-1)
            q = encoder.encoder(h, *cats)
        else:
            q = encoder.encoder(h, batch, *cats)
        z = encoder.mean_encoder(q)  # == qz.loc
        if self.explains_latent:
            return z
        return module.classify_helper(z)


def _codes(obs: pd.DataFrame, key: str, mapping: np.ndarray, what: str) -> np.ndarray:
    """Codes of ``obs[key]`` in the model's ``mapping`` (categories compared as strings)."""
    if key not in obs.columns:
        raise ValueError(
            f"adata.obs lacks {key!r}, the {what} the model was set up with; add it with the model's categories "
            f"{[str(c) for c in mapping]}."
        )
    values = np.asarray(obs[key].astype(object).astype(str))
    codes = pd.Index(np.asarray(mapping).astype(str)).get_indexer(values)
    if (codes < 0).any():
        unknown = sorted(set(values[codes < 0].tolist()))[:5]
        raise ValueError(
            f"adata.obs[{key!r}] has categories {unknown} unknown to the model (its {what} categories are "
            f"{[str(c) for c in mapping]}); map them to the model's categories first."
        )
    return codes.astype(np.float64)


def _check_counts(X, where: str, counts_layer: str | None) -> None:
    """Raise unless ``X`` (dense, sparse or dask) holds finite, non-negative integer counts."""
    data = X.data if sparse.issparse(X) else X
    if hasattr(data, "dask"):
        import dask.array as da

        bad_finite = int((~da.isfinite(data)).sum().compute())
        bad_neg = int((data < 0).sum().compute())
        bad_int = int((da.rint(data) != data).sum().compute())
    else:
        data = np.asarray(data)
        flat = data.reshape(-1) if data.ndim else data
        bad_finite = bad_neg = bad_int = 0
        step = 1 << 22
        for start in range(0, flat.size, step):
            block = flat[start : start + step]
            fin = np.isfinite(block)
            bad_finite += int(block.size - np.count_nonzero(fin))
            bad_neg += int(np.count_nonzero(block < 0))
            bad_int += int(np.count_nonzero(fin & (np.rint(block) != block)))
    setup = f"layers[{counts_layer!r}]" if counts_layer is not None else "adata.X"
    hint = f"scVI/scANVI take raw counts (this model was set up with {setup})"
    if bad_finite:
        raise ValueError(f"{where} has {bad_finite} NaN or infinite values; {hint}.")
    if bad_neg:
        raise ValueError(f"{where} has {bad_neg} negative values; {hint}: pass the raw counts with `layer=`.")
    if bad_int:
        raise ValueError(
            f"{where} has {bad_int} non-integer values; {hint}, not normalised or log-transformed values: pass "
            "the raw counts with `layer=`."
        )
