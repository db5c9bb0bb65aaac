#!/usr/bin/env bash
# Installs (or removes) the substation edge gateway on Debian bookworm / Raspberry Pi OS (aarch64, x86_64).
#
#   deploy/install.sh [--prefix DIR] [--wheelhouse DIR] [--python PATH] [--no-systemd] [--start]
#   deploy/install.sh --uninstall [--purge] [--prefix DIR] [--no-systemd]
#
# What goes where (the same paths as deploy/systemd/ and docs/deployment.md):
#   /opt/gateway/venv                     the gateway and its Python dependencies (python -m venv + pip)
#   /opt/gateway/docs, /opt/gateway/{install.sh,uninstall}   the docs the unit links to; this script, to uninstall
#   /usr/local/bin/gateway                a link to the venv's `gateway` command
#   /etc/systemd/system/gateway.service   the unit, and gateway-firstboot.service (the provisioning oneshot);
#                                         /usr/lib/sysusers.d/gateway.conf, /usr/lib/tmpfiles.d/gateway.conf
#   /etc/gateway/gateway.toml             the config: a default one is written ONLY when there is none
#   /var/lib/gateway                      data (store, panel users and certificate)
#
# Idempotent: running it again upgrades the gateway if the source or wheelhouse has a newer version and changes
# nothing else; the config and the data are never touched once they exist. The service is enabled but never
# started unless --start is given.
#
# --wheelhouse DIR installs offline (pip --no-index --find-links DIR; no pip config, no index): DIR comes from
# `make wheelhouse PLATFORM=manylinux2014_aarch64` (or _x86_64) on a machine with network. Without it, pip
# installs the gateway from this source tree and its dependencies from the configured index.
#
# --prefix DIR installs everything under DIR, and every path (venv, unit, config's data_dir) points there: for a
# trial run or a test, unprivileged. It is not a DESTDIR for building images (a venv cannot be moved): to build
# an image, run this script inside the image's chroot with --no-systemd. With --prefix, nothing outside DIR is
# touched: no user is created, no systemctl, no chown.
#
# --uninstall removes the venv, /opt/gateway, the unit files and the /usr/local/bin link (after `systemctl
# disable --now gateway`), and keeps /etc/gateway and /var/lib/gateway unless --purge is given. The system user
# `gateway` is kept either way (files elsewhere may still belong to it; `userdel gateway` removes it).
set -euo pipefail

usage() {
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    echo "Run with --help for this text; see the comments at the top of $0 for details."
}

die() {
    echo "error: $*" >&2
    exit 1
}

say() {
    echo "==> $*"
}

# --- options -----------------------------------------------------------------------------------------------------
PREFIX=/
WHEELHOUSE=""
PYTHON=""
SYSTEMD=1
START=0
UNINSTALL=0
PURGE=0

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --wheelhouse) [ $# -ge 2 ] || die "--wheelhouse needs a directory"; WHEELHOUSE=$2; shift 2 ;;
        --wheelhouse=*) WHEELHOUSE=${1#*=}; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs a path"; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#*=}; shift ;;
        --no-systemd) SYSTEMD=0; shift ;;
        --start) START=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge goes with --uninstall"
[ "$START" = 0 ] || [ "$SYSTEMD" = 1 ] || die "--start needs systemd (drop --no-systemd)"

# The source tree (or unpacked release) this script belongs to: deploy/systemd/ and docs/ come from there.
SRC=$(cd "$(dirname "$0")/.." && pwd)

# --- paths -------------------------------------------------------------------------------------------------------
if [ "$PREFIX" = / ]; then
    ROOT=""
    [ "$(id -u)" = 0 ] || die "installing into / needs root (sudo $0 ...), or try it out with --prefix DIR"
else
    mkdir -p "$PREFIX"
    ROOT=$(cd "$PREFIX" && pwd)   # absolute, no trailing slash
    [ "$ROOT" != / ] || ROOT=""
fi
OPT=$ROOT/opt/gateway
VENV=$OPT/venv
ETC=$ROOT/etc/gateway
CONFIG=$ETC/gateway.toml
DATA=$ROOT/var/lib/gateway
UNIT=$ROOT/etc/systemd/system/gateway.service
FIRSTBOOT_UNIT=$ROOT/etc/systemd/system/gateway-firstboot.service   # pulled in by gateway.service (Wants=)
SYSUSERS=$ROOT/usr/lib/sysusers.d/gateway.conf
TMPFILES=$ROOT/usr/lib/tmpfiles.d/gateway.conf
LINK=$ROOT/usr/local/bin/gateway

