"""`python -m consentry` runs the command line."""

from consentry.cli.main import run

run()
