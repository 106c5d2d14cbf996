# m6t desktop. `make demo` and `make test` do their own set-up (Debian packages, a virtual
# environment, pip install), idempotently, on a fresh Debian 12 machine as root.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup test test-unit test-netns lint demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup-system
	./scripts/setup-system
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,desktop]'
	touch $@

# The whole suite, network-namespace tests included; in it a skipped netns test is a failure.
test: setup
	M6T_REQUIRE_NETNS=1 $(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-netns: setup
	M6T_REQUIRE_NETNS=1 $(PY) -m pytest -q tests/netns

lint: setup
	$(VENV)/bin/ruff check m6t tests bench
	$(VENV)/bin/mypy m6t

demo: setup
	$(PY) -m m6t.lab demo

bench: setup
	$(PY) bench/state_table.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
