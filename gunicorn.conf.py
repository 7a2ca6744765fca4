"""gunicorn's production settings; `make run` and `make bench` both start gunicorn with them."""

import os

bind = f"127.0.0.1:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
