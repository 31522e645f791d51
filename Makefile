# Two commands do all the set-up on a fresh machine (Python, pip, gcc, make):
#   make demo   - creates .venv, installs the pinned lock, runs the main job end to end
#   make test   - creates .venv, installs the pinned lock, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: venv browser services demo test test-fast bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py requirements.lock
	$(PYTHON) -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 13), "selfheal needs Python 3.11 or 3.12 (durable-rules builds on those only); run: make PYTHON=python3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name selfheal --display-name "selfheal (Python 3)" >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/selfheal demo

# Headless Chromium (Debian's package) for the tests that render the HTML report and drive the
# console (through Playwright, which uses this chromium: no browser download); installed when
# running as root with apt-get, otherwise those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium not installed; the browser tests (report, console) will skip"; fi; }

# Debian's redis-server and PostgreSQL for the tests of the parts that run across machines (the
# shared journal, the telemetry bus): the tests start their own throw-away servers on free ports
# of 127.0.0.1 (engine/testing/services.py), never the machine's services. Installed when running
# as root with apt-get; where that fails or cannot run, those tests skip and say why.
services:
	@command -v redis-server >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	        redis-server postgresql >/dev/null; } \
	      || echo "note: apt-get could not install redis-server/postgresql; their tests will skip"; \
	  else echo "note: redis-server/postgresql not installed; the journal/bus tests on them will skip"; fi; }

# Tests marked `alone` drive the engine against a simulated clock running 720x the wall clock: a
# busy neighbour test makes the engine lag that clock by more than a verification deadline's slack
# (CI once saw the demo's game day "not verified"), so they run afterwards, one at a time; so do
# the three engine replicas that balance partitions on 4 s leases (CI once saw them not settle).
test: $(STAMP) browser services
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not alone"
	$(BIN)/python -m pytest -m alone

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not slow"

bench: $(STAMP)
	$(BIN)/python tests/benchmarks/run.py

lint: $(STAMP)
	$(BIN)/ruff check engine tests
	$(BIN)/ruff format --check engine tests

clean:
	rm -rf $(VENV) .selfheal .pytest_cache .ruff_cache
