"""`python -m kollm` runs the CLI."""

from kollm.cli import app

app()
