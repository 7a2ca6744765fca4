"""A small lazy connection pool: a worker keeps its connections open between requests.

psycopg2's own pools either open every connection up front or close each one on return, and
neither notices a fork. This one opens on demand, reuses the most recent idle connection, and
forgets connections inherited from a parent process instead of sharing their sockets.
"""

import os
import queue
import threading

import psycopg2


class PoolExhausted(Exception):
    """Every connection stayed busy for as long as a request may wait."""


class ConnectionPool:
    """At most `size` connections to `dsn`, opened with `connect_kwargs` when first needed."""

    def __init__(self, dsn, size, wait_seconds=5.0, **connect_kwargs):
        self.dsn, self.size, self.wait_seconds = dsn, size, wait_seconds
        self.connect_kwargs = connect_kwargs
        self._lock = threading.Lock()
        self._reset()

    def _reset(self):
        self._pid = os.getpid()
        self._idle = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(self.size)

    def getconn(self):
        """An idle connection, or a new one while fewer than `size` are open."""
        with self._lock:
            if self._pid != os.getpid():
                self._reset()  # a forked child must not share its parent's sockets
        if not self._slots.acquire(timeout=self.wait_seconds):
            raise PoolExhausted(f"all {self.size} database connections are busy")
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        try:
            return psycopg2.connect(self.dsn, **self.connect_kwargs)
        except BaseException:
            self._slots.release()
            raise

    def putconn(self, conn, close=False):
        """Take a connection back; a closed or unwanted one is dropped."""
        if close or conn.closed:
            conn.close()
        else:
            self._idle.put(conn)
        self._slots.release()

    def closeall(self):
        """Close the idle connections (tests call this before dropping their database)."""
        while not self._idle.empty():
            self._idle.get_nowait().close()
