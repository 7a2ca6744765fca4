"""The proxies we trust: the client's address and scheme come from TRUSTED_PROXY_HOPS of them."""

from werkzeug.middleware.proxy_fix import ProxyFix

from identity.settings import BadSetting


def init_app(app):
    """Believe X-Forwarded-For and -Proto as set by the last TRUSTED_PROXY_HOPS proxies; 0 believes none."""
    hops = app.config["TRUSTED_PROXY_HOPS"]
    if hops < 0:
        raise BadSetting(f"TRUSTED_PROXY_HOPS must be 0 (no proxy) or more, not {hops}")
    if hops > 0:
        # A client could otherwise pick its own address, and so its own rate limit.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
