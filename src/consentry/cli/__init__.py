"""The `consentry` command line (Typer + Rich)."""
