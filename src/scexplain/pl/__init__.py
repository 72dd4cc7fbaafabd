"""Plots of stored attributions."""

__all__: list[str] = []
