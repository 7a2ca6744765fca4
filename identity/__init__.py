"""identity: links a shop's checkout contacts into customers."""

import os

from flask import Flask

DEFAULTS = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/identity",
    "DB_POOL_SIZE": 4,
    "DB_CONNECT_TIMEOUT": 3,
    "DB_STATEMENT_TIMEOUT_MS": 5000,
    "MAX_CONTENT_LENGTH": 64 * 1024,
    # Comma-separated bearer keys; empty means no key is needed.
    "IDENTITY_API_KEYS": "",
    # Requests allowed per API key (or per client address without one), across all routes.
    "RATE_LIMIT": "5000 per second",
    # redis://host:port/db to share counts across workers and machines; memory:// keeps them per worker.
    "RATELIMIT_STORAGE_URL": "memory://",
    # Names this service's counts in a store that other services (or test runs) share.
    "RATELIMIT_KEY_PREFIX": "identity",
    # How many proxies in front of us may set X-Forwarded-For (nginx in deploy/: 1); 0 trusts none.
    "TRUSTED_PROXY_HOPS": 0,
    "LOG_LEVEL": "INFO",
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
    from identity import (
        api_keys,
        cli,
        db,
        errors,
        json_body,
        logs,
        metrics,
        openapi,
        proxies,
        rate_limit,
        request_log,
        views,
    )

    app = Flask(__name__, static_folder=None)  # no /static route: nothing is served from there
    app.config.update(settings_from_environment())
    app.config.update(overrides or {})
    logs.configure_logging(app.config["LOG_LEVEL"])
    request_log.init_app(app)
    metrics.init_app(app)
    proxies.init_app(app)
    # The limit counts a request before its key is checked, so guessing keys is limited too.
    rate_limit.init_app(app)
    api_keys.init_app(app)
    json_body.init_app(app)
    errors.init_app(app)
    db.init_app(app)
    cli.init_app(app)
    app.register_blueprint(views.bp)
    openapi.init_app(app)  # last: it documents every route registered before it
    return app
