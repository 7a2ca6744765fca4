"""gunicorn's production settings; `make run` and `make bench` both start gunicorn with them."""

import os

bind = f"127.0.0.1:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
# gunicorn 27's control socket sits at one path per user, so a second server (tests, the bench)
# would take it over; nothing here uses it.
control_socket_disable = True
