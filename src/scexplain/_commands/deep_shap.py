"""CLI subcommands: deep_shap (registered with scexplain.cli.register)."""
