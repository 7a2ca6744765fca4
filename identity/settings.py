"""The service's settings: each from the environment variable of its name, else its default, checked at start.

A setting that makes no sense stops the app with a message naming it, before it serves a request.
The settings of one part (RATE_LIMIT, IDENTITY_API_KEYS, IDENTITY_ADMIN_KEYS, TRUSTED_PROXY_HOPS) are
checked where that part reads them; these are the rest.
"""

import os

import phonenumbers
from psycopg2 import ProgrammingError
from psycopg2.extensions import parse_dsn

DEFAULTS = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/identity",
    # A replica for the GET /contacts... lookups, which then lag the writes; empty: DATABASE_URL.
    "DATABASE_READ_URL": "",
    "DB_POOL_SIZE": 4,
    "DB_CONNECT_TIMEOUT": 3,
    "DB_STATEMENT_TIMEOUT_MS": 5000,
    "MAX_CONTENT_LENGTH": 64 * 1024,
    # The body limit of POST /identify/batch alone: room for 1000 items of the longest values.
    "MAX_BATCH_CONTENT_LENGTH": 512 * 1024,
    # Comma-separated bearer keys; empty means no key is needed.
    "IDENTITY_API_KEYS": "",
    # Comma-separated bearer keys for /admin routes; empty closes them.
    "IDENTITY_ADMIN_KEYS": "",
    # Requests allowed per API key (or per client address without one), across all routes.
    "RATE_LIMIT": "5000 per second",
    # redis://host:port/db to share counts across workers and machines; memory:// keeps them per worker.
    "RATELIMIT_STORAGE_URL": "memory://",
    # Names this service's counts in a store that other services (or test runs) share.
    "RATELIMIT_KEY_PREFIX": "identity",
    # How many proxies in front of us may set X-Forwarded-For (nginx in deploy/: 1); 0 trusts none.
    "TRUSTED_PROXY_HOPS": 0,
    "LOG_LEVEL": "INFO",
    # The most a customer may hold (README, "Limits per customer"); 0 is no limit.
    "MAX_EMAILS_PER_CUSTOMER": 0,
    "MAX_PHONE_NUMBERS_PER_CUSTOMER": 0,
    "MAX_CONTACTS_PER_CUSTOMER": 0,
    # An ISO 3166 country code: phone numbers are then read as that country's and kept in E.164.
    "PHONE_REGION": "",
}
# The least a whole-number setting may be.
SMALLEST = {
    "DB_POOL_SIZE": 1,
    "DB_CONNECT_TIMEOUT": 1,
    "DB_STATEMENT_TIMEOUT_MS": 1,
    "MAX_CONTENT_LENGTH": 1,
    "MAX_BATCH_CONTENT_LENGTH": 1,
    "MAX_EMAILS_PER_CUSTOMER": 0,
    "MAX_PHONE_NUMBERS_PER_CUSTOMER": 0,
    "MAX_CONTACTS_PER_CUSTOMER": 0,
}
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
    config["PHONE_REGION"] = config["PHONE_REGION"].upper()
    if config["PHONE_REGION"] and config["PHONE_REGION"] not in phonenumbers.SUPPORTED_REGIONS:
        raise BadSetting(f"PHONE_REGION={config['PHONE_REGION']!r}: give an ISO 3166 country code such as IN")
    for name in ("DATABASE_URL", "DATABASE_READ_URL"):
        if name == "DATABASE_URL" or config[name]:
            check_database_url(name, config[name])


def check_database_url(name, url):
    """Stop the start on a URL libpq cannot read, or whose hosts might not lead to the primary."""
    try:
        dsn = parse_dsn(url)
    except ProgrammingError:
        # libpq's reason would quote the setting, password and all: the log must not carry it.
        raise BadSetting(f"{name} is not a PostgreSQL URL or connection string libpq can read") from None
    attrs = dsn.get("target_session_attrs", "any")
    if attrs not in SESSION_ATTRS:
        choices = ", ".join(SESSION_ATTRS)
        raise BadSetting(f"{name}: target_session_attrs={attrs!r}: use one of {choices}")
    hosts, ports = dsn.get("host", "").split(","), dsn.get("port", "").split(",")
    if len(ports) not in (1, len(hosts)):
        raise BadSetting(f"{name} names {len(hosts)} hosts but {len(ports)} ports: one, or one each")
    if name == "DATABASE_URL" and len(hosts) > 1 and attrs not in WRITABLE_SESSION_ATTRS:
        # libpq takes the first host that answers, a standby as readily as the primary.
        raise BadSetting("DATABASE_URL names several hosts: add target_session_attrs=read-write")
