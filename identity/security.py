"""Who may call: API keys, a rate limit per key or per client address, and the proxies we trust."""

import contextlib
import functools
import hashlib
import hmac
import time

from flask import g, request
from flask_limiter import Limiter
from limits.storage import MemoryStorage
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized
from werkzeug.middleware.proxy_fix import ProxyFix

from identity.apidoc import ErrorExample
from identity.errors import rate_limit_message


# Load balancers and orchestrators probe these without keys, and must never be refused for load.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# Scrapes must go on while clients are limited: that is when the numbers matter most.
UNLIMITED_PATHS = OPEN_PATHS | {"/metrics"}


class MissingKey(Unauthorized):
    code_name = "unauthorized"
    description = "Send a valid API key as Authorization: Bearer <key>."


MISSING_KEY = ErrorExample(
    401,
    "unauthorized",
    "Only while IDENTITY_API_KEYS is set: no valid key",
    "unauthorized",
    MissingKey.description,
    headers=("WWW-Authenticate",),
)
RATE_LIMITED = ErrorExample(
    429,
    "rate_limited",
    "Over RATE_LIMIT for this key, or this client address without one",
    "rate_limited",
    rate_limit_message("5000 per 1 second"),
    headers=("Retry-After",),
)

# A Redis that stops answering must not hold requests for long.
REDIS_OPTIONS = {"socket_connect_timeout": 0.25, "socket_timeout": 0.25}


class SweptMemoryStorage(MemoryStorage):
    """limits' in-worker counts, with expired ones swept during a count rather than by a timer thread.

    limits' MemoryStorage starts a threading.Timer 10 ms ahead whenever none is pending, so a busy
    worker started about a hundred threads a second: profiled, 10% of a worker's time under the
    checkout benchmark. A count past its window is already ignored when read (MemoryStorage.get), so
    the sweep only frees memory: once a second is plenty.
    """

    STORAGE_SCHEME = ["identity-memory"]
    SWEEP_SECONDS = 1.0

    def __init__(self, uri=None, **options):
        super().__init__(uri, **options)
        self.next_sweep = time.monotonic() + self.SWEEP_SECONDS

    def _MemoryStorage__schedule_expiry(self):
        """Replaces the parent's private scheduler (called on every count): sweep inline when due."""
        now = time.monotonic()
        if now >= self.next_sweep:
            self.next_sweep = now + self.SWEEP_SECONDS
            self._MemoryStorage__expire_events()


def storage_uri(url):
    """The limits storage for RATELIMIT_STORAGE_URL: memory:// counts in SweptMemoryStorage."""
    return url.replace("memory://", "identity-memory://", 1) if url.startswith("memory://") else url


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


class OneLimitLimiter(Limiter):
    """Flask-Limiter, with a short way through its request check for the one limit this service sets.

    Flask-Limiter's check resolves application, default, blueprint, route and meta limits and their
    exemptions anew for every request: measured with callgrind, about 610,000 instructions per
    /identify, three quarters of what the whole app did per request before limits were added. This
    service sets one application limit, so a request first counts against it directly: the same
    strategy, storage, key and scope Flask-Limiter itself uses. Whatever is not a plain pass takes
    Flask-Limiter's own full check: a breach (counting once more changes nothing past the limit),
    an error of the storage (Flask-Limiter fails over to memory and says so), and every request while
    it counts in memory (it alone knows when the storage is back).
    Flask-Limiter's other two hooks are not installed: after each request it adds X-RateLimit
    headers (off here) and settles deductions made conditional on the answer (none here), and at
    teardown it clears state that dies with the request anyway; together 90,000 instructions.
    This relies on Flask-Limiter's internals, so setup.cfg pins its minor version;
    test_security.py covers each of those ways.
    """

    def init_app(self, app):
        """Flask-Limiter's set-up, keeping only its before_request hook (the check), counting in memory
        without timer threads."""
        super().init_app(app)
        for hooks in (app.after_request_funcs[None], app.teardown_request_funcs[None]):
            hooks[:] = [hook for hook in hooks if not self.owns(hook)]
        if self._in_memory_fallback_enabled:
            # Flask-Limiter builds its fail-over counts on limits' MemoryStorage itself, not from a
            # URI: they get the thread-free storage that memory:// gets.
            self._fallback_storage = SweptMemoryStorage()
            self._fallback_limiter = type(self._fallback_limiter)(self._fallback_storage)

    def owns(self, hook):
        """Whether hook is one Flask-Limiter registered for this instance (a bound method or partial)."""
        return getattr(hook, "__self__", None) is self or self in getattr(hook, "args", ())

    def _check_request_limit(self, callable_name=None, in_middleware=True):
        """The before_request hook Flask-Limiter registers: pass within the limit, else the full check."""
        passed = False
        if in_middleware and not callable_name and not self._storage_dead:
            # Any storage error here is left to the full check, which handles and reports it.
            with contextlib.suppress(Exception):
                passed = self.within_application_limit()
        if not passed:
            super()._check_request_limit(callable_name, in_middleware)

    resolved_limits = None

    def within_application_limit(self):
        """Count the request against the one application limit, as Flask-Limiter would; True within it."""
        if self.resolved_limits is None:
            # Resolved once: Flask-Limiter parses the limit string again for every request.
            self.resolved_limits = self.limit_manager.application_limits
        if len(self.resolved_limits) != 1:
            return False  # RATE_LIMIT names several ("10/second;1000/hour"): the full check counts them
        (limit,) = self.resolved_limits
        if limit.is_exempt:
            return True
        key = [limit.key_func(), limit.scope_for(request.endpoint, request.method)]
        if self._key_prefix:
            key.insert(0, self._key_prefix)
        return self._limiter.hit(limit.limit, *key)


def make_limiter(app):
    """Flask-Limiter: one RATE_LIMIT per caller across all routes but health and metrics."""
    url = app.config["RATELIMIT_STORAGE_URL"]
    return OneLimitLimiter(
        caller,
        app=app,
        application_limits=[app.config["RATE_LIMIT"]],
        application_limits_exempt_when=lambda: request.path in UNLIMITED_PATHS,
        storage_uri=storage_uri(url),
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
