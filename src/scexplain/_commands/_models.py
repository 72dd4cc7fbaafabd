"""Model files for the command line: safe formats by default, pickles only with ``--allow-pickle``.

Unpickling a file runs whatever code its author put in it (a ``__reduce__`` calling ``os.system`` is enough). On a
Galaxy server anyone who can upload a file could then run commands as the server's user, so the commands read only
formats that hold data, not code:

=====================  ==================================================================================
model                  safe file
=====================  ==================================================================================
torch module           a ``torch.export`` program (``torch.export.save(torch.export.export(...), "m.pt2")``),
                       checked before loading (:mod:`._pt2`)
scvi-tools model       its folder (``model.save(folder)``): ``model.pt`` read with ``weights_only=True``
scikit-learn trees     a skops file (``skops.io.dump(model, "m.skops")``), trusted types only
XGBoost                ``booster.save_model("m.json")`` (or ``.ubj``)
LightGBM               ``booster.save_model("m.txt")``
=====================  ==================================================================================

``torch.save(module)`` files, joblib and pickle files, and anything the checks refuse, load only with
``allow_pickle=True`` (``--allow-pickle``): for files the user trusts.
"""

from __future__ import annotations

from pathlib import Path

from .._io import UnsafeFileError as UnsafeModelError

__all__ = ["ALLOW_PICKLE_HELP", "UnsafeModelError", "load_model", "load_tree_model"]

ALLOW_PICKLE_HELP = (
    "also load model files that are unpickled (torch.save(module), joblib, pickle, skops types beyond the trusted "
    "ones, torch.export archives outside the checked subset). Unpickling runs any code the file's author put in "
    "it: use this only for files you trust, never on a shared server's uploads"
)

#: scikit-learn types the tree adapter needs that skops does not trust by default (plain arrays inside)
SKOPS_TRUSTED = ("sklearn.tree._tree.Tree", "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor")


def _exists(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"Model {path!r} does not exist; check the --model path.")
    return p


def load_model(path: str, *, allow_pickle: bool = False):
    """A torch model from a file: a ``torch.export`` program, an scvi-tools folder or (trusted) ``torch.save``.

    Returns a :class:`torch.export.ExportedProgram`, a ``torch.nn.Module`` or an scvi-tools model.

    Raises
    ------
    UnsafeModelError
        The file would be unpickled (``torch.save``) or falls outside the checked ``torch.export`` subset, and
        ``allow_pickle`` is false.
    """
    p = _exists(path)
    if p.is_dir():  # loaded with its own data: the AnnData to explain is read, never registered or modified
        from ..models._scvi_load import load_scvi_model

        return load_scvi_model(p, allow_pickle=allow_pickle)
    from ._pt2 import is_pt2, pt2_problems

    if is_pt2(p):
        problems = [] if allow_pickle else pt2_problems(p)
        if problems:
            raise UnsafeModelError(
                f"{path!r} is a torch.export archive with {'; '.join(problems)}: loading or running it could run "
                "code. Export the model again with torch.export.export and torch.export.save, or pass "
                "--allow-pickle if you trust the file."
            )
        return _load_program(p)
    if not allow_pickle:
        raise UnsafeModelError(
            f"{path!r} is not a torch.export archive; a torch.save(module) file is unpickled, which can run any "
            "code in it. Save the model with torch.export.save(torch.export.export(model.eval(), (x,), "
            "dynamic_shapes=({0: torch.export.Dim('cells')},)), 'model.pt2'), or pass --allow-pickle if you trust "
            "the file."
        )
    import torch

    try:
        model = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"Cannot load {path!r} with torch.load: {_one_line(err)}; pass a torch.save(module) or "
                         "torch.export.save file.") from err
    if isinstance(model, torch.export.ExportedProgram | torch.nn.Module):
        return model
    raise TypeError(
        f"{path!r} holds a {type(model).__name__}, not a model; save the module itself (torch.export.save, or "
        "torch.save(module) with --allow-pickle), not its state_dict."
    )


def _load_program(p: Path):
    import torch

    try:
        return torch.export.load(p)
    except Exception as err:
        raise ValueError(f"Cannot load {str(p)!r} with torch.export.load: {_one_line(err)}; save it again with "
                         "torch.export.save from this torch version.") from err


def load_tree_model(path: str, *, allow_pickle: bool = False):
    """A tree model from a file.

    ``.skops``: a scikit-learn model (``skops.io.dump``), trusted types only; ``.json``/``.ubj``: an XGBoost
    model (``save_model``); ``.txt``: a LightGBM model (``save_model``); ``.joblib``/``.pkl``/``.pickle``: any
    supported model saved with ``joblib.dump`` or pickle, only with ``allow_pickle``.
    """
    p = _exists(path)
    if not p.is_file():
        raise ValueError(f"Model {path!r} is a folder; pass a model file (.skops, .json, .ubj, .txt).")
    suffix = p.suffix.lower()
    from .._optional import import_optional

    if suffix == ".skops":
        return _load_skops(p, allow_pickle)
    if suffix in (".joblib", ".pkl", ".pickle"):
        if not allow_pickle:
            raise UnsafeModelError(
                f"{path!r} is a {suffix} file, which is unpickled and can run any code in it. Save a scikit-learn "
                "model with skops.io.dump(model, 'model.skops'), an XGBoost or LightGBM model with "
                "booster.save_model('model.json' / 'model.txt'), or pass --allow-pickle if you trust the file."
            )
        import joblib

        return joblib.load(p)
    try:
        if suffix in (".json", ".ubj"):
            xgb = import_optional("xgboost", purpose="loading XGBoost models")
            booster = xgb.Booster()
            booster.load_model(str(p))
            return booster
        if suffix == ".txt":
            lgb = import_optional("lightgbm", purpose="loading LightGBM models")
            return lgb.Booster(model_file=str(p))
    except ImportError:
        raise
    except Exception as err:
        kind = "an XGBoost model (booster.save_model)" if suffix != ".txt" else "a LightGBM model (save_model)"
        raise ValueError(f"Cannot read {path!r} as {kind}: {_one_line(err)}; pass a file written by that "
                         "library.") from err
    raise ValueError(
        f"Unknown model file type {suffix!r}: use .skops (skops.io.dump of a scikit-learn model), .json/.ubj "
        "(XGBoost save_model), .txt (LightGBM save_model), or .joblib/.pkl with --allow-pickle."
    )


def _load_skops(p: Path, allow_pickle: bool):
    from .._optional import import_optional

    sio = import_optional("skops.io", purpose="loading scikit-learn models saved with skops")
    try:
        untrusted = sio.get_untrusted_types(file=p)
    except Exception as err:
        raise ValueError(f"Cannot read {str(p)!r} as a skops file: {_one_line(err)}; pass a file written by "
                         "skops.io.dump.") from err
    unknown = [t for t in untrusted if t not in SKOPS_TRUSTED]
    if unknown and not allow_pickle:
        raise UnsafeModelError(
            f"{str(p)!r} holds types skops does not trust ({', '.join(unknown[:5])}): loading them can run code. "
            "Pass --allow-pickle if you trust the file; supported scikit-learn tree models need none of them."
        )
    return sio.load(p, trusted=list(untrusted))


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
