"""The rate limit: RATE_LIMIT per caller (its API key, else its client address) across all routes.

Built on the `limits` library's public API: its parser, its fixed-window strategy and its storage
interface. Counts live in Redis (shared by every worker and machine) or in each worker's memory.
"""

import logging
import math
import threading
import time

from flask import current_app, request
from limits import parse_many
from limits.errors import ConfigurationError, StorageError
from limits.storage import Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter
from werkzeug.exceptions import TooManyRequests

from identity import api_keys
from identity.settings import DEFAULTS, BadSetting
from identity.apidoc import ErrorExample

# Scrapes must go on while clients are limited: that is when the numbers matter most.
UNLIMITED_PATHS = api_keys.OPEN_PATHS | {"/metrics"}
# limits' RedisStorage: TCP, TLS, or a Unix socket.
SHARED_SCHEMES = ("redis", "rediss", "redis+unix")
# A Redis that stops answering must not hold requests for long.
REDIS_OPTIONS = {"socket_connect_timeout": 0.25, "socket_timeout": 0.25}
EXTENSION = "identity_rate_limit"

log = logging.getLogger(__name__)


class RateLimited(TooManyRequests):
    code_name = "rate_limited"


def rate_limit_message(limit):
    """What a 429 says for a limit as the limits library writes it ("5000 per 1 second")."""
    return f"Too many requests: the limit is {limit}."


RATE_LIMITED = ErrorExample(
    429,
    "rate_limited",
    "Over RATE_LIMIT for this key, or this client address without one",
    RateLimited.code_name,
    rate_limit_message(parse_many(DEFAULTS["RATE_LIMIT"])[0]),
    headers=("Retry-After",),
)


class MemoryCounts(Storage):
    """Fixed-window counts in this process; expired ones are swept during a count, never by a thread.

    limits' MemoryStorage starts a timer thread whenever none is pending, 10 ms ahead, to expire
    counts: under load, a hundred threads a second per worker. A count past its window is ignored
    when read, so the sweep only frees memory, and once a second is plenty.
    """

    STORAGE_SCHEME = None  # made by this module only, never from a URL
    SWEEP_SECONDS = 1.0

    def __init__(self):
        super().__init__()
        self.counts = {}  # key -> [count, end of its window in seconds since the epoch]
        self.next_sweep = 0.0
        # The debug server answers on threads: counting is a read and a write, done under the lock.
        self.lock = threading.Lock()

    @property
    def base_exceptions(self):
        return ()  # nothing here fails for want of a server

    def incr(self, key, expiry, amount=1):
        """Add amount to key's count, starting a window of expiry seconds if none is running."""
        now = time.time()
        with self.lock:
            self.sweep(now)
            count = self.counts.get(key)
            if count is None or count[1] <= now:
                count = self.counts[key] = [0, now + expiry]
            count[0] += amount
            return count[0]

    def sweep(self, now):
        """Drop the counts whose window has ended, at most once per SWEEP_SECONDS."""
        if now >= self.next_sweep:
            self.next_sweep = now + self.SWEEP_SECONDS
            self.counts = {key: count for key, count in self.counts.items() if count[1] > now}

    def running(self, key):
        """key's [count, window end] while its window runs, else None."""
        count = self.counts.get(key)
        return count if count is not None and count[1] > time.time() else None

    def get(self, key):
        count = self.running(key)
        return count[0] if count else 0

    def get_expiry(self, key):
        count = self.running(key)
        return count[1] if count else time.time()

    def check(self):
        return True

    def reset(self):
        with self.lock:
            dropped, self.counts = len(self.counts), {}
        return dropped

    def clear(self, key):
        with self.lock:
            self.counts.pop(key, None)


