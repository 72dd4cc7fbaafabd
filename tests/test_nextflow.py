"""The nf-core modules in ``nextflow/``: the script and stub blocks rendered and run, meta.yml checked against
nf-core's schema."""

import json
import os
import re
import subprocess
from pathlib import Path

import h5py
import pytest
import yaml

import scexplain as sx
from _nextflow import ModuleError, parse_module, render_block

ROOT = Path(__file__).resolve().parents[1]
NEXTFLOW = ROOT / "nextflow"
MODULES = {p.parent.name: p.parent for p in sorted((NEXTFLOW / "modules/nf-core/scexplain").glob("*/main.nf"))}
TEST_DATA = ROOT / "galaxy" / "test-data"
#: the model each module's test runs with, and what its output must hold
CASES = {"deepshap": ("mlp.pt2", "layers/deep_shap"), "treeshap": ("forest.skops", "obsm/tree_shap")}
#: the fields nf-core/modules' modules/meta-schema.json requires ("required" at its top level; the stored copy
#: nextflow/meta-schema.json is that file at nf-core/modules commit 041fbd98, MIT licence)
META_REQUIRED = ["name", "description", "keywords", "authors", "output", "tools"]


def test_there_are_modules_for_deep_shap_and_tree_shap():
    assert set(MODULES) >= {"deepshap", "treeshap"}
    for name, folder in MODULES.items():
        for part in ("main.nf", "meta.yml", "environment.yml", "tests/main.nf.test", "tests/nextflow.config"):
            assert (folder / part).is_file(), f"{name}: {part}"


def _ext_args(folder: Path) -> str:
    config = (folder / "tests" / "nextflow.config").read_text()
    return re.search(r"ext\.args\s*=\s*'([^']*)'", config).group(1)


def _context(folder: Path, model: str, work: Path, *, prefix=None, args=None, cpus=2) -> dict:
    """What Nextflow gives the block: the staged inputs (links named as the files), task and meta."""
    for name in ("toy.h5ad", model):
        (work / name).symlink_to(TEST_DATA / name)
    ext = {"args": _ext_args(folder) if args is None else args, "prefix": prefix}
    return {"task": {"ext": ext, "cpus": cpus, "process": f"SCEXPLAIN_{folder.name.upper()}"},
            "meta": {"id": "test"}, "meta2": {"id": "model"}, "h5ad": "toy.h5ad", "model": model}


def _run(script: str, work: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, capture_output=True, text=True,
                          env=os.environ.copy())


def _versions_command(module) -> str:
    line = next(o for o in module.outputs if "topic: versions" in o)
    return re.search(r"eval\('([^']*)'\)", line).group(1)


@pytest.mark.parametrize("name", list(CASES))
def test_script_block_runs_with_ext_args_and_cpus(name, tmp_path):
    folder = MODULES[name]
    module = parse_module(folder / "main.nf")
    model, key = CASES[name]
    script = render_block(module.blocks["script"], _context(folder, model, tmp_path, cpus=2))
    assert "--threads 2" in script and _ext_args(folder) in script
    proc = _run(script, tmp_path)
    assert proc.returncode == 0, script + proc.stderr
    assert proc.stderr == ""  # quiet: no banners, no warnings
    with h5py.File(tmp_path / "test.h5ad", "r") as f:
        found = []
        f.visit(found.append)
    assert key in found
    # the versions topic: the eval'd command prints the bare version
    versions = _run(_versions_command(module), tmp_path)
    assert versions.stdout.strip() == sx.__version__ and re.fullmatch(r"\d+\.\d+\.\d+\S*", versions.stdout.strip())


@pytest.mark.parametrize("name", list(CASES))
def test_stub_block_and_prefix(name, tmp_path):
    folder = MODULES[name]
    module = parse_module(folder / "main.nf")
    model, _ = CASES[name]
    script = render_block(module.blocks["stub"], _context(folder, model, tmp_path, prefix="explained"))
    proc = _run(script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "explained.h5ad").exists() and not (tmp_path / "test.h5ad").exists()
    same = {"task": {"ext": {"args": "", "prefix": "toy"}, "cpus": 1}, "meta": {"id": "test"}, "h5ad": "toy.h5ad",
            "model": model}
    for block in ("script", "stub"):
        with pytest.raises(ModuleError, match=r"task\.ext\.prefix"):  # the output would be the input
            render_block(module.blocks[block], same)


def test_directives_inputs_and_outputs_follow_nf_core():
    for name, folder in MODULES.items():
        module = parse_module(folder / "main.nf")
        assert module.name == f"SCEXPLAIN_{name.upper()}"
        assert set(module.directives) == {"tag", "label", "conda", "container"}, name
        assert module.directives["conda"] == '"${moduleDir}/environment.yml"'
        assert module.inputs == ["tuple val(meta), path(h5ad)", "tuple val(meta2), path(model)"]
        assert any("emit: h5ad" in o for o in module.outputs)
        assert any("topic: versions" in o and "emit: versions_scexplain" in o for o in module.outputs)
        for block in ("script", "stub"):
            assert "task.ext.args" in module.blocks[block] and "task.ext.prefix" in module.blocks[block]
        assert "--threads ${task.cpus}" in module.blocks["script"]


@pytest.mark.parametrize("name", list(CASES))
def test_meta_yml_against_nf_core_schema(name):
    jsonschema = pytest.importorskip("jsonschema")
    meta = yaml.safe_load((MODULES[name] / "meta.yml").read_text())
    schema = json.loads((NEXTFLOW / "meta-schema.json").read_text())
    assert schema["required"] == META_REQUIRED  # the stored copy is the schema these fields come from
    assert [f for f in META_REQUIRED if f not in meta] == []
    jsonschema.Draft202012Validator(schema).validate(meta)
    assert meta["name"] == f"scexplain_{name}"
    inputs = [next(iter(element)) for channel in meta["input"] for element in channel]
    assert inputs == ["meta", "h5ad", "meta2", "model"]
    assert set(meta["output"]) == {"h5ad", "versions_scexplain"} and set(meta["topics"]) == {"versions"}
    h5ad = meta["input"][0][1]["h5ad"]
    assert {"edam": "http://edamontology.org/format_3590"} in h5ad["ontologies"]  # HDF5
    assert meta["topics"]["versions"] == meta["output"]["versions_scexplain"]


@pytest.mark.parametrize("name", list(CASES))
def test_environment_is_pinned(name):
    jsonschema = pytest.importorskip("jsonschema")
    env = yaml.safe_load((MODULES[name] / "environment.yml").read_text())
    jsonschema.Draft202012Validator(json.loads((NEXTFLOW / "environment-schema.json").read_text())).validate(env)
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == [f"scexplain=={sx.__version__}"]


def test_nf_tests_name_their_process_and_data():
    for name, folder in MODULES.items():
        text = (folder / "tests" / "main.nf.test").read_text()
        assert f'process "SCEXPLAIN_{name.upper()}"' in text and 'script "../main.nf"' in text
        assert 'options "-stub"' in text
        for data in re.findall(r'galaxy/test-data/([\w.]+)"', text):
            assert (TEST_DATA / data).is_file(), data
