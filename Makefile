# Operator and developer commands. Every target works on a fresh machine: it makes the virtual
# environment and installs what it needs first, from the lock files in requirements/.
# Debian's Python 3.11 is built with profile-guided and link-time optimisation; the pyenv build that
# is first on PATH here is not, and ran the service about 9% slower (README, "Speed"). So Debian's
# is preferred where it can make a virtual environment; any python3 otherwise.
PYTHON ?= $(shell /usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null && echo /usr/bin/python3.11 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
WEB_CONCURRENCY ?= 4
# Where the embedded PostgreSQL keeps its data, used when no other server is (identity/embedded.py).
EMBEDDED_DATA := .data/postgres
# `make lock LOCK_ARGS=--upgrade` moves every pin to the newest release setup.cfg allows.
LOCK_ARGS ?=
export PORT WEB_CONCURRENCY

.PHONY: run dev migrate import stop-db test test-tools lint lock clean bench bench-soak bench-compare \
	bench-tools cluster cluster-stop cluster-tools

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# requirements/app.txt pins what the package needs; requirements/<extra>.txt the same with one extra
# of setup.cfg. A lock newer than its stamp is installed again.
$(VENV)/.installed-%: requirements/%.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r $<
	touch $@

# The project itself, editable, so the venv's commands run this checkout's code; its dependencies
# come from the locks above.
$(VENV)/.installed-identity: pyproject.toml setup.cfg | $(BIN)/python
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

APP := $(VENV)/.installed-app $(VENV)/.installed-identity

# DATABASE_URL for the recipe: as set; else the default address when a server answers there; else
# the embedded PostgreSQL in $(EMBEDDED_DATA), started unless it runs, which one line on stderr names.
WITH_DATABASE = DATABASE_URL="$$($(BIN)/python -m identity.embedded url $(EMBEDDED_DATA))" || exit 1; \
	export DATABASE_URL;
MIGRATE := $(BIN)/flask --app wsgi migrate

migrate: $(APP) $(VENV)/.installed-embedded  ## create the database if missing, apply migrations
	$(WITH_DATABASE) $(MIGRATE)

run: $(APP) $(VENV)/.installed-embedded  ## migrate, then serve with gunicorn on 127.0.0.1:$PORT
	$(WITH_DATABASE) $(MIGRATE) && exec $(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

dev: $(APP) $(VENV)/.installed-embedded  ## migrate, then Flask's debug server on 127.0.0.1:$PORT
	$(WITH_DATABASE) $(MIGRATE) && exec $(BIN)/flask --app wsgi run --debug --port $(PORT)

import: $(APP) $(VENV)/.installed-embedded  ## import a history of orders: make import FILE=orders.csv[.gz] (or FILE=- for stdin)
	@test -n "$(FILE)" || (echo 'usage: make import FILE=PATH [IMPORT_ARGS="--dry-run ..."]' >&2; exit 2)
	$(WITH_DATABASE) $(MIGRATE) && exec $(BIN)/flask --app wsgi import-contacts "$(FILE)" $(IMPORT_ARGS)

stop-db: $(APP) $(VENV)/.installed-embedded  ## stop the embedded PostgreSQL (its data stays)
	$(BIN)/python -m identity.embedded stop $(EMBEDDED_DATA)

test: test-tools cluster-tools $(APP) $(VENV)/.installed-test $(VENV)/.installed-embedded  ## every test, against a real PostgreSQL
	$(BIN)/pytest

# The end-to-end tests start an nginx, a Redis and a PgBouncer of their own (tests/servers.py).
test-tools:  ## nginx, redis-server and pgbouncer from Debian, when missing
	@PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null && command -v redis-server >/dev/null && \
		PATH="$$PATH:/usr/sbin" command -v pgbouncer >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq nginx redis-server pgbouncer)

# A local Patroni cluster, etcd and three PostgreSQL 15 nodes on loopback ports (deploy/cluster.sh);
# tests/test_cluster.py starts one of its own on free ports.
cluster-tools:  ## patroni and etcd from Debian, when missing
	@command -v patroni >/dev/null && command -v etcd >/dev/null && command -v etcdctl >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq patroni etcd-server etcd-client)

cluster: cluster-tools  ## start the local Patroni cluster in .data/cluster; prints its DATABASE_URL
	deploy/cluster.sh start

cluster-stop:  ## stop the local Patroni cluster (its data stays)
	deploy/cluster.sh stop

# The bench drives the service through nginx and PgBouncer too, and `--where` times a Redis GET.
bench-tools:  ## wrk, pgbench, nginx, redis-server and pgbouncer from Debian, when missing
	@command -v wrk >/dev/null && command -v pgbench >/dev/null && \
		PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null && command -v redis-server >/dev/null && \
		PATH="$$PATH:/usr/sbin" command -v pgbouncer >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq wrk postgresql-contrib nginx redis-server pgbouncer)

bench: bench-tools $(APP)  ## benchmark table (BENCH_ARGS="--repeat 1" for a quick one)
	$(BIN)/python tests/bench/run.py $(BENCH_ARGS)

bench-soak: bench-tools $(APP)  ## 5 minutes of checkout, worker memory every 30 s
	$(BIN)/python tests/bench/run.py --soak 300 $(BENCH_ARGS)

bench-compare: bench-tools $(APP)  ## checkout mix, this checkout beside git ref(s) REF
	@test -n "$(REF)" || (echo 'usage: make bench-compare REF="<git ref> ..."' >&2; exit 2)
	$(BIN)/python tests/bench/run.py --compare $(REF) $(BENCH_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check --line-length 110 --select E,F,W,B,UP,SIM identity tests wsgi.py
	$(BIN)/ruff format --check --line-length 110 identity tests wsgi.py

# Each lock is resolved with the ones before it as constraints, so a package that two of them pin
# has one version in all, and installing several into one venv never swaps versions.
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --allow-unsafe \
	--strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_ARGS) setup.cfg
lock: $(VENV)/.installed-dev  ## re-resolve requirements/*.txt from setup.cfg
	$(PIP_COMPILE) -o requirements/app.txt
	$(PIP_COMPILE) --extra embedded -c requirements/app.txt -o requirements/embedded.txt
	$(PIP_COMPILE) --extra test -c requirements/app.txt -c requirements/embedded.txt -o requirements/test.txt
	$(PIP_COMPILE) --extra dev -c requirements/app.txt -c requirements/embedded.txt \
		-c requirements/test.txt -o requirements/dev.txt

# The embedded server runs on the binaries in $(VENV), so it is stopped before they go; its data stays.
clean:
	if [ -x $(BIN)/python ] && [ -d $(EMBEDDED_DATA) ]; then $(BIN)/python -m identity.embedded stop $(EMBEDDED_DATA); fi
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
