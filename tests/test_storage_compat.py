"""Files written by scexplain 0.1.0 (storage layout 1) still read: get, pl, info and scanpy's reader.

The files in tests/data/v1 were written by 0.1.0 itself (see make_v1_files.py there): group names as DataFrame
columns, keep_all layers named after outputs, latent group tables keyed "{group}|{dim}".
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import scexplain as sx
from scexplain._results import get_result

matplotlib.use("Agg")

DATA = Path(__file__).parent / "data" / "v1"
GROUPS = ["CD4+/CD25 T Reg", "B cell", "NK/T"]


@pytest.fixture(scope="module")
def v1():
    return ad.read_h5ad(DATA / "results_v1.h5ad")


@pytest.fixture(scope="module")
def v1_latent():
    return ad.read_h5ad(DATA / "latent_v1.h5ad")


def test_the_files_are_layout_1(v1):
    res = get_result(v1, "deep_shap")
    assert res.layout == 1
    assert isinstance(v1.varm["deep_shap"], pd.DataFrame)  # as 0.1.0 wrote it


@pytest.mark.parametrize("key", ["deep_shap", "deep_shap_all", "vargrad", "tree_genes", "tree_shap"])
def test_group_tables_and_groups_read(v1, key):
    res = get_result(v1, key)
    assert res.stored_groups == GROUPS
    table = res.group_table()
    assert list(table.columns) == GROUPS
    cells = (v1.obs["cell_type"] == "NK/T").to_numpy()
    np.testing.assert_allclose(table["NK/T"], res.cell_values()[cells].mean(0), rtol=1e-5, atol=1e-7)
    mean_abs = res.group_table(values="mean_abs")
    np.testing.assert_allclose(mean_abs["B cell"],
                               np.abs(res.cell_values()[(v1.obs["cell_type"] == "B cell").to_numpy()]).mean(0),
                               rtol=1e-5, atol=1e-7)


def test_rankings_read_by_get_and_scanpy(v1):
    for key in ("deep_shap", "tree_shap"):
        ranked = sx.get.ranked_genes_df(v1, key, group="CD4+/CD25 T Reg")
        df = sc.get.rank_genes_groups_df(v1, "CD4+/CD25 T Reg", key=key)
        assert ranked["names"].tolist() == df["names"].tolist()


def test_keep_all_layers_by_output_name(v1):
    res = get_result(v1, "deep_shap_all")
    assert res.output_names == ["out_a", "out_b", "out_c"]
    np.testing.assert_array_equal(res.output_layer("out_b"), v1.layers["deep_shap_all_out_b"])


def test_latent_tables(v1_latent):
    res = get_result(v1_latent, "deep_shap")
    assert res.latent_dims == ["latent_0", "latent_1"]
    assert list(res.latent_table().columns) == ["latent_0", "latent_1"]
    table = res.latent_group_table("NK/T")
    old = v1_latent.uns["deep_shap"]["latent_group_mean_abs"]
    np.testing.assert_array_equal(table["latent_1"], old["NK/T|latent_1"])


@pytest.mark.parametrize("plot", ["heatmap", "dotplot", "ranking"])
def test_plots_draw_old_results(v1, plot):
    import matplotlib.pyplot as plt

    fig = getattr(sx.pl, plot)(v1, "deep_shap", show=False, return_fig=True)
    assert fig is not None
    plt.close("all")


def test_info_reads_old_files(capsys):
    from scexplain.cli import main

    assert main(["info", "--input", str(DATA / "results_v1.h5ad")]) == 0
    out = capsys.readouterr().out
    assert "deep_shap: method=deep_shap" in out and "CD4+/CD25 T Reg" in out and "layout=1" in out
