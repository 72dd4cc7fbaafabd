"""Malicious model files: nothing in them runs without --allow-pickle (the marker file stays absent).

Each payload is shown to be live first (loading it the unsafe way creates the marker), then the command line is
run on it in a fresh process: exit 1, one line on stderr naming the problem and ``--allow-pickle``, no marker.
"""

import io
import json
import zipfile

import joblib
import numpy as np
import pytest
import torch

from _cli_helpers import error_lines, export, mlp, run_cli


class Payload:
    """Unpickling this object runs ``code`` (``exec``)."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def _touch(marker) -> str:
    return f"open({str(marker)!r}, 'w').close()"


@pytest.fixture
def data(tmp_path, toy_adata):
    path = tmp_path / "in.h5ad"
    toy_adata.write_h5ad(path)
    return path


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER"
    yield path
    path.unlink(missing_ok=True)


def _refused(proc, marker, *words):
    lines = error_lines(proc)
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "--allow-pickle" in lines[0] and all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def _assert_live(load, marker):
    """The payload really runs when the file is loaded the unsafe way."""
    try:
        load()
    except Exception:
        pass
    assert marker.exists()
    marker.unlink()


def test_torch_save_pickle(tmp_path, data, marker):
    path = tmp_path / "model.pt"
    torch.save(Payload(_touch(marker)), path)
    _assert_live(lambda: torch.load(path, weights_only=False), marker)
    proc = run_cli("deep-shap", "-i", data, "-o", tmp_path / "out.h5ad", "--model", path)
    _refused(proc, marker, "unpickled")
    assert not (tmp_path / "out.h5ad").exists()


def test_joblib_pickle(tmp_path, data, marker):
    path = tmp_path / "forest.joblib"
    joblib.dump(Payload(_touch(marker)), path)
    _assert_live(lambda: joblib.load(path), marker)
    proc = run_cli("tree-shap", "-i", data, "-o", tmp_path / "out.h5ad", "--model", path)
    _refused(proc, marker, "skops")


def test_scvi_folder_with_a_pickle(tmp_path, data, marker):
    folder = tmp_path / "scvi_model"
    folder.mkdir()
    torch.save({"model_state_dict": {}, "var_names": np.array(["g0", "g1"], dtype=object),
                "attr_dict": {"registry_": Payload(_touch(marker))}}, folder / "model.pt")
    from scexplain.models._scvi_load import load_scvi_model

    _assert_live(lambda: load_scvi_model(folder, allow_pickle=True), marker)
    proc = run_cli("deep-shap", "-i", data, "-o", tmp_path / "out.h5ad", "--model", folder)
    _refused(proc, marker, "model.pt", "builtins.exec")


def _rewrite(src, dst, change):
    """Copy the zip archive ``src`` to ``dst``, passing each member through ``change(name, bytes) -> bytes``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info, change(info.filename, zin.read(info.filename)))


