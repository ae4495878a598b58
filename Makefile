# vpnd — build, test and demo on Debian 12.
#
#   make demo   a real vpnd on a private bus, a test portal and an openvpn
#               server in a network namespace
#   make test   lint, type check and every test (needs root, as CI runs it)
#   make install / uninstall / deb   vpnd as a system service (see below)
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
# the namespace lab, a C toolchain with libsystemd-dev for systemd-python, and
# build-essential with debhelper for `make deb` (dpkg-buildpackage).
DEB_PACKAGES := \
	openvpn dbus dbus-daemon dbus-bin polkitd libglib2.0-bin systemd \
	libsystemd-dev pkg-config gcc python3-dev python3-venv \
	iproute2 iputils-ping procps util-linux mount openssl ca-certificates \
	groff-base zsh xvfb dunst \
	build-essential debhelper

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

# --- Installing vpnd as a system service -------------------------------------
#
#   make install [PREFIX=/usr/local] [DESTDIR=DIR] [ENABLE=1]
#   make uninstall [PREFIX=/usr/local] [PURGE=1]
#   make deb [DEB_OUT=DIR]        the Debian package, built by dpkg-buildpackage
#
# The daemon and vpnctl go into a virtualenv of their own, $(VENVDIR), built
# from the hashed lock file with the system's Python (/root, where a pyenv
# Python may live, is hidden from the unit by ProtectHome=yes), and reach the
# PATH as symbolic links in $(BINDIR). Each file goes where its reader looks:
# systemd and systemd-sysusers read /usr/local/lib as well as /usr/lib, the bus
# reads activation files from /usr/local/share too, but bus policies only from
# /usr/share/dbus-1/system.d and /etc/dbus-1/system.d, and polkit actions only
# from /usr/share/polkit-1/actions. The unit and the activation file are
# installed naming $(BINDIR)/vpnd.
#
# install writes $(VENVDIR)/installed-files, the list uninstall removes: every
# file it installed, and the directories it had to create (removed when
# empty). A new install over an old one builds the new virtualenv beside the
# old, stops a running vpnd, swaps them, removes what only the old install
# had and starts vpnd again (restart, if it ran); /var/lib/vpnd (servers,
# tokens, keys) is never touched, and only PURGE=1 removes it. The same
# sources installed again rebuild nothing and leave a running vpnd alone.
# With DESTDIR the files are staged for a package and nothing on the running
# system is touched.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
VENVDIR ?= $(PREFIX)/lib/vpnd
DOCDIR ?= $(PREFIX)/share/doc/vpnd
MANDIR ?= $(PREFIX)/share/man
BASHCOMPLETIONDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPLETIONDIR ?= $(PREFIX)/share/zsh/vendor-completions
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
SYSTEMDUSERUNITDIR ?= $(PREFIX)/lib/systemd/user
# Desktops read autostart files from $XDG_CONFIG_DIRS, /etc/xdg unless set.
XDGAUTOSTARTDIR ?= /etc/xdg/autostart
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
DBUSSERVICEDIR ?= $(PREFIX)/share/dbus-1/system-services
DBUSINTERFACEDIR ?= $(PREFIX)/share/dbus-1/interfaces
DBUSPOLICYDIR ?= $(if $(filter /usr,$(PREFIX)),/usr/share/dbus-1/system.d,/etc/dbus-1/system.d)
POLKITACTIONDIR ?= /usr/share/polkit-1/actions
INSTALL_PYTHON ?= /usr/bin/python3
DESTDIR ?=
ENABLE ?=
PURGE ?=
DEB_OUT ?= $(CURDIR)/build

# The part of requirements.lock that `install` needs, on stdout: "build"
# (what builds the project and the sdists: build-system.requires and their
# dependencies) or "runtime" (project.dependencies and theirs, never the
# test tools). Dependencies are followed through the lock's "# via" notes;
# `pip check` afterwards fails the install if one was missed.
define VPND_LOCK_SUBSET
import re
import sys
import tomllib

lock_path, project_path, part = sys.argv[1:4]


def normalized(spec):
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec)[0]).lower()


with open(project_path, "rb") as file:
    project = tomllib.load(file)
wanted = {
    "build": project["build-system"]["requires"],
    "runtime": project["project"]["dependencies"],
}[part]