# The live system: prefix /, run as root. Only then are users created, files chowned and systemd told.
LIVE=0
[ -n "$ROOT" ] || LIVE=1
# systemd is running (not merely installed, as in a container or a chroot)
SYSTEMD_UP=0
if [ "$LIVE" = 1 ] && [ "$SYSTEMD" = 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    SYSTEMD_UP=1
fi

# --- uninstall ---------------------------------------------------------------------------------------------------
if [ "$UNINSTALL" = 1 ]; then
    if [ "$SYSTEMD_UP" = 1 ]; then
        say "stopping and disabling gateway.service"
        systemctl disable --now gateway.service 2>/dev/null || true
    fi
    # the /usr/local/bin link only if it is ours
    if [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$VENV/bin/gateway" ]; then
        rm -f "$LINK"
    fi
    say "removing $OPT and the unit files"
    rm -rf "$OPT"
    rm -f "$UNIT" "$FIRSTBOOT_UNIT" "$SYSUSERS" "$TMPFILES"
    if [ "$SYSTEMD_UP" = 1 ]; then
        systemctl daemon-reload
    fi
    if [ "$PURGE" = 1 ]; then
        say "purging the config ($ETC) and the data ($DATA)"
        rm -rf "$ETC" "$DATA"
    else
        echo "kept the config ($ETC) and the data ($DATA); remove them with --uninstall --purge"
    fi
    echo "the system user 'gateway' is kept (userdel gateway removes it)"
    exit 0
fi

# --- install: checks ---------------------------------------------------------------------------------------------
for f in gateway.service gateway-firstboot.service gateway.sysusers.conf gateway.tmpfiles.conf; do
    [ -f "$SRC/deploy/systemd/$f" ] || die "$SRC/deploy/systemd/$f is missing: run this script from a source tree"
done

if [ -z "$PYTHON" ]; then
    # Debian's own interpreter first (bookworm: 3.11): one under /root or /home (pyenv, ...) is hidden from the
    # service by ProtectHome=yes
    for p in /usr/bin/python3.11 /usr/bin/python3 "$(command -v python3.11 || true)" "$(command -v python3 || true)"; do
        if [ -n "$p" ] && [ -x "$p" ]; then PYTHON=$p; break; fi
    done
    [ -n "$PYTHON" ] || die "no python3 found: apt-get install python3 python3-venv (or give --python PATH)"
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is older than Python 3.11 (Debian bookworm's python3 is 3.11; or give --python PATH)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
    || die "$PYTHON cannot make a venv: apt-get install python3-venv"
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$LIVE" = 1 ]; then
    # the venv links to this interpreter: the service (user gateway, ProtectHome=yes) must be able to run it
    case "$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.base_prefix))')/" in
        /root/* | /home/* | /run/user/*)
            die "$PYTHON lives under /root, /home or /run/user, which the service cannot see (ProtectHome=yes):" \
                "use Debian's /usr/bin/python3.11 (apt-get install python3 python3-venv)" ;;
    esac
fi

if [ -n "$WHEELHOUSE" ]; then
    [ -d "$WHEELHOUSE" ] || die "wheelhouse $WHEELHOUSE is not a directory"
    WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
    ls "$WHEELHOUSE"/substation_gateway-*.whl >/dev/null 2>&1 \
        || die "no substation_gateway wheel in $WHEELHOUSE (build it with: make wheelhouse PLATFORM=...)"
    # a wheelhouse carried on a USB stick: catch a truncated or corrupted copy before pip does
    if [ -f "$WHEELHOUSE/SHA256SUMS" ]; then
        say "checking $WHEELHOUSE/SHA256SUMS"
        (cd "$WHEELHOUSE" && sha256sum --check --quiet SHA256SUMS) || die "the wheelhouse is damaged: copy it again"
    fi
fi

# --- unit files, and the system user (live system only) -------------------------------------------------------
install_conf() {  # install_conf SOURCE DEST: copy a unit file, with its paths moved under the prefix
    mkdir -p "$(dirname "$2")"
    local tmp
    tmp=$(mktemp "$2.XXXXXX")
    if [ -n "$ROOT" ]; then
        sed -e "s#/opt/gateway#$OPT#g" -e "s#/etc/gateway#$ETC#g" -e "s#/var/lib/gateway#$DATA#g" "$1" >"$tmp"
    else
        cat "$1" >"$tmp"
    fi
    chmod 0644 "$tmp"
    if cmp -s "$tmp" "$2"; then
        rm -f "$tmp"   # unchanged: keep the file (and its mtime) as it is
    else
        mv -f "$tmp" "$2"
    fi
}

say "installing the unit files"
install_conf "$SRC/deploy/systemd/gateway.sysusers.conf" "$SYSUSERS"
install_conf "$SRC/deploy/systemd/gateway.tmpfiles.conf" "$TMPFILES"
install_conf "$SRC/deploy/systemd/gateway.service" "$UNIT"
install_conf "$SRC/deploy/systemd/gateway-firstboot.service" "$FIRSTBOOT_UNIT"   # docs/field-guide.md#first-boot

OWNED=0   # whether the gateway user exists, so that files can be handed to it
if [ "$LIVE" = 1 ]; then
    if command -v systemd-sysusers >/dev/null; then
        systemd-sysusers "$SYSUSERS"   # works without a running systemd (containers, chroots)
    elif ! getent passwd gateway >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/gateway --no-create-home \
            --shell /usr/sbin/nologin --comment "Substation edge gateway" gateway
        usermod --append --groups dialout gateway
    fi
    OWNED=1
fi

# --- directories: as gateway.tmpfiles.conf says (systemd-tmpfiles applies the same on a live system) ------------
mkdir -p "$ETC" "$DATA"
chmod 0750 "$ETC" "$DATA"
if [ "$OWNED" = 1 ]; then
    chown root:gateway "$ETC"
    chown gateway:gateway "$DATA"
fi

# --- the venv and the gateway -----------------------------------------------------------------------------------
# Keep an existing venv made with the same Python version; otherwise make it afresh.
if [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' \
        2>/dev/null || true)" = "$PYVER" ]; then
    say "reusing $VENV (Python $PYVER)"
    FRESH=0
else
    say "creating $VENV with $PYTHON (Python $PYVER)"
    rm -rf "$VENV"
    mkdir -p "$OPT"
    "$PYTHON" -m venv "$VENV"
    FRESH=1
fi

if [ -n "$WHEELHOUSE" ]; then
    say "installing the gateway offline from $WHEELHOUSE"
    # no index, no pip.conf, no PIP_* variables: only the wheelhouse
    offline_pip() {
        PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip --isolated install --quiet --no-index \
            --only-binary=:all: --find-links "$WHEELHOUSE" "$@"
    }
    offline_pip --upgrade substation-gateway \
        || die "pip could not install from $WHEELHOUSE: was it built for this machine's platform and Python $PYVER? \
(make wheelhouse PLATFORM=manylinux2014_$(uname -m) PYVER=${PYVER/./})"
    # pip sees "0.1.0 is installed" and keeps it even when the wheelhouse's 0.1.0 is a newer build: the hash of the
    # wheel installed last (in $OPT/.wheel.sha256) tells, and a different one is reinstalled (the gateway only)
    wheel=$(find "$WHEELHOUSE" -maxdepth 1 -name 'substation_gateway-*.whl' | sort -V | tail -n 1)
    sum=$(sha256sum "$wheel" | cut -d' ' -f1)
    if [ "$FRESH" = 0 ] && [ "$(cat "$OPT/.wheel.sha256" 2>/dev/null || true)" != "$sum" ]; then
        say "the wheelhouse has another build of $(basename "$wheel"): reinstalling it"
        offline_pip --force-reinstall --no-deps "$wheel" || die "pip could not reinstall $wheel"
    fi
    [ "$(cat "$OPT/.wheel.sha256" 2>/dev/null || true)" = "$sum" ] || echo "$sum" >"$OPT/.wheel.sha256"
else
    say "installing the gateway from $SRC (dependencies from the package index)"
    # from a clean copy of the tree: setuptools builds in place, and a stale build/ could leak into the install
    build=$(mktemp -d)
    tar -C "$SRC" -c --exclude=./.venv --exclude=./.git --exclude=./wheelhouse --exclude=./build --exclude=./dist \
        --exclude='*.egg-info' --exclude='*.duckdb*' --exclude=__pycache__ . | tar -x -C "$build"
    if ! "$VENV/bin/python" -m pip install --quiet --upgrade "$build"; then
        rm -rf "$build"
        die "pip could not install the gateway (no network? use --wheelhouse DIR, see docs/deployment.md)"
    fi
    rm -rf "$build"
    rm -f "$OPT/.wheel.sha256"   # what is installed now is no wheelhouse's build
fi
VERSION=$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("substation-gateway"))')

# the docs the unit's Documentation= points to, and this script, so that it can uninstall after the source is gone
if [ -d "$SRC/docs" ]; then
    mkdir -p "$OPT/docs"
    cp -p "$SRC"/docs/*.md "$OPT/docs/"
fi
for f in install.sh uninstall; do
    if [ -f "$SRC/deploy/$f" ] && ! cmp -s "$SRC/deploy/$f" "$OPT/$f"; then
        install -m 0755 "$SRC/deploy/$f" "$OPT/$f"
    fi
done
mkdir -p "$(dirname "$LINK")"
[ "$(readlink "$LINK" 2>/dev/null || true)" = "$VENV/bin/gateway" ] || ln -sfn "$VENV/bin/gateway" "$LINK"

# --- the config: written once, never overwritten -----------------------------------------------------------------
if [ -e "$CONFIG" ]; then
    say "keeping the existing config $CONFIG"
else
    say "writing a default config to $CONFIG"
    tmp=$(mktemp "$CONFIG.XXXXXX")
    cat >"$tmp" <<EOF
# Substation edge gateway: site configuration (every key: $OPT/docs/config.md).
# Written by deploy/install.sh on $(date -u +%Y-%m-%d); the installer never changes this file again.
# After editing: gateway check-config $CONFIG && systemctl restart gateway
version = 1

[gateway]
id = "$(hostname)"   # unique per site: sent with every batch
data_dir = "$DATA"   # the only path the service may write (ReadWritePaths=)
log_level = "INFO"

[panel]
# the operator panel, HTTPS with a self-signed certificate made on first start (gateway panel-cert -c ... prints
# its fingerprint); first admin: gateway user setup-token -c $CONFIG
host = "0.0.0.0"
port = 8080
tls = true

# Upload to the cloud receiver (docs/sync.md):
# [[sinks]]
# name = "cloud"
# url = "https://ingest.example.net/v1/batches"
# token = "..."

# One [[links]] table per communication line, each with its devices (docs/config.md, docs/protocols.md):
# [[links]]
# name = "bay-switch"
# protocol = "modbus_tcp"
# host = "10.0.0.20"
#
# [[links.devices]]
# name = "feeder1"
# unit_id = 1
# points = [
#   { name = "Ia", kind = "input", address = 0, type = "float32", unit = "A" },
# ]
EOF
    chmod 0640 "$tmp"
    [ "$OWNED" = 0 ] || chown root:gateway "$tmp"
    mv "$tmp" "$CONFIG"
fi

if ! "$VENV/bin/gateway" check-config "$CONFIG" >/dev/null; then
    echo "warning: $CONFIG has errors (above): fix them before starting the gateway" >&2
fi

# --- systemd (live system only) ----------------------------------------------------------------------------------
if [ "$SYSTEMD_UP" = 1 ]; then
    say "systemd: tmpfiles, daemon-reload, enable gateway.service"
    systemd-tmpfiles --create "$TMPFILES"
    systemctl daemon-reload
    systemctl enable gateway.service
    if [ "$START" = 1 ]; then
        say "starting gateway.service"
        systemctl restart gateway.service
    elif systemctl is-active --quiet gateway.service; then
        echo "note: gateway.service is running the previous version: systemctl restart gateway"
    fi
elif [ "$LIVE" = 1 ] && [ "$SYSTEMD" = 1 ]; then
    echo "note: systemd is not running here: gateway.service was installed but not enabled"
fi

# --- next steps --------------------------------------------------------------------------------------------------
if [ "$LIVE" = 1 ]; then
    AS="sudo -u gateway "   # as the service's user: files it makes (panel users, certificate) stay the service's
    SUDO="sudo "
    RUN="sudo systemctl start gateway && systemctl status gateway   (logs: journalctl -u gateway -f)"
else
    AS=""
    SUDO=""
    RUN="$VENV/bin/gateway run -c $CONFIG   (in the foreground; Ctrl-C stops it)"
fi
cat <<EOF

Installed substation-gateway $VERSION in $VENV.
Next steps:
  1. edit the config:     ${SUDO}editor $CONFIG      (docs: $OPT/docs/config.md)
  2. check it:            ${AS}$VENV/bin/gateway check-config $CONFIG
  3. start the gateway:   $RUN
  4. panel's first admin: ${AS}$VENV/bin/gateway user setup-token -c $CONFIG
     (it prints the panel's /setup address); the certificate's fingerprint, to compare in the browser:
                          ${AS}$VENV/bin/gateway panel-cert -c $CONFIG
Uninstall: ${SUDO}$OPT/uninstall   (keeps $ETC and $DATA; --purge removes them)
EOF
