"""The command line: AnnData in → AnnData out, safe model formats, exit codes, atomic writes, never the input."""

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import torch

import scexplain as sx
from _cli_helpers import export, mlp
from scexplain.cli import main


@pytest.fixture
def files(tmp_path, toy_adata):
    adata = toy_adata.copy()
    path_in = tmp_path / "in.h5ad"
    adata.write_h5ad(path_in)
    model = mlp(adata.n_vars)
    export(model, adata.n_vars, tmp_path / "model.pt2")
    torch.save(model, tmp_path / "model.pt")
    return path_in, tmp_path / "model.pt2", tmp_path / "out.h5ad", model


def test_deep_shap_of_an_exported_program_equals_the_python_api(files):
    path_in, path_model, path_out, model = files
    rc = main(["deep-shap", "-i", str(path_in), "-o", str(path_out), "--model", str(path_model),
               "--groupby", "cell_type", "--layer", "lognorm", "--n-background", "20"])
    assert rc == 0
    out = ad.read_h5ad(path_out)
    expected = ad.read_h5ad(path_in)
    sx.tl.deep_shap(expected, torch.export.load(path_model), groupby="cell_type", layer="lognorm", n_background=20,
                    progress=False)
    np.testing.assert_array_equal(out.layers["deep_shap"], expected.layers["deep_shap"])
    eager = ad.read_h5ad(path_in)  # the program explains exactly as the module it was exported from
    sx.tl.deep_shap(eager, model, groupby="cell_type", layer="lognorm", n_background=20, progress=False)
    np.testing.assert_allclose(out.layers["deep_shap"], eager.layers["deep_shap"], rtol=1e-5, atol=1e-6)
    assert out.uns["deep_shap"]["additivity"]["max_relative_error"] < 1e-3
    assert [p.name for p in path_out.parent.iterdir() if p.name.endswith(".tmp")] == []
    # the input is unchanged; the output has ordinary permissions (not mkstemp's 0600)
    assert "deep_shap" not in ad.read_h5ad(path_in).layers
    assert path_out.stat().st_mode & 0o044 == path_in.stat().st_mode & 0o044


