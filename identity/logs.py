"""Log lines: every line of the process one JSON object on stderr, with the request id when there is one."""

import functools
import json
import logging
import os
import sys
import time

from flask import g, has_request_context

# Built once: json.dumps with default= would build an encoder for every line.
encode = json.JSONEncoder(default=str).encode


class JSONFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served."""

    def format(self, record):
        line = {
            "time": utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": os.getpid(),
        }
        if has_request_context():
            line["request_id"] = g.get("request_id")
        line.update(getattr(record, "fields", ()))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return encode(line)


def utc_timestamp(seconds):
    """seconds since the epoch in ISO 8601, UTC, to the millisecond (as datetime.isoformat gives it)."""
    whole = int(seconds)
    return f"{utc_second(whole)}.{int((seconds - whole) * 1000):03d}+00:00"


@functools.lru_cache(maxsize=4)
def utc_second(whole_seconds):
    """The date and time to the second, formatted once a second, not for every line (README, "Speed")."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole_seconds))


class StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each line, so a redirected stderr is followed."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass  # StreamHandler.__init__ assigns a stream; the property above stays in charge


def configure_logging(level):
    """Send every log line of the process to stderr as JSON, at level; a second call replaces the first."""
    # No line shows a thread or multiprocessing name, so logging need not look them up for every
    # record (the logging HOWTO's "Optimization"). Process ids stay: gunicorn's own lines show them.
    logging.logThreads = logging.logMultiprocessing = False
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(handler)
    handler = StderrHandler()
    handler.setFormatter(JSONFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())


def log_info(logger, message, fields):
    """Log message with fields at INFO, as logger.info would but for finding the caller's source line."""
    # logger.info searches the stack for the line that called it, for every record; no line shows it.
    if logger.isEnabledFor(logging.INFO):
        record = logger.makeRecord(
            logger.name, logging.INFO, "", 0, message, (), None, extra={"fields": fields}
        )
        logger.handle(record)
