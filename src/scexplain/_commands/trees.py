"""CLI subcommands: trees (registered with scexplain.cli.register)."""
