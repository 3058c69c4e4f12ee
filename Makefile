# lookalike: `make demo` runs the pipeline on the shipped sample; `make test` runs the test suite.
# Both set themselves up first (a .venv with pinned versions, and a Java check).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= test,query,notebook,bench,lint
PYTEST_ARGS ?=
# Test processes side by side (pytest-xdist), whole files to one process so that a module's
# fixtures (a cluster, a demo run) are built once; 0 runs everything in this process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

.PHONY: setup demo test test-unit test-fast test-compat lint format coverage bench cluster-up cluster-down clean help

help:
	@echo "make demo   - set up, then run the pipeline on samples/clothing and show some results"
	@echo "make test   - set up with test extras, then run the whole test suite (unit, models, spark, e2e)"
	@echo "make test-unit - tests/unit only: under a minute, no JVM, no model larger than a toy"
	@echo "make test-fast - tests/unit and tests/spark: the code's logic in one local Spark session, no whole processes"
	@echo "make lint   - ruff (lint and format check) over the repository, mypy over lib/ and jobs/"
	@echo "make format - ruff's fixes and formatting over the repository"
	@echo "make coverage - the whole suite under coverage.py: line coverage of lib/ (build/coverage)"
	@echo "make test-compat - the suite plus petastorm tests on Spark 3.5 / pyarrow 14 / numpy 1.26 (.venv-compat)"
	@echo "make bench  - run the benchmarks in bench/ (uses ../shared/data when present)"
	@echo "make cluster-up / cluster-down - a standalone Spark cluster (master + 2 workers) on 127.0.0.1"
	@echo "make clean  - remove outputs and the virtualenv"

setup: $(VENV)/.installed-$(subst /,_,$(subst $(comma),_,$(EXTRAS)))

comma := ,
$(VENV)/.installed-%: setup.py constraints.txt requirements-nodeps.txt
	@scripts/check-java.sh
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "lookalike needs Python 3.10+, found " + sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" wheel "setuptools<81"
	@echo "Installing lookalike and pinned dependencies (first time: pyspark builds from source, 1-2 min)..."
	$(PY) -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q --no-deps -c constraints.txt -r requirements-nodeps.txt
	@touch $@

demo: setup
	@scripts/demo.sh

# With no path pytest runs its testpaths in order: tests/unit, tests/models, tests/spark, tests/e2e.
test: setup
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS) tests/unit

test-fast: setup
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS) tests/unit tests/spark

LINTED := .

lint: setup
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff check --fix $(LINTED)
	$(VENV)/bin/ruff format $(LINTED)

coverage: setup
	@mkdir -p build/coverage
	$(VENV)/bin/coverage run -m pytest $(PYTEST_ARGS)
	$(VENV)/bin/coverage report --skip-covered --sort=cover | tail -40
	$(VENV)/bin/coverage json -q -o build/coverage/coverage.json

test-compat:
	scripts/test-compat.sh $(PYTEST_ARGS)

bench: setup
	$(PY) bench/embed_throughput.py
	$(PY) bench/neighbours.py
	$(PY) bench/neighbours_scale.py

cluster-up: setup
	scripts/cluster.sh up

cluster-down:
	scripts/cluster.sh down

clean:
	rm -rf output bench/results spark-warehouse
	rm -rf $(VENV) .venv-compat
