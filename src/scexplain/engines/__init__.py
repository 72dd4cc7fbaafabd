"""Pure numerics: no AnnData inside."""
