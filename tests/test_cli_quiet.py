"""Quiet by default: no scvi-tools/lightning banners or third-party warnings unless --verbose; ours still show."""

import logging
import warnings

import pytest

from _cli_helpers import run_cli
from scexplain._quiet import quiet

BANNERS = ("GPU available", "TPU available", "LitLogger", "💡", "Training for", "HPU available")


def _train_tiny_scvi():
    scvi = pytest.importorskip("scvi")
    adata = scvi.data.synthetic_iid(batch_size=30, n_genes=20, n_batches=1, n_labels=2)
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata, n_latent=2, n_hidden=8)
    model.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False, logger=False)


def _shown(capfd, caplog) -> str:
    """What reached the terminal, or would have: the output, and the log records emitted (any handler)."""
    captured = capfd.readouterr()
    return captured.out + captured.err + caplog.text


def test_training_scvi_inside_quiet_prints_no_banner(capfd, caplog):
    with caplog.at_level(logging.INFO), quiet():
        _train_tiny_scvi()
        warnings.warn("a third-party deprecation", DeprecationWarning, stacklevel=1)
    text = _shown(capfd, caplog)
    assert not [b for b in BANNERS if b in text], text
    assert "third-party deprecation" not in text


def test_verbose_shows_the_banners(capfd, caplog):
    """The counter-check: the same training shows its banners when asked to."""
    with caplog.at_level(logging.INFO), quiet(verbose=True):
        _train_tiny_scvi()
    assert "GPU available" in _shown(capfd, caplog)


def test_our_warnings_still_show_on_one_line(capfd):
    from scexplain.engines.deeplift import DeepLiftWarning

    with quiet(prefix="scexplain test"):
        warnings.warn(DeepLiftWarning("no rule for `group_norm`;\n see the additivity error", "group_norm"),
                      stacklevel=1)
        logging.getLogger("lightning.pytorch").info("GPU available: False")
    err = capfd.readouterr().err
    assert err == "scexplain test: warning: no rule for `group_norm`; see the additivity error\n"
    assert logging.root.manager.disable == logging.NOTSET  # restored


@pytest.mark.slow
def test_the_demo_trains_scanvi_without_banners(tmp_path):
    pytest.importorskip("scvi")
    proc = run_cli("demo", "--epochs", "1", "--scanvi-epochs", "1", "--n-background", "20", "--figure", "",
                   "-o", tmp_path / "demo.h5ad", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "scANVI: trained 1 epochs" in proc.stdout  # scANVI did train
    text = proc.stdout + proc.stderr
    assert not [b for b in BANNERS if b in text], text
    assert "Warning" not in text, text