class FailOpen(Storage):
    """A shared storage, and this process's own counts while it does not answer.

    A limiter outage must not become a service outage, so while Redis is unreachable each worker
    counts alone. It says so once, tries Redis again after a pause that doubles after each failed
    try (so a dead Redis does not cost every request a timeout), and goes back once it answers.
    """

    STORAGE_SCHEME = None
    FIRST_PAUSE_SECONDS = 0.5
    LONGEST_PAUSE_SECONDS = 16.0

    def __init__(self, shared):
        super().__init__()
        self.shared = shared  # made with wrap_exceptions: every failure of it is a StorageError
        self.local = MemoryCounts()
        self.pause = 0.0  # 0 while the shared storage answers
        self.retry_at = 0.0  # time.monotonic() from which the shared storage is tried again

    @property
    def base_exceptions(self):
        return ()  # the shared storage's errors are handled here, never raised

    def either(self, shared_method, local_method, *args):
        """shared_method(*args) while the shared storage answers, else local_method(*args)."""
        if self.pause == 0.0 or time.monotonic() >= self.retry_at:
            try:
                answer = shared_method(*args)
            except StorageError as error:
                self.failed(error)
            else:
                self.answered()
                return answer
        return local_method(*args)

    def failed(self, error):
        """Count locally until the pause ends; the first failure of an outage is logged."""
        if self.pause == 0.0:
            log.warning("rate-limit storage unreachable (%s): counting in this worker", error.storage_error)
        self.pause = min(self.pause * 2, self.LONGEST_PAUSE_SECONDS) or self.FIRST_PAUSE_SECONDS
        self.retry_at = time.monotonic() + self.pause

    def answered(self):
        """After an outage: say so once, and drop the local counts (the shared ones count again)."""
        if self.pause:
            self.pause = 0.0
            self.local.reset()
            log.info("rate-limit storage answers again: counting there")

    def incr(self, key, expiry, amount=1):
        return self.either(self.shared.incr, self.local.incr, key, expiry, amount)

    def get(self, key):
        return self.either(self.shared.get, self.local.get, key)

    def get_expiry(self, key):
        return self.either(self.shared.get_expiry, self.local.get_expiry, key)

    def check(self):
        return self.shared.check()

    def reset(self):
        return self.either(self.shared.reset, self.local.reset)

    def clear(self, key):
        return self.either(self.shared.clear, self.local.clear, key)


def parsed_limits(setting):
    """RATE_LIMIT's limits ("5000 per second", "10/second;1000/hour"); a setting that is none stops here."""
    try:
        limits = parse_many(setting)
    except ValueError:
        example = "'5000 per second' or '10/second;1000/hour'"
        raise BadSetting(f"RATE_LIMIT {setting!r} is not a rate limit: write e.g. {example}") from None
    if any(limit.amount < 1 for limit in limits):
        raise BadSetting(f"RATE_LIMIT {setting!r} would refuse every request: each amount must be 1 or more")
    return limits


def storage_for(url):
    """The storage RATELIMIT_STORAGE_URL names: memory:// in this worker, redis:// shared and failing open."""
    scheme = url.partition("://")[0]
    if scheme == "memory":
        return MemoryCounts()
    if scheme not in SHARED_SCHEMES:
        raise BadSetting(
            f"RATELIMIT_STORAGE_URL {url!r}: use memory:// or redis://host:port/db (or rediss://)"
        )
    try:
        return FailOpen(storage_from_string(url, wrap_exceptions=True, **REDIS_OPTIONS))
    except (ConfigurationError, ValueError) as error:
        raise BadSetting(f"RATELIMIT_STORAGE_URL {url!r} is not usable: {error}") from None


class RateLimit:
    """Counts each request against every limit; any breached one refuses it."""

    def __init__(self, limits, storage, key_prefix):
        self.limits = limits
        self.limiter = FixedWindowRateLimiter(storage)
        self.key_prefix = key_prefix

    def check(self):
        """The before_request hook: count the request, or refuse it with a 429 when over a limit."""
        if request.path not in UNLIMITED_PATHS:
            self.charge(1)

    def charge(self, cost):
        """Count cost requests for this caller (a batch counts its items); 429 when over a limit."""
        identifiers = (self.key_prefix, caller())
        for limit in self.limits:
            # The first breached limit refuses the request; the limits after it do not count it.
            if not self.limiter.hit(limit, *identifiers, cost=cost):
                raise RateLimited(
                    rate_limit_message(limit), retry_after=self.seconds_left(limit, identifiers)
                )

    def seconds_left(self, limit, identifiers):
        """Whole seconds until the caller's window of limit ends; at least 1."""
        window = self.limiter.get_window_stats(limit, *identifiers)
        return max(1, math.ceil(window.reset_time - time.time()))


def caller():
    """What a request is counted under: its valid API key, else its client address (after ProxyFix)."""
    key_hash = api_keys.key_hash()
    return f"key:{key_hash}" if key_hash else f"address:{request.remote_addr}"


def charge(cost):
    """Count cost more requests for the current caller (the request itself was counted already)."""
    if cost > 0:
        current_app.extensions[EXTENSION].charge(cost)


def init_app(app):
    """Check every request against RATE_LIMIT; a setting that makes no sense stops the app here."""
    config = app.config
    rate_limit = RateLimit(
        parsed_limits(config["RATE_LIMIT"]),
        storage_for(config["RATELIMIT_STORAGE_URL"]),
        config["RATELIMIT_KEY_PREFIX"],
    )
    app.extensions[EXTENSION] = rate_limit
    app.before_request(rate_limit.check)
