"""Helpers of the command-line tests: run ``scexplain`` in a subprocess, export small models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch


def run_cli(*args, env: dict | None = None, timeout: int = 600, cwd=None) -> subprocess.CompletedProcess:
    """``python -m scexplain ARGS`` in a fresh process (same interpreter and PYTHONPATH), output captured."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "scexplain", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The non-empty lines of a run's stderr."""
    return [line for line in proc.stderr.splitlines() if line.strip()]


def export(model: torch.nn.Module, n_genes: int, path: str | Path | None = None, dtype=torch.float32):
    """``torch.export`` program of ``model`` (eval mode, dynamic number of cells); saved to ``path`` if given."""
    model.eval()
    example = torch.rand(4, n_genes, dtype=dtype)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("cells")},))
    if path is not None:
        torch.export.save(program, path)
    return program


def mlp(n_genes: int, n_out: int = 4, seed: int = 0, act=torch.nn.ReLU) -> torch.nn.Module:
    """A small classifier over genes: Linear, BatchNorm (running statistics set), activation, Dropout, Linear."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(n_genes, 8), torch.nn.BatchNorm1d(8), act(), torch.nn.Dropout(0.2),
                              torch.nn.Linear(8, n_out))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()
