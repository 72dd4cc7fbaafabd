"""Device and dtype resolution for the torch engines."""

from __future__ import annotations

__all__ = ["resolve_device", "resolve_dtype"]


def resolve_device(device: str = "auto"):
    """``"auto"`` → CUDA when torch sees a GPU, else CPU; ``"cuda"`` without a GPU is a clear error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str | torch.device):
        raise TypeError(f"`device` must be 'auto', 'cpu', 'cuda' or a torch.device, got {device!r}.")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("`device='cuda'` but torch sees no CUDA GPU; use device='cpu' or device='auto'.")
    return dev


def resolve_dtype(dtype):
    """``"float32"``/``"float64"`` (or the torch dtypes) → torch dtype."""
    import torch

    table = {"float32": torch.float32, "float64": torch.float64, torch.float32: torch.float32,
             torch.float64: torch.float64}
    if dtype not in table:
        raise ValueError(f"`dtype` must be 'float32' or 'float64', got {dtype!r}.")
    return table[dtype]
