"""Device and dtype resolution: validated up front, with messages naming what is accepted and what is visible."""

from __future__ import annotations

import re

__all__ = ["check_device", "cuda_visibility", "resolve_device", "resolve_dtype"]

_ACCEPTED = "'auto', 'cpu', 'cuda' or 'cuda:N' (N the GPU's index)"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def cuda_visibility() -> str:
    """Which CUDA devices torch sees, in words (for error messages)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return "torch is not installed"
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"torch sees {n} CUDA device{'s' if n != 1 else ''}" if n else "torch sees no CUDA device"


def check_device(device) -> None:
    """Raise unless ``device`` is ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device`` of those kinds.

    A CUDA device that is not visible is an error too; the message says what torch sees.
    """
    name = None
    if isinstance(device, str):
        name = device.strip().lower()
    else:
        try:
            import torch

            if isinstance(device, torch.device):
                name = str(device)
        except ImportError:  # pragma: no cover - torch is a core dependency
            pass
    if name is None:
        raise TypeError(f"`device` must be {_ACCEPTED} or a torch.device, got {type(device).__name__} {device!r}.")
    if not _DEVICE.match(name):
        raise ValueError(f"`device={device!r}` is not supported; use {_ACCEPTED} ({cuda_visibility()}).")
    if name.startswith("cuda"):
        import torch

        index = int(name.split(":")[1]) if ":" in name else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ValueError(
                f"`device={device!r}` but {cuda_visibility()}; use device='cpu' or device='auto' (the GPU when "
                "one is visible, else the CPU)."
            )


def resolve_device(device="auto"):
    """The ``torch.device`` to run on: ``"auto"`` → CUDA when torch sees a GPU, else CPU (checked first)."""
    import torch

    check_device(device)
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device.strip().lower() if isinstance(device, str) else device)


def resolve_dtype(dtype):
    """``"float32"``/``"float64"`` (or the torch dtypes) → torch dtype."""
    import torch

    table = {"float32": torch.float32, "float64": torch.float64, torch.float32: torch.float32,
             torch.float64: torch.float64}
    if dtype not in table:
        raise ValueError(f"`dtype` must be 'float32' or 'float64', got {dtype!r}.")
    return table[dtype]
