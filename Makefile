# lookalike: `make demo` runs the pipeline on the shipped sample; `make test` runs the test suite.
# Both set themselves up first (a .venv with pinned versions, and a Java check).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= test,query,notebook,bench
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast test-compat bench cluster-up cluster-down clean help

help:
	@echo "make demo   - set up, then run the pipeline on samples/clothing and show some results"
	@echo "make test   - set up with test extras, then run the whole test suite"
	@echo "make test-fast - unit and small Spark tests only (pytest -m 'not slow'): a few minutes, no cluster archive"
	@echo "make test-compat - the suite plus petastorm tests on Spark 3.5 / pyarrow 14 / numpy 1.26 (.venv-compat)"
	@echo "make bench  - run the benchmarks in bench/ (uses ../shared/data when present)"
	@echo "make cluster-up / cluster-down - a standalone Spark cluster (master + 2 workers) on 127.0.0.1"
	@echo "make clean  - remove outputs and the virtualenv"

setup: $(VENV)/.installed-$(subst /,_,$(subst $(comma),_,$(EXTRAS)))

comma := ,
$(VENV)/.installed-%: setup.py constraints.txt
	@scripts/check-java.sh
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "lookalike needs Python 3.10+, found " + sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" wheel "setuptools<81"
	@echo "Installing lookalike and pinned dependencies (first time: pyspark builds from source, 1-2 min)..."
	$(PY) -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $@

demo: setup
	@scripts/demo.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS) tests

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
