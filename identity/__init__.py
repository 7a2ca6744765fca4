"""identity: links a shop's checkout contacts into customers."""

from flask import Flask

from identity import settings


def create_app(overrides=None):
    """Build the app from the environment, then from overrides (tests pass those)."""
    from identity import (
        admin,
        api_keys,
        blocking,
        cli,
        db,
        erasure,
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
    app.config.update(settings.from_environment())
    app.config.update(overrides or {})
    settings.check(app.config)
    # Every answer is the app's own: OPTIONS gets the JSON 405 with Allow, not an empty 200, and a
    # path with doubled slashes is a 404, not a redirect whose Location a client's Host header builds.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.url_map.merge_slashes = False
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
    blocking.init_app(app)
    cli.init_app(app)
    app.register_blueprint(views.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(erasure.bp)  # after views.bp, which adds the contact_id converter
    openapi.init_app(app)  # last: it documents every route registered before it
    return app
