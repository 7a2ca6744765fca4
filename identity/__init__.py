"""identity: links a shop's checkout contacts into customers."""

import os

from flask import Flask

DEFAULTS = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/identity",
    "DB_POOL_SIZE": 4,
    "DB_CONNECT_TIMEOUT": 3,
    "DB_STATEMENT_TIMEOUT_MS": 5000,
    "MAX_CONTENT_LENGTH": 64 * 1024,
}


def settings_from_environment():
    """Every setting from DEFAULTS, overridden by the environment variable of the same name."""
    settings = {}
    for name, default in DEFAULTS.items():
        value = os.environ.get(name)
        settings[name] = default if value in (None, "") else type(default)(value)
    return settings


def create_app(overrides=None):
    """Build the app from the environment, then from overrides (tests pass those)."""
    from identity import cli, db, errors, views

    app = Flask(__name__)
    app.config.update(settings_from_environment())
    app.config.update(overrides or {})
    errors.init_app(app)
    db.init_app(app)
    cli.init_app(app)
    app.register_blueprint(views.bp)
    return app
