"""The service's settings: each from the environment variable of its name, else its default, checked at start.

A setting that makes no sense stops the app with a message naming it, before it serves a request.
The settings of one part (RATE_LIMIT, IDENTITY_API_KEYS, TRUSTED_PROXY_HOPS) are checked where that
part reads them; these are the rest.
"""

import os

from psycopg2 import ProgrammingError
from psycopg2.extensions import parse_dsn

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
# The least a whole-number setting may be: none of these works at 0.
SMALLEST = {"DB_POOL_SIZE": 1, "DB_CONNECT_TIMEOUT": 1, "DB_STATEMENT_TIMEOUT_MS": 1, "MAX_CONTENT_LENGTH": 1}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# libpq's values of target_session_attrs, and those that find the primary among several hosts.
SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
WRITABLE_SESSION_ATTRS = ("read-write", "primary")


class BadSetting(ValueError):
    """A setting that makes no sense: the app does not start."""


def from_environment(environ=os.environ):
    """Every setting of DEFAULTS, from the environment where it is set and not empty."""
    settings = {}
    for name, default in DEFAULTS.items():
        value = environ.get(name)
        settings[name] = default if value in (None, "") else converted(name, value, type(default))
    return settings


def converted(name, value, kind):
    """value as kind (int or str); a number that is none stops the start."""
    try:
        return kind(value)
    except ValueError:
        raise BadSetting(f"{name}={value!r} is not a whole number") from None


def check(config):
    """Stop the start on a setting of DEFAULTS that makes no sense; config is the app's, overrides applied."""
    for name, smallest in SMALLEST.items():
        if not isinstance(config[name], int) or config[name] < smallest:
            raise BadSetting(f"{name}={config[name]!r}: it must be a whole number, {smallest} or more")
    if config["LOG_LEVEL"].upper() not in LOG_LEVELS:
        raise BadSetting(f"LOG_LEVEL={config['LOG_LEVEL']!r}: use one of {', '.join(LOG_LEVELS)}")
    check_database_url(config["DATABASE_URL"])


def check_database_url(url):
    """Stop the start on a DATABASE_URL libpq cannot read, or whose hosts might not lead to the primary."""
    try:
        dsn = parse_dsn(url)
    except ProgrammingError:
        # libpq's reason would quote the setting, password and all: the log must not carry it.
        raise BadSetting("DATABASE_URL is not a PostgreSQL URL or connection string libpq can read") from None
    attrs = dsn.get("target_session_attrs", "any")
    if attrs not in SESSION_ATTRS:
        choices = ", ".join(SESSION_ATTRS)
        raise BadSetting(f"DATABASE_URL: target_session_attrs={attrs!r}: use one of {choices}")
    hosts, ports = dsn.get("host", "").split(","), dsn.get("port", "").split(",")
    if len(ports) not in (1, len(hosts)):
        raise BadSetting(f"DATABASE_URL names {len(hosts)} hosts but {len(ports)} ports: one, or one each")
    if len(hosts) > 1 and attrs not in WRITABLE_SESSION_ATTRS:
        # libpq takes the first host that answers, a standby as readily as the primary.
        raise BadSetting("DATABASE_URL names several hosts: add target_session_attrs=read-write")
