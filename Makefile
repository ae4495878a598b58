# vpnd — build, test and demo on Debian 12.
#
#   make demo   a real vpnd on a private bus, a test portal and an openvpn
#               server in a network namespace
#   make test   lint, type check and every test (needs root, as CI runs it)
#
# `make deps` installs what is missing (Debian packages, then .venv) and is
# quick when nothing is.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON3 ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# Debian packages the daemon, its tests and the demo use:
# openvpn, polkitd, dbus-daemon/busctl/gdbus for the private bus, systemd for
# systemd-analyze, util-linux for setpriv/unshare, iproute2/iputils-ping for
# the namespace lab, and a C toolchain with libsystemd-dev for systemd-python.
DEB_PACKAGES := \
	openvpn dbus dbus-daemon dbus-bin polkitd libglib2.0-bin systemd \
	libsystemd-dev pkg-config gcc python3-dev python3-venv \
	iproute2 iputils-ping procps util-linux mount openssl ca-certificates

LINT_PATHS := daemon client tests benchmarks

# The system user openvpn switches to (--user/--group); the tunnel tests and
# the demo need it. Declared for systemd-sysusers in data/systemd.
OPENVPN_USER := vpnd-openvpn
SYSUSERS_CONF := $(CURDIR)/data/systemd/vpnd-sysusers.conf

.PHONY: deps debs venv users test lint typecheck unit bus e2e demo clean distclean

deps: debs venv users

# Asks dpkg first and runs apt only for what is missing, so repeated runs
# cost a few dpkg queries.
debs:
	@if ! command -v dpkg-query >/dev/null; then \
		echo "deps: not a Debian system; install by hand: $(DEB_PACKAGES)" >&2; \
		exit 0; \
	fi; \
	missing=""; \
	for pkg in $(DEB_PACKAGES); do \
		status=$$(dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null || true); \
		[ "$$status" = "install ok installed" ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" -ne 0 ]; then \
			echo "deps: missing Debian packages:$$missing (run make deps as root)" >&2; \
			exit 1; \
		fi; \
		echo "deps: installing$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q; \
		apt-get install -y -q --no-install-recommends $$missing; \
	fi

# systemd-sysusers only edits /etc/passwd, /etc/group and the shadow files,
# so it works without systemd as PID 1 (containers, CI); useradd is the
# fallback where it is missing.
users: | debs
	@if ! getent passwd $(OPENVPN_USER) >/dev/null; then \
		if [ "$$(id -u)" -ne 0 ]; then \
			echo "deps: the user $(OPENVPN_USER) is missing (run make deps as root)" >&2; \
			exit 1; \
		fi; \
		echo "deps: creating the system user $(OPENVPN_USER)"; \
		if command -v systemd-sysusers >/dev/null; then \
			systemd-sysusers $(SYSUSERS_CONF); \
		else \
			useradd --system --no-create-home --home-dir / \
				--shell /usr/sbin/nologin --user-group $(OPENVPN_USER); \
		fi; \
		getent passwd $(OPENVPN_USER) >/dev/null; \
	fi

venv: $(STAMP)

# Rebuilt when pyproject.toml changes; the venv sees no system site packages,
# so what the tests import is what pyproject.toml declares.
$(STAMP): pyproject.toml | debs
	@if [ ! -x $(PY) ]; then \
		echo "deps: creating $(VENV) with $$(command -v $(PYTHON3))"; \
		$(PYTHON3) -m venv $(VENV); \
	fi
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@# Bytecode as an installed package has it, also where PYTHONDONTWRITEBYTECODE is set.
	$(PY) -m compileall -q daemon client
	@touch $@

lint: deps
	$(VENV)/bin/ruff check $(LINT_PATHS)

typecheck: deps
	$(VENV)/bin/mypy

unit: deps
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bus: deps
	$(PY) -m pytest tests/bus $(PYTEST_ARGS)

e2e: deps
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

# pytest exits 5 when it collects nothing, which fails the target as it should.
test: deps
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

demo: deps
	$(PY) -m tests.lab.demo

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache .hypothesis
	rm -rf daemon/*.egg-info client/*.egg-info *.egg-info
	find daemon client tests benchmarks -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