lines, parents = {}, {}
name, in_via = None, False
with open(lock_path) as file:
    for line in file:
        text = line.strip()
        if line[:1].isalnum():
            name, in_via = normalized(line), False
            lines[name], parents[name] = [line], set()
        elif name is None or not text:
            continue
        elif text.startswith("# via"):
            in_via = True
            if text[len("# via"):].strip():
                parents[name].add(normalized(text[len("# via"):].strip()))
        elif text.startswith("#"):
            if in_via:
                parents[name].add(normalized(text.lstrip("# ")))
        else:
            lines[name].append(line)

needed = {normalized(spec) for spec in wanted}
unknown = sorted(needed - set(lines))
if unknown:
    sys.exit(f"install: {', '.join(unknown)} not in {lock_path}; run make lock")
while True:
    more = {package for package, via in parents.items() if via & needed} - needed
    if not more:
        break
    needed |= more
for package in sorted(needed):
    sys.stdout.write("".join(lines[package]))
endef

define VPND_INSTALL
set -euo pipefail
say() { printf 'install: %s\n' "$*"; }
fail() { printf 'install: %s\n' "$*" >&2; exit 1; }
root=${DESTDIR%/}
live=; [ -n "$root" ] || live=1
booted=; [ -z "$live" ] || [ ! -d /run/systemd/system ] || booted=1
manifest=$VENVDIR/installed-files
fingerprint_file=$VENVDIR/installed-from
stage=$(dirname "$VENVDIR")/.$(basename "$VENVDIR").new

if [ -n "$live" ]; then
    [ "$(id -u)" -eq 0 ] || fail "installing needs root (or DESTDIR=DIR to stage the files)"
    status=$(dpkg-query -W -f='${Status}' vpnd 2>/dev/null || true)
    [ "$status" != "install ok installed" ] ||
        fail "the Debian package vpnd is installed; remove it first (apt remove vpnd)"
fi
[ -x "$INSTALL_PYTHON" ] || fail "no $INSTALL_PYTHON (Debian package python3)"
"$INSTALL_PYTHON" -c 'import ensurepip' 2>/dev/null ||
    fail "$INSTALL_PYTHON cannot make virtualenvs (Debian package python3-venv)"
# The versioned interpreter (python3.11), so that the virtualenv names the
# Python its packages were built for even after python3 moves on.
python=$(readlink -f "$INSTALL_PYTHON")

work=$(mktemp -d)
trap 'rm -rf "$work" "$root$stage"' EXIT
: > "$work/manifest"
if [ -f "$root$manifest" ]; then
    cp "$root$manifest" "$work/old-manifest"
    # Directories an earlier install created stay ours.
    grep '^d ' "$work/old-manifest" >> "$work/manifest" || true
else
    : > "$work/old-manifest"
fi

# A directory on the target, noting the ones that did not exist. Under
# DESTDIR every directory is new and the package's owner tracks them.
make_dir() {
    local dir=$1 created=()
    while [ "$dir" != / ] && [ ! -d "$root$dir" ]; do
        created+=("$dir")
        dir=$(dirname "$dir")
    done
    if [ -n "$live" ]; then
        for dir in "${created[@]}"; do echo "d $dir" >> "$work/manifest"; done
    fi
    mkdir -p "$root$1"
}

# A file with its mode, from stdin.
put() {
    make_dir "$(dirname "$2")"
    install -m "$1" /dev/stdin "$root$2"
    echo "f $2" >> "$work/manifest"
}

# What the install is made of: the sources, the lock, the data files, this
# Makefile, the Python and the place. The same again finds the virtualenv
# it built, so a second run (ENABLE=1, say) is quick and leaves a running
# vpnd alone.
mkdir "$work/src"
tar -C "$SRC" --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml daemon client |
    tar -C "$work/src" -xf -
