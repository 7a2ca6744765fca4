"""gunicorn's production settings; `make run` and `make bench` both start gunicorn with them."""

import os

bind = f"127.0.0.1:{os.environ.get('PORT', '8000')}"

# Sync workers, two per core. The database runs on the same cores, so a request is CPU-bound
# end to end; while one worker waits on PostgreSQL another runs Python. Sync workers take the
# next connection from one shared accept queue, which keeps the load even: measured on this
# 2-core machine (checkout mix, 1M customers, wrk -c32), 4 sync workers gave about 2,500 req/s
# with p99 18 ms; gthread with keep-alive about 2,700-2,900 req/s but p99 27-58 ms, because
# each kept-alive connection is pinned to one worker. 6 or 8 sync workers gave no more.
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
worker_class = "sync"

# gunicorn 27's control socket sits at one path per user, so a second server (tests, the bench)
# would take it over; nothing here uses it.
control_socket_disable = True
