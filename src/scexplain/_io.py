"""Reading and writing the command line's AnnData files: ``.h5ad`` and ``.zarr``, atomically, never over the input.

A zarr input is read lazily: ``X``, ``layers`` and ``raw.X`` become dask arrays over the store's own chunks
(:func:`anndata.experimental.read_elem_lazy`); the small parts (``obs``, ``var``, ``obsm``, ``uns``, ...) are read
eagerly. Outputs are written to a temporary file (h5ad) or folder (zarr) beside the destination and renamed into
place, so a failed run leaves no partial output.

Errors raise :class:`InputError` (a :class:`ValueError`) with one line naming the problem and the fix.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["InputError", "UnsafeFileError", "check_io_paths", "file_format", "read_input", "write_h5ad_atomic", "write_output"]

#: the formats, by file name suffix
FORMATS = {".h5ad": "h5ad", ".zarr": "zarr"}
#: the matrices read lazily from a zarr store
_LAZY = ("X", "layers")
#: the other elements of an AnnData store, read eagerly
_EAGER = ("obs", "var", "obsm", "varm", "obsp", "varp", "uns")


class InputError(ValueError):
    """An input or output path that cannot be used (missing, unreadable, wrong format, the input itself)."""


def file_format(path: str | os.PathLike, what: str = "--input") -> str:
    """``"h5ad"`` or ``"zarr"`` from the suffix of ``path``; :class:`InputError` for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(
            f"{what} {str(path)!r} is neither .h5ad nor .zarr; name the file with one of these suffixes "
            "(an AnnData written by write_h5ad or write_zarr)."
        )
    return FORMATS[suffix]


def check_io_paths(input_path: str | os.PathLike, output_path: str | os.PathLike) -> None:
    """Refuse a missing input, an output that is the input (or inside it, or holds it) and an unknown format."""
    src, dst = Path(input_path), Path(output_path)
    fmt = file_format(src, "--input")
    file_format(dst, "--output")
    if not src.exists():
        raise FileNotFoundError(f"Input {str(input_path)!r} does not exist; check the --input path.")
    if fmt == "h5ad" and not src.is_file():
        raise InputError(f"--input {str(input_path)!r} is a folder, not an .h5ad file; pass the file.")
    if fmt == "zarr" and not src.is_dir():
        raise InputError(f"--input {str(input_path)!r} is not a zarr folder; pass the folder written by write_zarr.")
    s, d = src.resolve(), dst.resolve()
    if s == d or (dst.exists() and os.path.samefile(src, dst)):
        raise InputError("--output must differ from --input; scexplain never overwrites its input.")
    if s in d.parents or d in s.parents:
        raise InputError(
            f"--output {str(output_path)!r} and --input {str(input_path)!r} are nested; write the output beside "
            "the input, not inside it (or around it)."
        )
    if dst.exists():
        if file_format(dst) == "h5ad" and not dst.is_file():
            raise InputError(f"--output {str(output_path)!r} is a folder; pass a file name ending in .h5ad.")
        if file_format(dst) == "zarr" and not _is_zarr_store(dst):
            raise InputError(
                f"--output {str(output_path)!r} exists and is not a zarr store; scexplain replaces only a zarr "
                "output: pass a new path."
            )


def read_input(path: str | os.PathLike, *, backed: bool = False):
    """The AnnData in ``path`` (``.h5ad``: in memory, or backed read-only; ``.zarr``: big matrices lazily)."""
    fmt = file_format(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"Input {str(path)!r} does not exist; check the --input path.")
    try:
        if fmt == "h5ad":
            import anndata as ad

            return ad.read_h5ad(path, backed="r" if backed else None)
        return _read_zarr_lazy(path)
    except (InputError, MemoryError):
        raise
    except Exception as err:
        what = "an AnnData .h5ad file (written by write_h5ad)" if fmt == "h5ad" else "an AnnData zarr store"
        raise InputError(
            f"Cannot read {str(path)!r} as {what}: {_first_line(err)}; check that the file is complete and is "
            f"{what}."
        ) from err


def _read_zarr_lazy(path):
    import anndata as ad
    import zarr
    from anndata.experimental import read_elem_lazy
    from anndata.io import read_elem

    if not _is_zarr_store(Path(path)):
        raise InputError(f"{str(path)!r} is not a zarr store (no zarr.json or .zgroup in it); pass the folder "
                         "written by AnnData.write_zarr.")
    group = zarr.open_group(str(path), mode="r")
    # anndata writes absent elements (X, raw) as arrays encoded "null"
    keys = {k for k in group.keys() if group[k].attrs.get("encoding-type") != "null"}
    parts = {k: read_elem(group[k]) for k in _EAGER if k in keys}
    if "X" in keys:
        parts["X"] = read_elem_lazy(group["X"])
    if "layers" in keys:
        parts["layers"] = {k: read_elem_lazy(group["layers"][k]) for k in group["layers"].keys()}
    adata = ad.AnnData(**parts)
    if "raw" in keys:
        raw = group["raw"]
        adata.raw = ad.AnnData(
            X=read_elem_lazy(raw["X"]),
            var=read_elem(raw["var"]),
            varm=read_elem(raw["varm"]) if "varm" in raw else None,
        )
    return adata


def _is_zarr_store(path: Path) -> bool:
    return path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file())


def write_output(adata, path: str | os.PathLike) -> None:
    """Write ``adata`` to ``path`` (``.h5ad`` or ``.zarr``) atomically: a temporary beside it, then a rename."""
    if file_format(path, "--output") == "h5ad":
        write_h5ad_atomic(adata, path)
    else:
        write_zarr_atomic(adata, path)


def write_h5ad_atomic(adata, path: str | os.PathLike) -> None:
    """Write ``adata`` to ``path`` through a temporary file in the same folder and an atomic rename.

    Every key is checked first (:func:`scexplain._store.check_storable`), so that a key h5ad rejects never
    leaves half a file.
    """
    from ._store import check_storable

    check_storable(adata, "h5ad")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the output the usual permissions
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        _raise_write_error(err, path)
        raise


def write_zarr_atomic(adata, path: str | os.PathLike) -> None:
    """Write ``adata`` as a zarr store through a temporary folder in the same folder, then rename it into place.

    An existing zarr store at ``path`` is replaced only once the new one is complete. Every key is checked first
    (:func:`scexplain._store.check_storable`). The store is written in zarr format 2, which every anndata and
    zarr version reads (zarr format 3 has no specification yet for the structured arrays of rankings that scanpy
    and scexplain store).
    """
    from ._store import check_storable

    check_storable(adata, "zarr")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        _write_zarr_v2(adata, tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old / path.name, path)  # put the previous output back
        _raise_write_error(err, path)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _write_zarr_v2(adata, path: Path) -> None:
    """``adata.write_zarr`` in zarr format 2, without anndata's notice that 3 becomes its default."""
    import warnings

    import anndata as ad

    with ad.settings.override(zarr_write_format=2), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Writing zarr v2 data will no longer be the default", UserWarning)
        adata.write_zarr(path)


def _raise_write_error(err: BaseException, path: Path) -> None:
    """Turn an operating-system error while writing into one line naming the fix (other errors pass)."""
    if isinstance(err, OSError) and not isinstance(err, InputError):
        raise InputError(f"Cannot write {str(path)!r}: {_first_line(err)}; check that the --output folder is "
                         "writable and has free space.") from err


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text}" if type(err).__name__ not in text else text


class UnsafeFileError(ValueError):
    """A file that could run code when loaded (a pickle), refused without ``--allow-pickle``."""
