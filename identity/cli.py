"""Operator commands: `flask --app wsgi migrate`."""

import click
from flask import current_app
from flask.cli import with_appcontext

from identity.migrations import setup_database


@click.command("migrate")
@with_appcontext
def migrate_command():
    """Create the database if it is missing and apply pending migrations."""
    applied = setup_database(current_app.config["DATABASE_URL"])
    click.echo(f"applied: {', '.join(applied)}" if applied else "database is up to date")


def init_app(app):
    """Register the commands on the app's CLI."""
    app.cli.add_command(migrate_command)
