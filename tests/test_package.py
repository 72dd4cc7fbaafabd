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
