"""CLI subcommands, one module per feature; importing a module registers its commands."""

from . import deep_shap, demo, gradients, info, trees  # noqa: F401
