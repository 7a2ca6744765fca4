"""gunicorn's production settings; `make run` and `make bench` both start gunicorn with them."""

import os
import shutil
import tempfile

# Loopback, for nginx on this machine. An app host that nginx reaches over the network binds its own
# address instead (BIND=10.0.0.11:8000) and trusts that nginx's (FORWARDED_ALLOW_IPS, below).
bind = os.environ.get("BIND") or f"127.0.0.1:{os.environ.get('PORT', '8000')}"

# Sync workers, two per core. The database runs on the same cores, so a request is CPU-bound
# end to end; while one worker waits on PostgreSQL another runs Python. Sync workers take the
# next connection from one shared accept queue, which keeps the load even, where gthread pins each
# kept-alive connection to one worker and doubled p99; more workers gave no more throughput
# (README, "Speed", has the measurements).
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
# gunicorn's sync worker, answering the requests gunicorn refuses itself in the app's JSON error
# shape rather than with its HTML pages (identity/serving.py).
worker_class = "identity.serving.JSONErrorsWorker"

# gunicorn 27's control socket sits at one path per user, so a second server (tests, the bench)
# would take it over; nothing here uses it.
control_socket_disable = True

# In production nginx stands in front (deploy/nginx.conf) and these fit its settings.
# The app bounds a request itself (3 s to connect to PostgreSQL, 5 s per statement); nginx gives up
# after 20 s with a 504. A worker silent for 30 s is stuck beyond all of those: it is killed.
timeout = 30
# SIGTERM: the workers stop accepting, finish the request each is serving, and exit; one still busy
# after 20 s is killed. 20 s is nginx's proxy_read_timeout, so no request nginx still waits for is
# cut off, and it stays under the 30 s a supervisor commonly waits before it kills (Kubernetes).
graceful_timeout = 20
# No keepalive: the sync worker ignores it and closes each connection after its answer; clients keep
# theirs open to nginx. No max_requests: worker memory stays flat (`make bench-soak` watches it), and
# each restart would drop a worker's database connections.
# nginx refuses request lines and header lines over 4 KiB with a JSON error. These line limits are
# looser, so gunicorn never refuses a line nginx passed on. The number of header fields nginx does
# not bound: past 100, gunicorn answers 431, in the JSON shape like its other refusals.
limit_request_line = 8190
limit_request_field_size = 8190
limit_request_fields = 100
# gunicorn trusts X-Forwarded-Proto (for wsgi.url_scheme) only from nginx: on this machine unless
# FORWARDED_ALLOW_IPS names nginx's addresses. The
# client's address comes from X-Forwarded-For through werkzeug's ProxyFix in the app
# (TRUSTED_PROXY_HOPS), which gunicorn leaves alone.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS") or "127.0.0.1,::1"
# gunicorn's own lines (start, stop, worker deaths, refused requests) on stderr, for the supervisor
# to collect, as JSON objects like every line of the app (identity/logs.py), so one parser reads all.
errorlog = "-"
loglevel = "info"
logger_class = "identity.serving.JSONLogger"

# The app writes one JSON access line per request (identity/request_log.py); gunicorn's would repeat it.
accesslog = None

# Metrics: each worker's prometheus_client keeps its values in files in PROMETHEUS_MULTIPROC_DIR and
# /metrics sums them. prometheus_client reads the variable when first imported, which may come before
# any hook (preload_app), so the directory is made as this file is read: a fresh one per server, unless
# the operator names one, which must then start empty.
METRICS_DIR_MADE_HERE = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if METRICS_DIR_MADE_HERE:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="identity-metrics-")


def child_exit(server, worker):
    """Let prometheus_client drop what only a live worker reports; its counts stay in the totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics directory made above."""
    if METRICS_DIR_MADE_HERE:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
