# m6t desktop. `make demo` and `make test` do their own set-up (Debian packages, a virtual
# environment, pip install), idempotently, on a fresh Debian 12 machine as root.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup test test-unit test-netns test-packaging test-fuzz lint demo bench deb clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup-system
	./scripts/setup-system
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,desktop]'
	touch $@

# The whole suite, network-namespace tests included; in it a skipped netns test is a failure.
test: setup
	M6T_REQUIRE_NETNS=1 $(PY) -m pytest -q tests --ignore=tests/packaging

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-netns: setup
	M6T_REQUIRE_NETNS=1 $(PY) -m pytest -q tests/netns

# Hypothesis with 40 times the examples of `make test` (12 minutes here): before a change to a
# parser or the gateway's core lands. Random seeds: a failure prints its reproduction.
test-fuzz: setup
	M6T_FUZZ_SCALE=40 $(PY) -m pytest -q tests/fuzz tests/unit/test_properties.py

lint: setup
	$(VENV)/bin/ruff check m6t helper m6t_desktop tests bench packaging/debtool.py
	$(VENV)/bin/mypy m6t helper m6t_desktop

demo: setup
	$(PY) -m m6t.lab demo

bench: setup
	$(PY) bench/state_table.py

# Debian packages m6t and m6t-desktop in dist/ (a private venv under /opt/m6t).
DEB_VERSION ?=
deb:
	./scripts/setup-system
	packaging/build-deb $(if $(DEB_VERSION),--version $(DEB_VERSION))

# Slow (1-3 min), root, a Debian mirror: builds the packages, then installs, boots, upgrades
# and purges them in a debootstrapped Debian 12 root.
test-packaging: setup
	command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends debootstrap systemd-container >/dev/null; }
	M6T_TEST_PACKAGING=1 $(PY) -m pytest -q tests/packaging

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