def test_torch_save_file_needs_allow_pickle(files, capsys):
    path_in, _, path_out, model = files
    path_model = path_in.parent / "model.pt"
    argv = ["deep-shap", "-i", str(path_in), "-o", str(path_out), "--model", str(path_model), "--groupby",
            "cell_type", "--layer", "lognorm", "--n-background", "20"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--allow-pickle" in err and "torch.export.save" in err and err.count("\n") == 1
    assert not path_out.exists()
    assert main([*argv, "--allow-pickle"]) == 0
    expected = ad.read_h5ad(path_in)
    sx.tl.deep_shap(expected, model, groupby="cell_type", layer="lognorm", n_background=20, progress=False)
    np.testing.assert_array_equal(ad.read_h5ad(path_out).layers["deep_shap"], expected.layers["deep_shap"])


def test_refuses_to_overwrite_input(files, capsys):
    path_in, path_model, _, _ = files
    rc = main(["deep-shap", "-i", str(path_in), "-o", str(path_in), "--model", str(path_model)])
    assert rc == 1
    assert "--output must differ" in capsys.readouterr().err


def test_split_and_bootstrap_options_equal_the_python_api(files, capsys):
    path_in, path_model, path_out, _ = files
    common = ["deep-shap", "-i", str(path_in), "--model", str(path_model), "--groupby", "cell_type", "--layer",
              "lognorm", "--n-background", "20"]
    assert main([*common, "-o", str(path_out), "--n-bootstrap", "8", "--ci-level", "0.9", "--n-top", "5"]) == 0
    out = ad.read_h5ad(path_out)
    expected = ad.read_h5ad(path_in)
    sx.tl.deep_shap(expected, torch.export.load(path_model), groupby="cell_type", layer="lognorm", n_background=20,
                    n_bootstrap=8, ci_level=0.9, n_top=5, progress=False)
    for name in ("deep_shap_presence", "deep_shap"):
        np.testing.assert_array_equal(out.layers[name], expected.layers[name])
    for table in ("ci_low", "ci_high", "rank_stability"):
        np.testing.assert_array_equal(out.varm[f"deep_shap_{table}"], expected.varm[f"deep_shap_{table}"])
    assert out.uns["deep_shap"]["params"]["bootstrap"]["ci_level"] == 0.9
    plain = path_out.with_name("plain.h5ad")
    assert main([*common, "-o", str(plain), "--no-split"]) == 0
    assert "deep_shap_presence" not in ad.read_h5ad(plain).layers
    capsys.readouterr()
    assert main([*common, "-o", str(path_out.with_name("bad.h5ad")), "--n-bootstrap", "1"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "n_bootstrap" in err[0]


def test_tree_shap_to_genes_and_bootstrap_options_equal_the_python_api(tmp_path):
    import scanpy as sc
    import skops.io
    from sklearn.ensemble import RandomForestClassifier

    adata = sc.datasets.pbmc68k_reduced()[:300].copy()
    del adata.uns["rank_genes_groups"]
    sc.pp.pca(adata, n_comps=10)
    forest = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(
        adata.obsm["X_pca"], adata.obs["bulk_labels"])
    skops.io.dump(forest, tmp_path / "forest.skops")
    adata.write_h5ad(tmp_path / "in.h5ad")
    out_path = tmp_path / "out.h5ad"
    assert main(["tree-shap", "-i", str(tmp_path / "in.h5ad"), "-o", str(out_path), "--model",
                 str(tmp_path / "forest.skops"), "--use-rep", "X_pca", "--groupby", "bulk_labels",
                 "--feature-perturbation", "interventional", "--n-background", "30", "--to-genes",
                 "--n-bootstrap", "6", "--ci-level", "0.8", "--n-top", "5"]) == 0
    out = ad.read_h5ad(out_path)
    sx.tl.tree_shap_gpu(adata, forest, use_rep="X_pca", groupby="bulk_labels", feature_perturbation="interventional",
                        n_background=30, to_genes=True, n_bootstrap=6, ci_level=0.8, n_top=5, key_added="tree_shap",
                        progress=False)
    np.testing.assert_array_equal(out.layers["tree_shap"], adata.layers["tree_shap"])
    np.testing.assert_array_equal(out.obsm["tree_shap"], adata.obsm["tree_shap"])
    for table in ("ci_low", "ci_high", "rank_stability"):
        np.testing.assert_array_equal(out.varm[f"tree_shap_{table}"], adata.varm[f"tree_shap_{table}"])


def test_error_exit_1_and_no_output_written(files, capsys):
    path_in, path_model, path_out, _ = files
    rc = main(["deep-shap", "-i", str(path_in), "-o", str(path_out), "--model", str(path_model),
               "--groupby", "no_such_column"])
    assert rc == 1
    assert "no_such_column" in capsys.readouterr().err
    assert not path_out.exists()
    assert [p.name for p in path_out.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_missing_model_and_input(files, capsys):
    path_in, _, path_out, _ = files
    assert main(["deep-shap", "-i", str(path_in), "-o", str(path_out), "--model", "nope.pt2"]) == 1
    assert main(["deep-shap", "-i", "nope.h5ad", "-o", str(path_out), "--model", "nope.pt2"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_usage_error_exit_2(files):
    path_in, _, _, _ = files
    out = subprocess.run([sys.executable, "-m", "scexplain", "deep-shap", "-i", str(path_in)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "--output" in out.stderr


def test_info_lists_results(files, capsys):
    path_in, path_model, path_out, _ = files
    main(["deep-shap", "-i", str(path_in), "-o", str(path_out), "--model", str(path_model), "--groupby",
          "cell_type", "--layer", "lognorm", "--target", "all"])
    capsys.readouterr()
    assert main(["info", "-i", str(path_out)]) == 0
    assert "deep_shap: method=deep_shap target=all" in capsys.readouterr().out


def test_every_command_takes_the_run_options(capsys):
    for command in ("deep-shap", "vargrad", "smoothgrad", "integrated-gradients", "tree-shap", "info", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert all(option in text for option in ("--threads", "--verbose", "--debug")), command
        if command not in ("info", "demo"):
            assert "--allow-pickle" in text and ".zarr" in text, command