fingerprint=$(
    {
        (cd "$work/src" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
        (cd "$SRC" && find requirements.lock Makefile data -type f -print0 | sort -z |
            xargs -0 sha256sum)
        "$python" -VV
        echo "$VENVDIR"
    } | sha256sum | cut -d' ' -f1
)
rebuild=1
if [ -f "$root$fingerprint_file" ] && [ -f "$root$manifest" ] &&
    [ "$(cat "$root$fingerprint_file")" = "$fingerprint" ]; then
    rebuild=
    say "$VENVDIR is up to date"
fi

# The virtualenv, built beside the one in use from the copy of the sources
# (the checkout may be read-only), and compiled for its final place.
if [ -n "$rebuild" ]; then
    say "building $VENVDIR with $python"
    for part in build runtime; do
        "$python" -c "$VPND_LOCK_SUBSET" "$SRC/requirements.lock" "$SRC/pyproject.toml" \
            "$part" > "$work/$part.lock"
    done
    make_dir "$(dirname "$VENVDIR")"
    rm -rf "$root$stage"
    "$python" -m venv --prompt vpnd "$root$stage"
    pip=("$root$stage/bin/python" -m pip --quiet --no-cache-dir --disable-pip-version-check)
    "${pip[@]}" install --no-compile --require-hashes --no-deps -r "$work/build.lock"
    "${pip[@]}" install --no-compile --require-hashes --no-deps --no-build-isolation \
        -r "$work/runtime.lock"
    "${pip[@]}" install --no-compile --no-deps --no-build-isolation "$work/src"
    "${pip[@]}" check
    # Scripts and activate files name the directory they were made in.
    from=$(printf '%s' "$root$stage" | sed 's/[][\.*^$|]/\\&/g')
    grep -rlIF -- "$root$stage" "$root$stage" | while read -r file; do
        sed -i "s|$from|$VENVDIR|g" "$file"
    done
    # Hash-checked bytecode names the final paths and stays valid whatever
    # mtimes a package gives the files; the daemon cannot write any itself.
    "$root$stage/bin/python" -m compileall -q -f -j 0 --invalidation-mode checked-hash \
        -s "$root$stage" -p "$VENVDIR" "$root$stage/lib"
    echo "$fingerprint" > "$root$stage/installed-from"
fi
echo "t $VENVDIR" >> "$work/manifest"

# From here on the old daemon must not run: the new one starts at the end.
was_active=
if [ -n "$rebuild" ]; then
    if [ -n "$booted" ] && systemctl -q is-active vpnd.service; then
        was_active=1
        say "stopping the running vpnd for the upgrade"
        systemctl stop vpnd.service
    fi
    if [ -d "$root$VENVDIR" ]; then
        mv -T "$root$VENVDIR" "$work/old-venv"
    fi
    mv -T "$root$stage" "$root$VENVDIR"
fi

make_dir "$BINDIR"
for command in vpnd vpnctl; do
    ln -sfnr "$root$VENVDIR/bin/$command" "$root$BINDIR/$command"
    echo "f $BINDIR/$command" >> "$work/manifest"
done
sed "s|^ExecStart=/usr/bin/vpnd\$|ExecStart=$BINDIR/vpnd|" "$SRC/data/systemd/vpnd.service" |
    put 0644 "$SYSTEMDUNITDIR/vpnd.service"
grep -qx "ExecStart=$BINDIR/vpnd" "$root$SYSTEMDUNITDIR/vpnd.service" ||
    fail "data/systemd/vpnd.service has no ExecStart=/usr/bin/vpnd to point at $BINDIR"
sed "s|^Exec=/usr/bin/vpnd\$|Exec=$BINDIR/vpnd|" "$SRC/data/dbus/org.vpnd.Daemon.service" |
    put 0644 "$DBUSSERVICEDIR/org.vpnd.Daemon.service"
grep -qx "Exec=$BINDIR/vpnd" "$root$DBUSSERVICEDIR/org.vpnd.Daemon.service" ||
    fail "data/dbus/org.vpnd.Daemon.service has no Exec=/usr/bin/vpnd to point at $BINDIR"
# The desktop notifications (vpnctl monitor --notify): a user unit and an
# autostart file, both naming the installed vpnctl.
sed "s|^ExecStart=/usr/bin/vpnctl |ExecStart=$BINDIR/vpnctl |" \
    "$SRC/data/systemd/user/vpnd-notify.service" |
    put 0644 "$SYSTEMDUSERUNITDIR/vpnd-notify.service"
grep -q "^ExecStart=$BINDIR/vpnctl " "$root$SYSTEMDUSERUNITDIR/vpnd-notify.service" ||
    fail "data/systemd/user/vpnd-notify.service has no ExecStart=/usr/bin/vpnctl to point at $BINDIR"
sed "s|^Exec=/usr/bin/vpnctl |Exec=$BINDIR/vpnctl |" "$SRC/data/xdg/autostart/vpnd-notify.desktop" |
    put 0644 "$XDGAUTOSTARTDIR/vpnd-notify.desktop"
grep -q "^Exec=$BINDIR/vpnctl " "$root$XDGAUTOSTARTDIR/vpnd-notify.desktop" ||
    fail "data/xdg/autostart/vpnd-notify.desktop has no Exec=/usr/bin/vpnctl to point at $BINDIR"
put 0644 "$SYSUSERSDIR/vpnd.conf" < "$SRC/data/systemd/vpnd-sysusers.conf"
put 0644 "$DBUSPOLICYDIR/org.vpnd.Daemon.conf" < "$SRC/data/dbus/org.vpnd.Daemon.conf"
put 0644 "$DBUSINTERFACEDIR/org.vpnd.Daemon.xml" < "$SRC/data/dbus/org.vpnd.Daemon.xml"
put 0644 "$POLKITACTIONDIR/org.vpnd.policy" < "$SRC/data/polkit-1/org.vpnd.policy"
put 0644 "$DOCDIR/credential.conf" < "$SRC/data/systemd/vpnd.service.d/credential.conf"
put 0644 "$BASHCOMPLETIONDIR/vpnctl" < "$SRC/data/completion/vpnctl.bash"
put 0644 "$ZSHCOMPLETIONDIR/_vpnctl" < "$SRC/data/completion/_vpnctl"
# The man page comes from the same parser as --help; vpnctl's parser needs
# nothing but the standard library.
PYTHONPATH="$SRC/client" "$INSTALL_PYTHON" -m vpnctl.manpage | gzip -9n |
    put 0644 "$MANDIR/man1/vpnctl.1.gz"

# The list, written last into the virtualenv; then what only the old
# install had goes.
sort -u "$work/manifest" > "$root$manifest"
echo "f $manifest" >> "$root$manifest"
{ grep '^f ' "$work/old-manifest" || true; } | sort -u |
    comm -23 - <(grep '^f ' "$root$manifest" | sort -u) |
    while read -r _ path; do rm -f "$root$path"; done
rm -rf "$work/old-venv"

if [ -z "$live" ]; then
    say "staged in $root; nothing on this system was changed"
    exit 0
fi
if command -v systemd-sysusers >/dev/null; then
    systemd-sysusers "$SYSUSERSDIR/vpnd.conf"
fi
if [ -n "$booted" ]; then
    systemctl daemon-reload
fi
if [ -S /run/dbus/system_bus_socket ] && command -v dbus-send >/dev/null; then
    dbus-send --system --print-reply=literal --dest=org.freedesktop.DBus / \
        org.freedesktop.DBus.ReloadConfig >/dev/null
fi
if [ "$ENABLE" = 1 ]; then
    systemctl enable vpnd.service
fi
version=$("$VENVDIR/bin/vpnd" --version | cut -d' ' -f2)
if [ -z "$booted" ]; then
    [ "$ENABLE" != 1 ] || say "vpnd $version is enabled: it starts at the next boot"
elif [ -n "$rebuild" ] && { [ -n "$was_active" ] || systemctl -q is-active vpnd.service; }; then
    # Restart, not start: a client's call may have started the old daemon
    # again while the files were being replaced.
    systemctl restart vpnd.service
    say "vpnd $version runs"
elif [ "$ENABLE" = 1 ]; then
    systemctl start vpnd.service
    say "vpnd $version runs"
fi
if [ "$ENABLE" != 1 ] && ! { [ -n "$booted" ] && systemctl -q is-active vpnd.service; }; then
    say "vpnd is installed; a client's first call starts it (D-Bus activation)."
    say "To run it from boot on: systemctl enable --now vpnd (or make install ENABLE=1)"
fi
endef

define VPND_UNINSTALL
set -euo pipefail
say() { printf 'uninstall: %s\n' "$*"; }
fail() { printf 'uninstall: %s\n' "$*" >&2; exit 1; }
root=${DESTDIR%/}
live=; [ -n "$root" ] || live=1
booted=; [ -z "$live" ] || [ ! -d /run/systemd/system ] || booted=1
manifest=$VENVDIR/installed-files

if [ -n "$live" ]; then
    [ "$(id -u)" -eq 0 ] || fail "uninstalling needs root"
    status=$(dpkg-query -W -f='${Status}' vpnd 2>/dev/null || true)
    if [ "$PURGE" = 1 ] && [ "$status" = "install ok installed" ]; then
        fail "the Debian package vpnd uses /var/lib/vpnd; apt purge vpnd removes it"
    fi
fi
if [ -f "$root$manifest" ]; then
    if [ -n "$live" ] && owner=$(dpkg-query -S "$manifest" 2>/dev/null); then
        fail "$VENVDIR belongs to the Debian package ${owner%%:*}; remove it with apt remove"
    fi
    list=$(cat "$root$manifest")
    if [ -n "$booted" ]; then
        systemctl disable --now vpnd.service 2>/dev/null || true
    elif [ -n "$live" ] && command -v systemctl >/dev/null; then
        systemctl disable vpnd.service 2>/dev/null || true
    fi
    while read -r kind path; do
        case $kind in
            f) rm -f "$root$path" ;;
            t) rm -rf "$root$path" ;;
        esac
    done <<< "$list"
    # Deepest first; a directory someone else has put files in stays.
    { grep '^d ' <<< "$list" || true; } | sort -r | while read -r _ path; do
        rmdir --ignore-fail-on-non-empty "$root$path"
    done
    say "removed what $manifest listed"
    if [ -n "$booted" ]; then
        systemctl daemon-reload
    fi
    if [ -n "$live" ] && [ -S /run/dbus/system_bus_socket ] && command -v dbus-send >/dev/null; then
        dbus-send --system --print-reply=literal --dest=org.freedesktop.DBus / \
            org.freedesktop.DBus.ReloadConfig >/dev/null
    fi
