# ferroloop — every target sets up what it needs (venv, dependencies, build) by itself.
# `make help` lists the targets.

PYTHON ?= $(shell scripts/find-python 3.11)
VENV ?= .venv
PY := $(VENV)/bin/python
TEST_REQUIREMENTS := requirements-test.txt
# The other interpreters CI builds and tests on (asyncio differs between them).
EXTRA_PYTHONS ?= 3.12 3.13
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help
.PHONY: help demo test venv build test-rust test-py test-other-pythons conformance bench bench-echo bench-http lint fmt clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

demo: build ## Set up, then run the demo program on ferroloop and the micro-benchmark table
	$(PY) examples/demo.py
	$(PY) benchmarks/micro.py

test: build test-rust lint test-py conformance test-other-pythons ## Set up, then run every test (Rust, lint, pytest and CPython's asyncio suite on 3.11/3.12/3.13)

# Re-runs (pip skips what is installed) whenever the requirements change.
$(VENV)/.ready: $(TEST_REQUIREMENTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(TEST_REQUIREMENTS)
	touch $@

venv: $(VENV)/.ready ## Create the 3.11 virtualenv with the build and test tools

build: venv ## Release build of the extension into the venv
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q

test-rust: ## cargo tests of the Python-free reactor
	cargo test -q -p ferroloop-reactor

test-py: build ## pytest suite (each behaviour on ferroloop and stock asyncio) on 3.11
	$(PY) -m pytest -q

test-other-pythons: ## Build, then run pytest and the conformance gate on the other interpreters
	@set -e; for v in $(EXTRA_PYTHONS); do \
	  py=$$(scripts/find-python $$v) || { echo "Python $$v not found"; exit 1; }; \
	  venv=.venv-$$v; \
	  if [ ! -f $$venv/.ready ] || [ $(TEST_REQUIREMENTS) -nt $$venv/.ready ]; then \
	    { [ -x $$venv/bin/python ] || $$py -m venv $$venv; } && \
	    $$venv/bin/python -m pip install -q --upgrade pip && \
	    $$venv/bin/python -m pip install -q -r $(TEST_REQUIREMENTS) && touch $$venv/.ready; \
	  fi; \
	  echo "== Python $$v"; \
	  VIRTUAL_ENV=$(CURDIR)/$$venv $$venv/bin/maturin develop --release -q && \
	  $$venv/bin/python -m pytest -q && \
	  $$venv/bin/python tests/conformance/run.py --compare-stock --require-core; \
	done

conformance: build ## CPython's test_asyncio on ferroloop vs stock; fails if any test passing on stock fails
	$(PY) tests/conformance/run.py --compare-stock --require-core

bench: build ## Micro-benchmark table: ferroloop / uvloop / asyncio, interleaved
	$(PY) benchmarks/micro.py

bench-echo: build ## TCP echo (protocol/buffered/streams/sockets + native Rust ceiling): server CPU per request
	$(PY) benchmarks/echo.py

bench-http: build ## httptools keep-alive HTTP server under wrk (apt-get install wrk): server CPU per request
	$(PY) benchmarks/http_wrk.py

lint: venv ## rustfmt, clippy -D warnings, ruff
	cargo fmt --all -- --check
	cargo clippy -q --all-targets -- -D warnings
	cargo fmt --manifest-path benchmarks/native-echo/Cargo.toml -- --check
	$(VENV)/bin/ruff check python tests benchmarks examples
	$(VENV)/bin/ruff format --check python tests benchmarks examples

fmt: venv ## Format Rust and Python sources
	cargo fmt --all
	$(VENV)/bin/ruff format python tests benchmarks examples

clean: ## Remove build output and virtualenvs
	cargo clean
	rm -rf $(VENV) .venv-3.* python/ferroloop/*.so