def _pickled(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _guards(name, content, marker):
    if name.endswith("models/model.json"):
        program = json.loads(content)
        program["guards_code"] = [f"__import__('os').system('touch {marker}') == 0"]
        return json.dumps(program).encode()
    return content


def _pickled_weight(name, content, marker):
    if name.endswith("model_weights_config.json"):
        config = json.loads(content)
        next(iter(config["config"].values()))["use_pickle"] = True
        return json.dumps(config).encode()
    if name.endswith("data/weights/weight_0"):
        return _pickled(Payload(_touch(marker)))
    return content


def _sample_inputs(name, content, marker):
    return _pickled(Payload(_touch(marker))) if name.endswith("sample_inputs/model.pt") else content


def _expression(name, content, marker):
    if name.endswith("models/model.json"):
        text = content.decode()
        start = text.index('"expr_str": "') + len('"expr_str": "')
        end = text.index('"', start)
        return (text[:start] + f"__import__('os').system('touch {marker}')" + text[end:]).encode()
    return content


def _run_program(path):
    program = torch.export.load(path)
    program.module()(torch.rand(3, 40))


@pytest.mark.parametrize(
    ("tamper", "words"),
    [(_guards, "guard code"), (_pickled_weight, "pickled"), (_sample_inputs, "sample inputs"),
     (_expression, "symbolic expression")],
    ids=["guards-code-exec", "pickled-weight", "sample-inputs-fallback", "sympify-eval"],
)
def test_torch_export_archive_that_runs_code(tmp_path, data, marker, tamper, words):
    good = tmp_path / "good.pt2"
    export(mlp(40), 40, good)
    evil = tmp_path / "model.pt2"
    _rewrite(good, evil, lambda name, content: tamper(name, content, marker))
    _assert_live(lambda: _run_program(evil), marker)  # torch.export.load (and running the program) runs it
    proc = run_cli("deep-shap", "-i", data, "-o", tmp_path / "out.h5ad", "--model", evil, "--layer", "lognorm")
    _refused(proc, marker, "torch.export archive", words)


def test_untampered_archive_passes_the_check(tmp_path):
    from scexplain._commands._pt2 import pt2_problems

    path = tmp_path / "model.pt2"
    export(mlp(40, act=torch.nn.GELU), 40, path)
    assert pt2_problems(path) == []


def test_skops_file_with_an_untrusted_type(tmp_path, data):
    skops_io = pytest.importorskip("skops.io")
    path = tmp_path / "model.skops"
    skops_io.dump({"model": np.float64(1.0), "counter": __import__("collections").Counter("ab")}, path)
    proc = run_cli("tree-shap", "-i", data, "-o", tmp_path / "out.h5ad", "--model", path)
    lines = error_lines(proc)
    assert proc.returncode == 1 and len(lines) == 1
    assert "collections.Counter" in lines[0] and "--allow-pickle" in lines[0]


def test_scvi_reader_refuses_even_when_the_globals_scan_misses_a_payload(tmp_path, marker, monkeypatch):
    """Defence in depth: torch's weights_only unpickler, then the allow-list unpickler, each refuse on their own."""
    from scexplain._io import UnsafeFileError
    from scexplain.models._scvi_load import read_model_file

    path = tmp_path / "model.pt"
    torch.save({"attr_dict": {"registry_": Payload(_touch(marker))}}, path)
    monkeypatch.setattr(torch.serialization, "get_unsafe_globals_in_checkpoint", lambda f: [])
    with pytest.raises(UnsafeFileError, match="without full unpickling"):
        read_model_file(path)
    assert not marker.exists()


def test_scvi_reader_reads_what_scvi_tools_saves(tmp_path):
    scvi = pytest.importorskip("scvi")
    from scexplain.models._scvi_load import read_model_file

    adata = scvi.data.synthetic_iid(batch_size=20, n_genes=10, n_batches=2, n_labels=2)
    scvi.model.SCANVI.setup_anndata(adata, labels_key="labels", unlabeled_category="label_0", batch_key="batch")
    scvi.model.SCANVI(adata, n_latent=2, n_hidden=4).save(str(tmp_path / "m"))
    safe = read_model_file(tmp_path / "m" / "model.pt")
    full = torch.load(tmp_path / "m" / "model.pt", weights_only=False)
    from _helpers import assert_value_equal

    def plain(x):  # tensors as arrays, defaultdicts as dicts: what assert_value_equal compares
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x.numpy() if isinstance(x, torch.Tensor) else x

    assert set(safe) == set(full)
    assert_value_equal(plain(safe), plain(full))
    assert type(safe["attr_dict"]) is type(full["attr_dict"])


@pytest.mark.parametrize(
    ("text", "safe"),
    [("Symbol('s31', positive=True, integer=True)", True), ("Max(2, s1) + 3*s2 - FloorDiv(s0, 2)", True),
     ("__import__('os').system('x')", False), ("s1.__class__", False), ("Symbol('a b')", False),
     ("Symbol('s0', evaluate=__import__('os'))", False), ("lambda: 0", False), ("[s0 for s0 in s1]", False)],
)
def test_symbolic_expression_grammar(text, safe):
    from scexplain._commands._pt2 import _safe_expression

    assert _safe_expression(text) is safe


@pytest.mark.parametrize(
    ("text", "safe"),
    [("L['input'].size()[0] >= 2", True), ("L['x'].size()[1] == 10 and L['x'].stride()[1] == 1", True),
     ("math.isnan(L['x'].size()[0]) == False", True), ("__import__('os').system('x') == 0", False),
     ("L['x'].__class__", False), ('L["x"].size()[0] >= 2', False), ("L['x').size(); import os", False),
     ("torch.os.system('x')", False), ("L['a b'].size()[0] == 1", False), ("math.__dict__", False)],
)
def test_guard_grammar(text, safe):
    from scexplain._commands._pt2 import _safe_guard

    assert _safe_guard(text) is safe


@pytest.mark.parametrize(
    ("target", "safe"),
    [("torch.ops.aten.linear.default", True), ("torch.ops.aten.softmax.int", True), ("_operator.getitem", True),
     ("torch.ops.aten.save.default", False), ("torch.ops.aten.from_file.default", False),
     ("torch.os.system", False), ("builtins.eval", False), ("_operator.attrgetter", False),
     ("torch.ops.aten.no_such_op.default", False), ("torch.ops.higher_order.cond", False)],
)
def test_node_targets(target, safe):
    from scexplain._commands._pt2 import _safe_target

    assert _safe_target(target) is safe
