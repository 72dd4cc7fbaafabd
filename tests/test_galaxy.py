"""The Galaxy tools in ``galaxy/``: each ``<test>`` rendered as Galaxy would, run, and its assertions checked."""

from pathlib import Path

import pytest

import scexplain as sx
from _galaxy import check_assertions, load_tool, render_template

GALAXY = Path(__file__).resolve().parents[1] / "galaxy"
TOOLS = sorted(GALAXY.glob("scexplain_*.xml"))
CASES = [(tool.name, i) for tool in TOOLS for i in range(len(load_tool(tool).tests))]


@pytest.fixture(scope="module")
def script():
    """``galaxy/make_test_data.py`` as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_test_data", GALAXY / "make_test_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_suite_has_a_tool_per_command():
    ids = {load_tool(t).root.get("id") for t in TOOLS}
    assert ids == {"scexplain_deep_shap", "scexplain_gradients", "scexplain_tree_shap", "scexplain_info"}
    for path in TOOLS:
        tool = load_tool(path)
        command = tool.root.find("command")
        assert command.get("detect_errors") == "exit_code"
        assert "--threads ${GALAXY_SLOTS:-1}" in render_template(tool.command, _dummy_namespace(tool))
        assert [r.text for r in tool.root.iter("requirement")] == ["scexplain"]
        assert tool.root.get("version").startswith(f"{sx.__version__}+galaxy")


def _dummy_namespace(tool):
    """Defaults for every parameter (datasets named after the parameter): enough to render the command."""
    from _galaxy import _namespace

    def datasets(element):
        out = {}
        for child in element:
            if child.tag == "param" and child.get("type") == "data":
                out[child.get("name")] = f"/data/{child.get('name')}.dat"
            elif child.tag == "conditional":
                out[child.get("name")] = {k: v for w in child.findall("when") for k, v in datasets(w).items()}
        return out

    namespace = _namespace(tool.root.find("inputs"), {}, datasets(tool.root.find("inputs")))
    return namespace | {name: f"/data/{name}.out" for name in tool.outputs()}


def test_stored_test_data_is_what_the_script_writes(script, tmp_path):
    """The files the tests use are small, and the script writes the same models again, byte for byte.

    (scANVI's zip is not remade here: training costs more than the tests that use it, which check it.)
    """
    stored = GALAXY / "test-data"
    assert sum(p.stat().st_size for p in stored.iterdir()) < 1_000_000
    adata = script.toy()
    script.exported_mlp(adata.n_vars, tmp_path / "mlp.pt2")
    script.trees(adata, tmp_path)
    for name in ("mlp.pt2", "xgboost.json", "lightgbm.txt"):
        assert (stored / name).read_bytes() == (tmp_path / name).read_bytes(), name
    import anndata as ad
    import numpy as np

    np.testing.assert_array_equal(ad.read_h5ad(stored / "toy.h5ad").layers["lognorm"], adata.layers["lognorm"])


@pytest.mark.parametrize(("tool_name", "index"), CASES)
def test_tool_test(tool_name, index, tmp_path):
    tool = load_tool(GALAXY / tool_name)
    test = tool.tests[index]
    code, stdout, stderr, outputs, command = tool.run(test, GALAXY / "test-data", tmp_path / "job", slots=2)
    assert "--threads $" in command and "\\$" not in command
    if test.expect_failure:
        assert code != 0, stderr
        if test.expect_exit_code is not None:
            assert code == test.expect_exit_code, stderr
    else:
        assert code == 0, f"{command}\n{stderr}"
    n = check_assertions(test.stdout, text=stdout) + check_assertions(test.stderr, text=stderr)
    for name, output in test.outputs.items():
        assert outputs[name].exists(), name
        n += check_assertions(output.find("assert_contents"), path=outputs[name])
    assert n >= 1  # every test checks something
    assert not [p for p in (tmp_path / "job").iterdir() if p.name.startswith(".")]  # no temporaries left


def test_renderer_follows_cheetah_on_the_cases_the_tools_use():
    template = "\n".join([
        "ln -s '$input' input.h5ad &&",
        "#if $cond.kind == 'a':",
        "    run --model '$cond.model'",
        "#elif $cond.kind == 'b':",
        "    run --other",
        "#else:",
        "    run --none",
        "#end if",
        "## a comment",
        "#if $flag:",
        "    $flag",
        "#end if",
        "    --threads \\${GALAXY_SLOTS:-1} --n ${n}",
    ])
    from _galaxy import Namespace

    ns = {"input": "/d/1.dat", "cond": Namespace("b", {"kind": "b", "model": "m"}), "flag": "", "n": 3}
    assert render_template(template, ns) == "ln -s '/d/1.dat' input.h5ad && run --other --threads ${GALAXY_SLOTS:-1} --n 3"
    ns["cond"] = Namespace("a", {"kind": "a", "model": "m.pt2"})
    ns["flag"] = "--yes"
    assert render_template(template, ns) == ("ln -s '/d/1.dat' input.h5ad && run --model 'm.pt2' --yes "
                                             "--threads ${GALAXY_SLOTS:-1} --n 3")
    with pytest.raises(ValueError, match="directive"):
        render_template("#for $x in $y:\n$x\n#end for", {"y": []})
