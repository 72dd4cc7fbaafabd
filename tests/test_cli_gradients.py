"""`scexplain vargrad | smoothgrad | integrated-gradients`: h5ad in → h5ad out, exit codes 0 / 1 / 2."""

import anndata as ad
import numpy as np
import pytest
import torch

import scexplain as sx
from _cli_helpers import export
from scexplain.cli import main

COMMANDS = {
    "vargrad": (["--n-samples", "5", "--noise-level", "0.2"], sx.tl.vargrad, {"n_samples": 5, "noise_level": 0.2}),
    "smoothgrad": (["--n-samples", "4", "--stdev", "0.3", "--multiply-by-inputs"], sx.tl.smoothgrad,
                   {"n_samples": 4, "stdev": 0.3, "multiply_by_inputs": True}),
    "integrated-gradients": (["--n-steps", "8", "--baseline", "background_mean", "--n-background", "12"],
                             sx.tl.integrated_gradients, {"n_steps": 8, "baseline": "background_mean",
                                                          "n_background": 12}),
}


@pytest.fixture
def files(tmp_path, toy_adata):
    path_in = tmp_path / "in.h5ad"
    toy_adata.write_h5ad(path_in)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(toy_adata.n_vars, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    path_model = tmp_path / "model.pt2"
    export(model, toy_adata.n_vars, path_model)
    return path_in, path_model, tmp_path / "out.h5ad", model


@pytest.mark.parametrize("command", list(COMMANDS))
def test_round_trip_equals_the_python_api(files, command):
    path_in, path_model, path_out, model = files
    extra, func, kwargs = COMMANDS[command]
    rc = main([command, "-i", str(path_in), "-o", str(path_out), "--model", str(path_model), "--groupby",
               "cell_type", "--layer", "lognorm", "--seed", "3", *extra])
    assert rc == 0
    key = command.replace("-", "_")
    out = ad.read_h5ad(path_out)
    expected = ad.read_h5ad(path_in)
    func(expected, torch.export.load(path_model), groupby="cell_type", layer="lognorm", random_state=3,
         progress=False, **kwargs)
    np.testing.assert_array_equal(out.layers[key], expected.layers[key])
    eager = ad.read_h5ad(path_in)  # the exported program has the gradients of the module it came from
    func(eager, model, groupby="cell_type", layer="lognorm", random_state=3, progress=False, **kwargs)
    np.testing.assert_allclose(out.layers[key], eager.layers[key], rtol=1e-5, atol=1e-6)
    assert out.uns[key]["params"]["method"] == key
    assert [p.name for p in path_out.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert key not in ad.read_h5ad(path_in).layers


@pytest.mark.parametrize("command", list(COMMANDS))
def test_refuses_to_overwrite_input(files, capsys, command):
    path_in, path_model, _, _ = files
    assert main([command, "-i", str(path_in), "-o", str(path_in), "--model", str(path_model)]) == 1
    assert "--output must differ" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "bad", "message"),
    [("vargrad", ["--n-samples", "0"], "n_samples"), ("smoothgrad", ["--noise-level", "-1"], "noise_level"),
     ("integrated-gradients", ["--n-steps", "0"], "n_steps"), ("vargrad", ["--groupby", "nope"], "nope")],
)
def test_error_exit_1_and_no_output_written(files, capsys, command, bad, message):
    path_in, path_model, path_out, _ = files
    rc = main([command, "-i", str(path_in), "-o", str(path_out), "--model", str(path_model), "--layer", "lognorm",
               "--groupby", "cell_type", *bad])
    assert rc == 1
    assert message in capsys.readouterr().err
    assert not path_out.exists()
    assert [p.name for p in path_out.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize(
    "argv",
    [["vargrad", "-i", "x.h5ad"], ["smoothgrad", "-i", "x", "-o", "y", "--model", "m", "--n-samples", "many"],
     ["vargrad", "-i", "x", "-o", "y", "--model", "m", "--noise-level", "0.1", "--stdev", "1"],
     ["integrated-gradients", "-i", "x", "-o", "y", "--model", "m", "--baseline", "ones"]],
)
def test_usage_error_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_help_says_why_pickles_need_allow_pickle(capsys):
    with pytest.raises(SystemExit):
        main(["vargrad", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--allow-pickle" in text and "Unpickling runs any code" in text and "torch.export" in text
