"""API keys: with IDENTITY_API_KEYS set, every route but health needs one of them (else 401).

Admin routes (/admin/..., and the views marked admin_only, such as erasure) need one of
IDENTITY_ADMIN_KEYS instead, always: with none set they are closed. The two lists are separate, so a
key handed to a checkout backend cannot change what the service blocks, nor erase anything.
"""

import hashlib
import hmac
import logging

from flask import current_app, g, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

from identity.apidoc import ErrorExample
from identity.settings import BadSetting

# Load balancers and orchestrators probe these without keys.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
ADMIN_PREFIX = "/admin/"
EXTENSION = "identity_api_keys"
ADMIN_EXTENSION = "identity_admin_keys"

log = logging.getLogger(__name__)


class MissingKey(Unauthorized):
    code_name = "unauthorized"
    description = "Send a valid API key as Authorization: Bearer <key>."


class MissingAdminKey(Unauthorized):
    code_name = "unauthorized"
    description = (
        "Send a valid admin key as Authorization: Bearer <key>; admin routes are closed while "
        "IDENTITY_ADMIN_KEYS is empty."
    )


MISSING_ADMIN_KEY = ErrorExample(
    401,
    "admin_unauthorized",
    "No valid admin key",
    MissingAdminKey.code_name,
    MissingAdminKey.description,
    headers=("WWW-Authenticate",),
)
MISSING_KEY = ErrorExample(
    401,
    "unauthorized",
    "Only while IDENTITY_API_KEYS is set: no valid key",
    MissingKey.code_name,
    MissingKey.description,
    headers=("WWW-Authenticate",),
)


def configured_keys(setting, name="IDENTITY_API_KEYS"):
    """[(key, its hash)] for each comma-separated key; the hash names the key in rate-limit counts.

    Only an empty setting means "no keys". One that is not empty but names an empty key ("," or " ",
    a stray comma) stops the start: read as no keys, it would open every route without a word.
    """
    if setting == "":
        return []
    keys = [key.strip().encode() for key in setting.split(",")]
    if not all(keys):
        raise BadSetting(
            f"{name} {setting!r} names an empty key: give comma-separated keys, or leave it empty for none"
        )
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


def key_hash():
    """The hash of the configured key the request presents, or None; keys are compared once per request."""
    keys = current_app.extensions[EXTENSION]
    if not keys:
        return None
    # The rate limit asks first (it counts by key), then demand_key: one comparison serves both.
    if "api_key_hash" not in g:
        g.api_key_hash = matching_key_hash(keys, presented_key())
    return g.api_key_hash


def admin_only(view):
    """Mark a view outside /admin/ that needs an admin key all the same (put it next to the route)."""
    view.needs_admin_key = True
    return view


def needs_admin_key(path, view):
    """Whether the route of path served by view is an admin route."""
    return path.startswith(ADMIN_PREFIX) or getattr(view, "needs_admin_key", False)


def demand_key():
    """Refuse a request without a valid key when keys are configured; health is open, admin needs its own."""
    # request.endpoint is None when no route matched: the 404 or 405 then answers as before.
    if needs_admin_key(request.path, current_app.view_functions.get(request.endpoint)):
        demand_admin_key()
    elif current_app.extensions[EXTENSION] and request.path not in OPEN_PATHS and key_hash() is None:
        raise MissingKey(www_authenticate=WWWAuthenticate("bearer"))


def demand_admin_key():
    """Refuse an admin request without a valid admin key; note which key it was, for the record."""
    g.admin_key_hash = matching_key_hash(current_app.extensions[ADMIN_EXTENSION], presented_key())
    if g.admin_key_hash is None:
        raise MissingAdminKey(www_authenticate=WWWAuthenticate("bearer"))


def admin_key_name():
    """How the records name the admin key of this request."""
    return f"admin key {g.admin_key_hash}"


def separate(api_keys, admin_keys):
    """Stop the start when one key is both an API key and an admin key."""
    if {key for key, _ in api_keys} & {key for key, _ in admin_keys}:
        raise BadSetting(
            "IDENTITY_ADMIN_KEYS repeats a key of IDENTITY_API_KEYS: give admins keys of their own"
        )


def init_app(app):
    """Check every request's key against IDENTITY_API_KEYS; none set, no key is needed (logged)."""
    keys = app.extensions[EXTENSION] = configured_keys(app.config["IDENTITY_API_KEYS"])
    admin_keys = configured_keys(app.config["IDENTITY_ADMIN_KEYS"], "IDENTITY_ADMIN_KEYS")
    separate(keys, admin_keys)
    app.extensions[ADMIN_EXTENSION] = admin_keys
    if not keys:
        log.info("API keys are off: IDENTITY_API_KEYS is empty, so every route answers without a key")
    app.before_request(demand_key)
