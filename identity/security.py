"""Who may call: API keys, a rate limit per key or per client address, and the proxies we trust."""

import functools
import hashlib
import hmac
import time

from flask import g, request
from flask_limiter import Limiter
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized
from werkzeug.middleware.proxy_fix import ProxyFix


# Load balancers and orchestrators probe these without keys, and must never be refused for load.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# Scrapes must go on while clients are limited: that is when the numbers matter most.
UNLIMITED_PATHS = OPEN_PATHS | {"/metrics"}


class MissingKey(Unauthorized):
    code_name = "unauthorized"
    description = "Send a valid API key as Authorization: Bearer <key>."


# A Redis that stops answering must not hold requests for long.
REDIS_OPTIONS = {"socket_connect_timeout": 0.25, "socket_timeout": 0.25}


def configured_keys(setting):
    """[(key, its hash)] for each comma-separated key; the hash names the key in rate-limit counts."""
    keys = [key.strip().encode() for key in setting.split(",") if key.strip()]
    return [(key, hashlib.sha256(key).hexdigest()[:16]) for key in keys]


def presented_key():
    """The bearer token of the Authorization header, as bytes; empty without one."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    # WSGI hands header values over decoded as latin-1, so this always encodes.
    return token.strip().encode("latin-1") if scheme.lower() == "bearer" else b""


def matching_key_hash(keys, presented):
    """The hash of the configured key equal to presented, or None."""
    matched = None
    for key, key_hash in keys:
        # Every key is compared, in constant time and with no early exit, so how long this takes
        # tells nothing of which key matched, how much of one did, or how many keys there are.
        if hmac.compare_digest(key, presented):
            matched = key_hash
    return matched


def identify_caller(keys):
    """Note which configured API key, if any, the request presents; the rate limit counts by it."""
    g.api_key_hash = matching_key_hash(keys, presented_key()) if keys else None


def caller():
    """What a request is counted under: its valid API key, else its client address (after ProxyFix)."""
    key_hash = g.get("api_key_hash")
    return f"key:{key_hash}" if key_hash else f"address:{request.remote_addr}"


def note_retry_after(request_limit):
    """Keep the seconds until the breached window ends, for the 429's Retry-After."""
    # reset_at is already rounded up to the next whole second.
    g.retry_after = max(1, int(request_limit.reset_at - time.time()))


def demand_key(keys):
    """Refuse a request without a valid key when keys are configured; health is open."""
    if keys and not g.api_key_hash and request.path not in OPEN_PATHS:
        raise MissingKey(www_authenticate=WWWAuthenticate("bearer"))


def make_limiter(app):
    """Flask-Limiter: one RATE_LIMIT per caller across all routes but health and metrics."""
    url = app.config["RATELIMIT_STORAGE_URL"]
    return Limiter(
        caller,
        app=app,
        application_limits=[app.config["RATE_LIMIT"]],
        application_limits_exempt_when=lambda: request.path in UNLIMITED_PATHS,
        storage_uri=url,
        storage_options=REDIS_OPTIONS if url.startswith("redis") else {},
        key_prefix=app.config["RATELIMIT_KEY_PREFIX"],
        strategy="fixed-window",
        on_breach=note_retry_after,
        # Fail open: with Redis down, count per worker instead of refusing everyone.
        in_memory_fallback_enabled=True,
        swallow_errors=True,
    )


def init_app(app):
    """Trust TRUSTED_PROXY_HOPS proxies for the client address, then check every caller."""
    hops = app.config["TRUSTED_PROXY_HOPS"]
    if hops > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
    keys = configured_keys(app.config["IDENTITY_API_KEYS"])
    # Order matters: know the key, then rate-limit (so key guessing is limited too), then demand it.
    app.before_request(functools.partial(identify_caller, keys))
    make_limiter(app)
    app.before_request(functools.partial(demand_key, keys))
