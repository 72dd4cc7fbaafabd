"""Every failure ends with exit 1 and one line on stderr naming the problem and the fix; --debug adds a traceback."""

import anndata as ad
import pytest
import torch

from _cli_helpers import error_lines, export, mlp, run_cli
from scexplain.cli import main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, toy_adata):
    d = tmp_path_factory.mktemp("errors")
    toy_adata.write_h5ad(d / "in.h5ad")
    export(mlp(toy_adata.n_vars), toy_adata.n_vars, d / "model.pt2")
    export(mlp(toy_adata.n_vars - 10), toy_adata.n_vars - 10, d / "narrow.pt2")
    (d / "junk.h5ad").write_text("junk\n")
    data = (d / "in.h5ad").read_bytes()
    (d / "truncated.h5ad").write_bytes(data[: len(data) // 2])
    (d / "junk.zarr").mkdir()
    (d / "junk.zarr" / "X").write_text("junk\n")
    for name in ("junk.pt2", "junk.skops", "junk.json", "junk.txt", "junk.pt"):
        (d / name).write_text("junk\n")
    (d / "folder.h5ad").mkdir()
    return d


def _one_line(proc, command, *words):
    lines = error_lines(proc)
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"scexplain {command}: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("name", "words"),
    [("junk.h5ad", ["Cannot read", "h5ad", "file signature not found"]),
     ("truncated.h5ad", ["Cannot read", "h5ad", "complete"]),
     ("junk.zarr", ["not a zarr store", "write_zarr"])],
)
def test_corrupt_input_gives_one_line(workdir, capsys, name, words):
    assert main(["deep-shap", "-i", str(workdir / name), "-o", str(workdir / f"out-{name}"), "--model",
                 str(workdir / "model.pt2")]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("scexplain deep-shap: error: ")
    assert all(w in lines[0] for w in words), lines[0]
    assert not (workdir / f"out-{name}").exists()


def test_corrupt_input_in_a_fresh_process(workdir):
    """``echo junk > in.h5ad``: one line, exit 1, no traceback, nothing else on stderr."""
    proc = run_cli("deep-shap", "-i", workdir / "junk.h5ad", "-o", workdir / "out.h5ad", "--model",
                   workdir / "model.pt2")
    _one_line(proc, "deep-shap", "Cannot read", "junk.h5ad")


def test_corrupt_input_with_debug_shows_the_traceback(workdir):
    proc = run_cli("deep-shap", "-i", workdir / "junk.h5ad", "-o", workdir / "o.h5ad", "--model",
                   workdir / "model.pt2", "--debug")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert error_lines(proc)[-1].startswith("scexplain deep-shap: error: Cannot read")


def test_info_on_a_corrupt_file(workdir):
    _one_line(run_cli("info", "-i", workdir / "junk.h5ad"), "info", "Cannot read")


@pytest.mark.parametrize(
    ("argv", "words"),
    [(["deep-shap", "--model", "junk.pt2"], ["not a torch.export archive", "--allow-pickle"]),
     (["deep-shap", "--model", "junk.pt", "--allow-pickle"], ["Cannot load", "torch.load"]),
     (["deep-shap", "--model", "narrow.pt2", "--layer", "lognorm"], ["takes 30 genes", "40"]),
     (["deep-shap", "--model", "model.pt2", "--groupby", "nope"], ["nope"]),
     (["deep-shap", "--model", "model.pt2", "--layer", "nope"], ["nope", "available layers"]),
     (["vargrad", "--model", "model.pt2", "--n-samples", "0"], ["n_samples"]),
     (["tree-shap", "--model", "junk.skops"], ["Cannot read", "skops"]),
     (["tree-shap", "--model", "junk.json"], ["Cannot read", "XGBoost"]),
     (["tree-shap", "--model", "junk.txt"], ["Cannot read", "LightGBM"]),
     (["tree-shap", "--model", "model.pt2"], ["Unknown model file type", ".skops"]),
     (["deep-shap", "--model", "model.pt2", "-o", "out.csv"], ["neither .h5ad nor .zarr"]),
     (["deep-shap", "--model", "model.pt2", "-o", "folder.h5ad"], ["is a folder"]),
     (["deep-shap", "--model", "missing.pt2"], ["does not exist"])],
    ids=["junk-pt2", "junk-pickle", "gene-mismatch", "groupby", "layer", "bad-option", "junk-skops", "junk-xgboost",
         "junk-lightgbm", "wrong-model-type", "wrong-output-format", "output-is-a-folder", "missing-model"],
)
def test_failures_give_one_line(workdir, monkeypatch, capsys, argv, words):
    monkeypatch.chdir(workdir)
    if "-o" not in argv:
        argv = [*argv, "-o", "out.h5ad"]
    assert main([argv[0], "-i", "in.h5ad", *argv[1:]]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"scexplain {argv[0]}: error: ") and all(w in lines[0] for w in words), lines[0]
    assert not (workdir / "out.h5ad").exists()


def test_an_unexpected_error_names_its_type_and_debug(workdir, monkeypatch, capsys):
    import scexplain.tl as tl

    def boom(*args, **kwargs):
        raise RuntimeError("something deep\nfailed")

    monkeypatch.setattr(tl, "deep_shap", boom)
    assert main(["deep-shap", "-i", str(workdir / "in.h5ad"), "-o", str(workdir / "x.h5ad"), "--model",
                 str(workdir / "model.pt2")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: something deep failed" in err and "--debug" in err


@pytest.mark.parametrize("argv", [["deep-shap", "-i", "a.h5ad", "-o", "b.h5ad", "--model", "m", "--threads", "0"],
                                  ["info"], ["tree-shap", "-i", "a.h5ad"]])
def test_usage_errors_stay_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_a_failed_write_leaves_no_partial_output(workdir, monkeypatch, capsys):
    def fail(self, *args, **kwargs):
        (workdir / "partial-was-started").touch()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", fail)
    out = workdir / "never.h5ad"
    assert main(["deep-shap", "-i", str(workdir / "in.h5ad"), "-o", str(out), "--model",
                 str(workdir / "model.pt2"), "--layer", "lognorm", "--groupby", "cell_type"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "--output folder" in err
    assert (workdir / "partial-was-started").exists() and not out.exists()
    assert not [p for p in workdir.iterdir() if p.name.startswith(".never.h5ad")]
    assert torch.get_num_threads() >= 1
