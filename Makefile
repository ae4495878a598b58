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
PIP := $(PY) -m pip --quiet --disable-pip-version-check
STAMP := $(VENV)/.installed
LOCK := requirements.lock
LOCK_VENV := .venv-lock
UV_VERSION := 0.13.9
# `make lock LOCK_ARGS=--upgrade` takes the newest releases the ranges allow.
LOCK_ARGS ?=
PYTEST_ARGS ?=

# Debian packages the daemon, its tests and the demo use:
# openvpn, polkitd, dbus-daemon/busctl/gdbus for the private bus, systemd for
# systemd-analyze, groff-base and zsh for the checks of vpnctl's man page and
# completion, util-linux for setpriv/unshare, iproute2/iputils-ping for
# the namespace lab, and a C toolchain with libsystemd-dev for systemd-python.
DEB_PACKAGES := \
	openvpn dbus dbus-daemon dbus-bin polkitd libglib2.0-bin systemd \
	libsystemd-dev pkg-config gcc python3-dev python3-venv \
	iproute2 iputils-ping procps util-linux mount openssl ca-certificates \
	groff-base zsh

LINT_PATHS := daemon client tests benchmarks

# The system user openvpn switches to (--user/--group); the tunnel tests and
# the demo need it. Declared for systemd-sysusers in data/systemd.
OPENVPN_USER := vpnd-openvpn
SYSUSERS_CONF := $(CURDIR)/data/systemd/vpnd-sysusers.conf

.PHONY: deps debs venv users lock test lint typecheck unit bus e2e demo clean distclean

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

# The product's accounts come from its sysusers file and nothing else, so
# every machine has the same account. systemd-sysusers only edits
# /etc/passwd, /etc/group and the shadow files: it works without systemd as
# PID 1 (containers, CI). It never changes an account that exists, so an
# account left by older tooling with another home or shell is set to what
# the file declares.
users: | debs
	@if [ "$$(id -u)" -ne 0 ]; then \
		getent passwd $(OPENVPN_USER) >/dev/null || { \
			echo "deps: the user $(OPENVPN_USER) is missing (run make deps as root)" >&2; exit 1; }; \
		exit 0; \
	fi; \
	if ! getent passwd $(OPENVPN_USER) >/dev/null; then \
		echo "deps: creating the system user $(OPENVPN_USER)"; \
	fi; \
	systemd-sysusers $(SYSUSERS_CONF); \
	want=$$(awk '$$1 == "u" && $$2 == "$(OPENVPN_USER)" { print $$(NF-1) ":" $$NF }' $(SYSUSERS_CONF)); \
	have=$$(getent passwd $(OPENVPN_USER) | cut -d: -f6,7); \
	if [ "$$have" != "$$want" ]; then \
		echo "deps: setting home and shell of $(OPENVPN_USER) to $$want (was $$have)"; \
		usermod --home "$${want%%:*}" --shell "$${want#*:}" $(OPENVPN_USER); \
	fi

venv: $(STAMP)

# Rebuilt when the lock file changes. Every package, the test tools and what
# builds the project included, comes pinned and hashed from requirements.lock;
# the project itself is built without build isolation, so nothing unhashed
# is fetched for it. The venv sees no system site packages, so what the tests
# import is what the lock file holds.
$(STAMP): $(LOCK) pyproject.toml | debs
	@if [ ! -x $(PY) ]; then \
		echo "deps: creating $(VENV) with $$(command -v $(PYTHON3))"; \
		$(PYTHON3) -m venv $(VENV); \
	fi
	$(PIP) install --require-hashes --no-deps --no-build-isolation -r $(LOCK)
	$(PIP) install --no-deps --no-build-isolation -e .
	@# setuptools' editable finder is imported by every Python started from this
	@# venv and costs each about 40 ms (pathlib, importlib.util, fnmatch at
	@# site time), which vpnctl's start-up and its benchmark would carry. Both
	@# packages sit at the top of daemon/ and client/, so plain path lines do
	@# the finder's job.
	@site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	rm -f "$$site"/__editable___vpnd_*_finder.py; \
	for pth in "$$site"/__editable__.vpnd-*.pth; do \
		printf '%s\n' "$(CURDIR)/daemon" "$(CURDIR)/client" > "$$pth"; \
	done
	@# Bytecode as an installed package has it, also where PYTHONDONTWRITEBYTECODE is set.
	$(PY) -m compileall -q daemon client
	@touch $@

# Refreshes requirements.lock from pyproject.toml's ranges (and its build
# requirements) with uv, pinned here, in a venv of its own.
lock:
	@if [ ! -x $(LOCK_VENV)/bin/uv ]; then \
		$(PYTHON3) -m venv $(LOCK_VENV); \
		$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION); \
	fi
	$(PYTHON3) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
		| $(LOCK_VENV)/bin/uv pip compile pyproject.toml - --extra test --generate-hashes \
			--python-version 3.11 --no-header $(LOCK_ARGS) -o $(LOCK)

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
	rm -rf $(VENV) $(LOCK_VENV) $(BENCH_VENV)

# eduvpn-common (the official eduVPN client library) for the side-by-side
# connect benchmark, in a venv that only benchmarks/ uses: pinned and hashed
# from its own lock file, never a dependency of vpnd. Regenerate the lock
# with uv (see benchmarks/README.md).
BENCH_VENV := .venv-bench
BENCH_LOCK := benchmarks/requirements-eduvpn-common.lock

.PHONY: bench-deps
bench-deps: $(BENCH_VENV)/.installed

$(BENCH_VENV)/.installed: $(BENCH_LOCK)
	@if [ ! -x $(BENCH_VENV)/bin/python ]; then \
		echo "bench-deps: creating $(BENCH_VENV) with $$(command -v $(PYTHON3))"; \
		$(PYTHON3) -m venv $(BENCH_VENV); \
	fi
	$(BENCH_VENV)/bin/python -m pip --quiet --disable-pip-version-check \
		install --require-hashes --no-deps --only-binary :all: -r $(BENCH_LOCK)
	@touch $@
