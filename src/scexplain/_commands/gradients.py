"""CLI subcommands: gradients (registered with scexplain.cli.register)."""
