"""Retry a whole transaction when PostgreSQL says a concurrent one got in the way."""

import random
import time

from psycopg2 import errors

from identity.metrics import TRANSACTION_RETRIES

RETRYABLE = (errors.SerializationFailure, errors.DeadlockDetected)
MAX_ATTEMPTS = 8
BASE_DELAY = 0.002


class TooMuchContention(Exception):
    """Every attempt of a transaction met a conflicting one."""


def retrying(conn, work, *args):
    """Run work(conn, *args) and commit; on a retryable conflict roll back and run it again."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            result = work(conn, *args)
            conn.commit()
            return result
        except RETRYABLE:
            conn.rollback()
            if attempt == MAX_ATTEMPTS:
                break
            TRANSACTION_RETRIES.inc()
            # Random and growing, so the transactions that collided do not collide again.
            time.sleep(random.uniform(0, BASE_DELAY * 2**attempt))
    raise TooMuchContention(f"gave up after {MAX_ATTEMPTS} conflicting attempts")
