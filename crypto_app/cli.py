"""`flask etl ...` commands."""
import click
from flask.cli import AppGroup

etl = AppGroup("etl", help="Run and inspect ingestion.")


def register_cli(app) -> None:
    app.cli.add_command(etl)
