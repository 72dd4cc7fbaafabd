"""Zarr in the command line: lazy input, the same numbers as h5ad, atomic output folders, never over the input."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from _cli_helpers import export, mlp
from scexplain._io import InputError, check_io_paths, read_input, write_output
from scexplain.cli import main


@pytest.fixture(scope="module")
def stores(tmp_path_factory, toy_adata):
    d = tmp_path_factory.mktemp("zarr")
    adata = toy_adata.copy()
    adata.layers["sparse"] = sp.csr_matrix(adata.layers["lognorm"])
    adata.obsm["X_rep"] = adata.layers["lognorm"][:, :6].copy()
    adata.raw = adata.copy()
    adata.write_h5ad(d / "in.h5ad")
    adata.write_zarr(d / "in.zarr")
    export(mlp(adata.n_vars), adata.n_vars, d / "model.pt2")
    return d


def test_zarr_input_is_lazy_for_the_matrices_only(stores, toy_adata):
    adata = read_input(stores / "in.zarr")
    for matrix in (adata.X, adata.layers["lognorm"], adata.layers["sparse"], adata.raw.X):
        assert type(matrix).__module__.startswith("dask"), type(matrix)
    assert isinstance(adata.obsm["X_rep"], np.ndarray)
    assert list(adata.obs["cell_type"]) == list(toy_adata.obs["cell_type"])
    np.testing.assert_array_equal(adata.layers["sparse"].compute().toarray(), toy_adata.layers["lognorm"])
    assert adata.uns["toy"].keys() == toy_adata.uns["toy"].keys()


@pytest.mark.parametrize(
    ("src", "dst", "layer"),
    [("in.zarr", "out.zarr", "lognorm"), ("in.zarr", "out.h5ad", "lognorm"), ("in.h5ad", "out.zarr", "lognorm"),
     ("in.h5ad", "out.zarr", "sparse"), ("in.zarr", "out.zarr", "sparse")],
)
def test_zarr_gives_the_numbers_of_h5ad(stores, tmp_path, src, dst, layer):
    common = ["--model", str(stores / "model.pt2"), "--groupby", "cell_type", "--layer", layer,
              "--n-background", "16"]
    assert main(["deep-shap", "-i", str(stores / "in.h5ad"), "-o", str(tmp_path / "ref.h5ad"), *common]) == 0
    assert main(["deep-shap", "-i", str(stores / src), "-o", str(tmp_path / dst), *common]) == 0
    ref = ad.read_h5ad(tmp_path / "ref.h5ad")
    out = ad.read_zarr(tmp_path / dst) if dst.endswith(".zarr") else ad.read_h5ad(tmp_path / dst)
    np.testing.assert_array_equal(np.asarray(out.layers["deep_shap"]), ref.layers["deep_shap"])
    np.testing.assert_array_equal(out.uns["deep_shap"]["expected_value"], ref.uns["deep_shap"]["expected_value"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_tree_shap_on_a_zarr_store(stores, tmp_path):
    from sklearn.ensemble import RandomForestClassifier
    from skops.io import dump

    adata = ad.read_h5ad(stores / "in.h5ad")
    forest = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(adata.obsm["X_rep"],
                                                                                    adata.obs["cell_type"])
    dump(forest, tmp_path / "forest.skops")
    for src, dst in (("in.h5ad", "ref.h5ad"), ("in.zarr", "out.zarr")):
        assert main(["tree-shap", "-i", str(stores / src), "-o", str(tmp_path / dst), "--model",
                     str(tmp_path / "forest.skops"), "--use-rep", "X_rep", "--groupby", "cell_type"]) == 0
    np.testing.assert_array_equal(ad.read_zarr(tmp_path / "out.zarr").obsm["tree_shap"],
                                  ad.read_h5ad(tmp_path / "ref.h5ad").obsm["tree_shap"])


def test_refuses_the_input_itself_and_nested_paths(stores, tmp_path):
    inp = stores / "in.zarr"
    for out, match in ((inp, "must differ"), (stores / "./in.zarr", "must differ"), (inp / "sub.zarr", "nested"),
                       (stores / "in.h5ad", "must differ")):
        src = stores / "in.h5ad" if out.name == "in.h5ad" else inp
        with pytest.raises(InputError, match=match):
            check_io_paths(src, out)
    (tmp_path / "notes.zarr").mkdir()
    (tmp_path / "notes.zarr" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not a zarr store"):
        check_io_paths(inp, tmp_path / "notes.zarr")
    with pytest.raises(InputError, match=r"neither \.h5ad nor \.zarr"):
        check_io_paths(inp, tmp_path / "out.loom")


def test_an_existing_zarr_output_is_replaced_only_when_complete(stores, tmp_path, monkeypatch):
    small = ad.AnnData(np.ones((3, 2), np.float32))
    big = ad.read_h5ad(stores / "in.h5ad")
    out = tmp_path / "out.zarr"
    write_output(small, out)
    write_output(big, out)  # replaced
    assert ad.read_zarr(out).shape == big.shape

    real = ad.AnnData.write_zarr

    def fail(self, store, *args, **kwargs):
        (tmp_path / "started").touch()
        real(small, store)  # a partial store in the temporary folder
        raise RuntimeError("disk gone")

    monkeypatch.setattr(ad.AnnData, "write_zarr", fail)
    with pytest.raises(RuntimeError, match="disk gone"):
        write_output(big, out)
    assert (tmp_path / "started").exists()
    assert ad.read_zarr(out).shape == big.shape  # the previous output, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr", "started"]


def test_info_reads_zarr(stores, capsys):
    assert main(["info", "-i", str(stores / "in.zarr")]) == 0
    assert "no scexplain results" in capsys.readouterr().out


def test_a_store_without_raw_or_x_reads(tmp_path, toy_adata):
    """anndata writes an absent ``raw`` (and ``X``) as a "null"-encoded array, not a group."""
    adata = toy_adata.copy()
    adata.X = None
    assert adata.raw is None
    adata.write_zarr(tmp_path / "noraw.zarr")
    back = read_input(tmp_path / "noraw.zarr")
    assert back.raw is None and back.X is None
    np.testing.assert_array_equal(back.layers["lognorm"].compute(), toy_adata.layers["lognorm"])