else
    say "nothing installed under $VENVDIR (no $manifest)"
fi
if [ "$PURGE" = 1 ]; then
    rm -rf "$root/var/lib/vpnd"
    # Made empty by systemd (ConfigurationDirectory=); the admin's files stay.
    if [ -d "$root/etc/vpnd" ]; then
        rmdir --ignore-fail-on-non-empty "$root/etc/vpnd"
    fi
    say "removed /var/lib/vpnd (servers, tokens and keys)"
elif [ -d "$root/var/lib/vpnd" ]; then
    say "kept /var/lib/vpnd (servers, tokens and keys); PURGE=1 removes it"
fi
endef

# The Debian package from a copy of the checkout (tracked files and new ones
# git does not ignore), so the build never touches the work tree.
define VPND_DEB
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/vpnd"
if git -C "$SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$SRC" ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' file; do
            [ ! -e "$SRC/$file" ] || printf '%s\0' "$file"
        done | tar -C "$SRC" --null -T - -cf - | tar -C "$work/vpnd" -xf -
else
    tar -C "$SRC" --exclude='.venv*' --exclude=./build --exclude=__pycache__ \
        --exclude='.*_cache' --exclude=.hypothesis -cf - . | tar -C "$work/vpnd" -xf -
fi
# Nothing of this make (its variables, through MAKEFLAGS) reaches the
# package's own `make install`.
(cd "$work/vpnd" && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
    dpkg-buildpackage --build=binary --no-sign)
