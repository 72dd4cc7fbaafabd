import subprocess
import sys

import pytest

import scexplain as sx
from scexplain._optional import import_optional


def test_import_is_lazy():
    """``import scexplain`` adds no heavy module to what anndata itself imports (anndata 0.12 imports numba)."""
    code = (
        "import sys, anndata; before = set(sys.modules); import scexplain; new = set(sys.modules) - before; "
        "heavy = [m for m in ('torch', 'scvi', 'cupy', 'xgboost', 'lightgbm', 'numba', 'matplotlib', 'seaborn', "
        "'shap', 'captum', 'sklearn', 'scanpy') if m in new]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


HEAVY = ("numpy", "anndata", "torch", "scipy", "pandas", "numba", "h5py", "zarr")


def test_import_scexplain_imports_nothing_heavy():
    """The subpackages load on first use (PEP 562): ``import scexplain`` needs neither numpy nor anndata."""
    code = (
        f"import sys; import scexplain; print(','.join(m for m in {HEAVY!r} if m in sys.modules)); "
        "print(sorted(set(dir(scexplain)) & {'tl', 'pl', 'get', 'datasets'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["", "['datasets', 'get', 'pl', 'tl']"]


def test_subpackages_load_on_first_use():
    code = ("import sys, scexplain as sx; assert 'scexplain.tl' not in sys.modules; sx.tl.deep_shap; "
            "from scexplain import pl; assert 'scexplain.tl' in sys.modules and pl.heatmap; "
            "import scexplain.get; print(sx.get is sys.modules['scexplain.get'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sx.nope  # noqa: B018


@pytest.mark.parametrize("entry", [["-m", "scexplain"], ["-m", "scexplain.cli"]])
def test_version_path_imports_nothing_heavy(entry):
    """What nf-core runs in every task: ``-X importtime`` lists every module the process imported."""
    out = subprocess.run([sys.executable, "-X", "importtime", *entry, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == sx.__version__
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert "scexplain" in imported
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_version_takes_under_a_second():
    import time

    times = []
    for _ in range(5):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "scexplain", "--version"], capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        assert out.returncode == 0
    assert sorted(times)[2] < 1.0, times  # the median; the target (0.3 s) is measured in docs/cli.md


def test_version_cli():
    out = subprocess.run([sys.executable, "-m", "scexplain.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.strip() == sx.__version__
    assert sx.__version__.count(".") >= 2


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "scexplain", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "info" in out.stdout


def test_no_command_is_usage_error():
    from scexplain.cli import main

    assert main([]) == 2


@pytest.mark.parametrize(("module", "extra"), [("cupy", "gpu"), ("xgboost", "trees"), ("scvi", "scvi")])
def test_optional_dependency_error_names_extra(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail as if not installed
    with pytest.raises(ImportError, match=rf"pip install 'scexplain\[{extra}\]'") as err:
        import_optional(module, purpose="a test")
    assert "for a test" in str(err.value)


def test_optional_dependency_unknown_module():
    with pytest.raises(ImportError, match="pip install not_a_real_module_xyz"):
        import_optional("not_a_real_module_xyz")
