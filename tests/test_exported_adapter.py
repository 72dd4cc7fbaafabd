"""``tl`` functions take an in-memory ``torch.export.ExportedProgram`` as they take the module it came from."""

import numpy as np
import pytest
import torch

import scexplain as sx
from _cli_helpers import mlp
from scexplain.models import adapt


def _export(model, n_genes, dims=None):
    dims = ({0: torch.export.Dim("cells")},) if dims is None else dims
    return torch.export.export(model.eval(), (torch.rand(4, n_genes),), dynamic_shapes=dims)


@pytest.mark.parametrize("method", ["deep_shap", "vargrad", "integrated_gradients"])
def test_program_equals_the_module(toy_adata, method):
    model = mlp(toy_adata.n_vars, act=torch.nn.Softplus)
    program = _export(model, toy_adata.n_vars)
    got, want = toy_adata.copy(), toy_adata.copy()
    func = getattr(sx.tl, method)
    kwargs = {"groupby": "cell_type", "layer": "lognorm", "dtype": "float64", "progress": False}
    func(got, program, **kwargs)
    func(want, model, **kwargs)
    np.testing.assert_allclose(got.layers[method], want.layers[method], rtol=1e-10, atol=1e-12)
    if method == "deep_shap":
        assert got.uns[method]["additivity"]["max_relative_error"] <= 1e-6
    assert got.uns[method]["params"]["model_class"].endswith("ExportedProgram")
    assert next(iter(program.state_dict.values())).dtype == torch.float32  # the program is left as it was


def test_width_comes_from_the_input_spec(toy_adata):
    program = _export(torch.nn.Sequential(torch.nn.Linear(toy_adata.n_vars - 1, 3)), toy_adata.n_vars - 1)
    assert adapt(program).n_inputs == toy_adata.n_vars - 1
    with pytest.raises(ValueError, match=f"takes {toy_adata.n_vars - 1} genes"):
        sx.tl.deep_shap(toy_adata.copy(), program, groupby="cell_type", progress=False)


def test_auto_dims_accept_a_last_batch_of_one_cell(toy_adata):
    """``Dim.AUTO`` programs (cells ≥ 2 in their range) still run batches of one cell."""
    model = mlp(toy_adata.n_vars)
    program = _export(model, toy_adata.n_vars, ({0: torch.export.Dim.AUTO},))
    got, want = toy_adata.copy(), toy_adata.copy()
    kwargs = {"groupby": "cell_type", "layer": "lognorm", "n_background": 10, "progress": False}
    sx.tl.deep_shap(got, program, batch_size=toy_adata.n_obs - 1, **kwargs)
    sx.tl.deep_shap(want, model, batch_size=toy_adata.n_obs - 1, **kwargs)
    np.testing.assert_allclose(got.layers["deep_shap"], want.layers["deep_shap"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("dims", "match"),
    [((None,), "exactly 4 cells"), (({0: torch.export.Dim("cells", max=100)},), "at most 100 cells"),
     (({0: torch.export.Dim("cells", min=3)},), "at least 3 cells")],
    ids=["static", "bounded", "minimum"],
)
def test_programs_that_cannot_take_the_batches_are_refused(dims, match):
    program = _export(torch.nn.Linear(5, 2), 5, dims)
    with pytest.raises(ValueError, match=match) as err:
        adapt(program)
    assert "torch.export.Dim('cells')" in str(err.value)


def test_programs_of_two_inputs_or_in_training_mode_are_refused():
    class TwoInputs(torch.nn.Module):
        def forward(self, x, y):
            return x + y

    d = torch.export.Dim("cells")
    program = torch.export.export(TwoInputs(), (torch.rand(3, 2), torch.rand(3, 2)), dynamic_shapes=({0: d}, {0: d}))
    with pytest.raises(TypeError, match="takes 2 inputs"):
        adapt(program)
    net = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3)).train()
    program = torch.export.export(net, (torch.rand(4, 5),), dynamic_shapes=({0: torch.export.Dim("cells")},))
    with pytest.raises(ValueError, match="training mode"):
        adapt(program)
    with pytest.raises(ValueError, match="explain="):
        adapt(_export(torch.nn.Linear(5, 2), 5), explain="latent")


@pytest.mark.gpu
def test_program_on_the_gpu_equals_the_cpu(toy_adata):
    model = mlp(toy_adata.n_vars)
    program = _export(model, toy_adata.n_vars)
    cpu, gpu = toy_adata.copy(), toy_adata.copy()
    kwargs = {"groupby": "cell_type", "layer": "lognorm", "dtype": "float64", "progress": False}
    sx.tl.deep_shap(cpu, program, device="cpu", **kwargs)
    sx.tl.deep_shap(gpu, program, device="cuda", **kwargs)
    np.testing.assert_allclose(gpu.layers["deep_shap"], cpu.layers["deep_shap"], rtol=1e-9, atol=1e-11)


def test_the_adapter_pickles_for_dask_workers():
    """A worker receives the adapter by pickle: the program travels as its archive, in the explained dtype."""
    import pickle

    from scexplain.models._exported import ExportedAdapter

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).eval()
    ep = torch.export.export(net, (torch.randn(4, 5),), dynamic_shapes=({0: torch.export.Dim("cells")},))
    adapter = ExportedAdapter(ep, output_names=["a", "b"])
    x = torch.randn(6, 5, dtype=torch.float64)
    with adapter.explaining(torch.device("cpu"), torch.float64):
        copy = pickle.loads(pickle.dumps(adapter))
        expected = adapter.forward(x)
    assert copy.output_names == ["a", "b"] and copy.n_inputs == 5
    torch.testing.assert_close(copy.forward(x), expected, rtol=0, atol=0)


def test_the_module_of_a_program_is_refused_naming_the_program(toy_adata):
    program = _export(mlp(toy_adata.n_vars), toy_adata.n_vars)
    with pytest.raises(TypeError, match=r"pass the ExportedProgram itself"):
        sx.tl.deep_shap(toy_adata, program.module(), groupby="cell_type", layer="lognorm", progress=False)
    assert "deep_shap" not in toy_adata.layers