mkdir -p "$DEB_OUT"
for deb in "$work"/vpnd_*.deb; do
    mv "$deb" "$DEB_OUT/"
    printf 'deb: %s\n' "$DEB_OUT/$(basename "$deb")"
done
endef

VPND_INSTALL_ENV = SRC='$(CURDIR)' DESTDIR='$(DESTDIR)' PREFIX='$(PREFIX)' BINDIR='$(BINDIR)' \
	VENVDIR='$(VENVDIR)' DOCDIR='$(DOCDIR)' SYSTEMDUNITDIR='$(SYSTEMDUNITDIR)' \
	SYSTEMDUSERUNITDIR='$(SYSTEMDUSERUNITDIR)' XDGAUTOSTARTDIR='$(XDGAUTOSTARTDIR)' \
	MANDIR='$(MANDIR)' BASHCOMPLETIONDIR='$(BASHCOMPLETIONDIR)' \
	ZSHCOMPLETIONDIR='$(ZSHCOMPLETIONDIR)' \
	SYSUSERSDIR='$(SYSUSERSDIR)' DBUSSERVICEDIR='$(DBUSSERVICEDIR)' \
	DBUSINTERFACEDIR='$(DBUSINTERFACEDIR)' DBUSPOLICYDIR='$(DBUSPOLICYDIR)' \
	POLKITACTIONDIR='$(POLKITACTIONDIR)' INSTALL_PYTHON='$(INSTALL_PYTHON)' \
	ENABLE='$(ENABLE)' PURGE='$(PURGE)'

.PHONY: install uninstall deb

# The scripts reach the shell unexpanded by make ($(value ...)), through the
# environment.
install: export VPND_LOCK_SUBSET_PY = $(value VPND_LOCK_SUBSET)
install: export VPND_INSTALL_SH = $(value VPND_INSTALL)
install:
	@$(VPND_INSTALL_ENV) VPND_LOCK_SUBSET="$$VPND_LOCK_SUBSET_PY" bash -c "$$VPND_INSTALL_SH"

uninstall: export VPND_UNINSTALL_SH = $(value VPND_UNINSTALL)
uninstall:
	@$(VPND_INSTALL_ENV) bash -c "$$VPND_UNINSTALL_SH"

deb: export VPND_DEB_SH = $(value VPND_DEB)
deb:
	@SRC='$(CURDIR)' DEB_OUT='$(DEB_OUT)' bash -c "$$VPND_DEB_SH"
