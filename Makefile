# ferroloop — every target sets up what it needs (venv, dependencies, build) by itself.
# `make help` lists the targets.

# Every supported CPython; `make test` builds and tests on each (asyncio differs
# between them). 3.11 is the primary one (demo, benchmarks, lint tools).
PYTHONS ?= 3.11 3.12 3.13 3.14 3.15
# How many versions are tested side by side (each runs its pytest suite, then CPython's
# suite with CONFORMANCE_JOBS processes).
TEST_JOBS ?= 2
VENV := .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Where `make bench` draws the micro-benchmark chart the README shows.
BENCH_CHART ?= docs/benchmarks.png

.DEFAULT_GOAL := help
.PHONY: help demo test venv build test-rust test-py test-pythons test-servers conformance bench bench-echo bench-accept bench-udp bench-http bench-tls bench-subprocess lint fmt clean wheels sdist test-wheels test-sdist

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_%.-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

demo: build ## Set up, then run the demo program on ferroloop and the micro-benchmark table
	$(PY) examples/demo.py
	$(PY) benchmarks/micro.py

test: test-rust lint test-servers test-pythons test-sdist ## Set up, then run every test: Rust, lint, the wheels, pytest and CPython's asyncio suite on 3.11-3.15, the sdist

venv: ## Create the 3.11 virtualenv with the build and test tools
	scripts/test-python 3.11 venv

build: ## Release build of the extension into the 3.11 venv
	scripts/test-python 3.11 build

test-rust: ## cargo tests of the Python-free reactor
	cargo test -q -p ferroloop-reactor

test-servers: ## Install the servers the tests start (redis-server, postgresql) if missing
	scripts/install-test-servers

test-py: build ## pytest suite (each behaviour on ferroloop and stock asyncio) on 3.11
	scripts/test-python 3.11 pytest

test-pythons: venv ## Wheel, install, smoke, pytest and the conformance gate on every version in PYTHONS, TEST_JOBS at a time
	$(MAKE) --no-print-directory -j$(TEST_JOBS) --output-sync=target $(addprefix test-python-,$(PYTHONS))

test-python-%: ## Release wheel, installed without Rust; smoke in a fresh venv, pytest, conformance on one version, e.g. test-python-3.14
	scripts/test-python $*

wheels: venv ## Release artefacts in dist/: manylinux2014 x86_64 wheels for PYTHONS and the sdist, checked
	$(MAKE) --no-print-directory -j$(TEST_JOBS) --output-sync=target $(addprefix wheel-,$(PYTHONS)) sdist

wheel-%: ## One version's wheel in dist/, e.g. wheel-3.14
	scripts/build-wheels $*

sdist: ## The sdist in dist/
	scripts/build-wheels --sdist

test-wheels: wheels ## Each wheel in a fresh venv without Rust on PATH: the demo and the smoke tests
	for v in $(PYTHONS); do scripts/test-wheels $$v || exit 1; done

test-sdist: sdist ## The sdist built by pip in a fresh venv: import, version, the demo
	scripts/test-wheels sdist

conformance: build ## CPython's test_asyncio on ferroloop vs stock (3.11); fails if any test passing on stock fails
	scripts/test-python 3.11 conformance

bench: build ## Micro-benchmark table and its chart (docs/benchmarks.png, the README's): ferroloop / uvloop / asyncio, interleaved
	@mkdir -p .bench
	$(PY) benchmarks/micro.py --chart $(BENCH_CHART) --json .bench/micro.json

bench-echo: build ## TCP echo (protocol/buffered/streams/sockets + native Rust ceiling): server CPU per request
	$(PY) benchmarks/echo.py

bench-accept: build ## Connection rate (accept, write 5 bytes, close; TCP and Unix + native Rust ceiling): server CPU per connection
	$(PY) benchmarks/accept.py

bench-udp: build ## UDP echo (64 B / 1 KiB x 1 / 4 clients + native Rust ceiling): server CPU per datagram
	$(PY) benchmarks/udp.py

bench-http: build ## httptools keep-alive HTTP server under wrk (apt-get install wrk): server CPU per request
	$(PY) benchmarks/http_wrk.py

bench-tls: build ## TLS echo (protocol/streams), handshakes, HTTPS under wrk: server CPU per operation
	$(PY) benchmarks/tls.py

bench-subprocess: build ## Subprocess pipes (child stdout, head -c, cat round trip): parent CPU per MiB
	$(PY) benchmarks/subprocess_pipe.py

lint: venv ## rustfmt, clippy -D warnings, ruff
	cargo fmt --all -- --check
	cargo clippy -q --all-targets -- -D warnings
	cargo fmt --manifest-path benchmarks/native-echo/Cargo.toml -- --check
	cargo fmt --manifest-path benchmarks/native-accept/Cargo.toml -- --check
	$(VENV)/bin/ruff check python tests benchmarks examples
	$(VENV)/bin/ruff format --check python tests benchmarks examples

fmt: venv ## Format Rust and Python sources
	cargo fmt --all
	$(VENV)/bin/ruff format python tests benchmarks examples

clean: ## Remove build output and virtualenvs (not the unpacked 3.14/3.15 in .cache)
	cargo clean
	rm -rf $(VENV) .venv-3.* .venv-wheel-3.* .venv-sdist dist python/ferroloop/*.so
