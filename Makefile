# Operator and developer commands. Every target works on a fresh machine: it makes the virtual
# environment and installs what it needs first.
# Debian's Python 3.11 is built with profile-guided and link-time optimisation; the pyenv build that
# is first on PATH here is not, and ran the service about 9% slower (README, "Speed"). So Debian's
# is preferred where it can make a virtual environment; any python3 otherwise.
PYTHON ?= $(shell /usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null && echo /usr/bin/python3.11 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
WEB_CONCURRENCY ?= 4
export PORT WEB_CONCURRENCY

.PHONY: run dev migrate test test-tools lint clean bench bench-soak bench-compare bench-tools

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The service runs from its checkout, so only the dependencies setup.cfg lists are installed:
# install_requires, plus the extra named after the stamp (test, dev); "app" means none.
REQUIREMENTS = $(BIN)/python -c 'import configparser, sys; c = configparser.ConfigParser(); \
	c.read("setup.cfg"); o = c["options"]; extras = c["options.extras_require"]; \
	print(o["install_requires"] + extras.get(sys.argv[1], ""))'

$(VENV)/.installed-%: setup.cfg | $(BIN)/python
	$(REQUIREMENTS) $* | xargs $(BIN)/pip install --quiet
	touch $@

migrate: $(VENV)/.installed-app  ## create the database if missing, apply migrations
	$(BIN)/flask --app wsgi migrate

run: migrate  ## serve with gunicorn on 127.0.0.1:$PORT
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

dev: migrate  ## Flask's debug server on 127.0.0.1:$PORT
	$(BIN)/flask --app wsgi run --debug --port $(PORT)

test: test-tools $(VENV)/.installed-test $(VENV)/.installed-app  ## every test, against a real PostgreSQL
	$(BIN)/pytest

# The end-to-end tests start an nginx and a Redis of their own (tests/servers.py).
test-tools:  ## nginx and redis-server from Debian, when missing
	@PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null && command -v redis-server >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq nginx redis-server)

bench-tools:  ## wrk and pgbench from Debian, when missing
	@command -v wrk >/dev/null && command -v pgbench >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq wrk postgresql-contrib)

bench: bench-tools $(VENV)/.installed-app  ## benchmark table (BENCH_ARGS="--repeat 1" for a quick one)
	$(BIN)/python tests/bench/run.py $(BENCH_ARGS)

bench-soak: bench-tools $(VENV)/.installed-app  ## 5 minutes of checkout, worker memory every 30 s
	$(BIN)/python tests/bench/run.py --soak 300 $(BENCH_ARGS)

bench-compare: bench-tools $(VENV)/.installed-app  ## checkout mix, this checkout beside git ref(s) REF
	@test -n "$(REF)" || (echo 'usage: make bench-compare REF="<git ref> ..."' >&2; exit 2)
	$(BIN)/python tests/bench/run.py --compare $(REF) $(BENCH_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check --line-length 110 --select E,F,W,B,UP,SIM identity tests wsgi.py
	$(BIN)/ruff format --check --line-length 110 identity tests wsgi.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
