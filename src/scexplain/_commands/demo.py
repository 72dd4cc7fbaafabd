"""CLI subcommands: demo (registered with scexplain.cli.register)."""
