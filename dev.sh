#!/usr/bin/env bash
# The project's two everyday commands, usable on a fresh Debian 12 machine:
#   ./dev.sh serve        run a development server (localhost, generated secret, files in ./var)
#   ./dev.sh test         run the whole test suite (lint, types, every test layer)
# and a few more for development:
#   ./dev.sh test-fast    lint + types + the tests not marked slow, newest Twisted only
#   ./dev.sh deb          build the Debian package into ./dist
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=${HMACFS_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

# Debian packages the tests need: the Debian-packages test run, the real XMPP servers and
# clients of the interop matrix, a real systemd in a container, the fault tests (a wall
# clock that steps, an ext4 image that turns read-only), and the .deb build.
SYSTEM_PACKAGES=(curl python3-venv python3-pip
  python3-twisted python3-openssl python3-service-identity python3-sdnotify
  python3-prometheus-client python3-pytest python3-boto3
  systemd-container debootstrap zstd groff-base man-db faketime e2fsprogs)
mapfile -t INTEROP_PACKAGES < <(grep -v '^\s*#' tests/interop/packages.txt | grep -v '^\s*$')
# A one-node Ceph cluster (its S3 gateway) and HAProxy for the object store and several-node tests.
mapfile -t OBJECTSTORE_PACKAGES < <(grep -v '^\s*#' tests/objectstore/packages.txt | grep -v '^\s*$')
# Debian's Chromium (and Prosody) for the browser tests.
mapfile -t BROWSER_PACKAGES < <(grep -v '^\s*#' tests/browser/packages.txt | grep -v '^\s*$')

# tus-js-client for the resumable upload interop tests, pinned by its lock file.
TUS_DIR=tests/interop/tus
# Converse.js and playwright-core for the browser tests, pinned by their lock file; Playwright
# drives Debian's chromium, so it must not download a browser of its own.
BROWSER_DIR=tests/browser

# What building the .deb needs (Debian's own tools only; no pip during the build).
DEB_BUILD_PACKAGES=(debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
  lintian)

say() { printf '==> %s\n' "$*" >&2; }

ensure_system() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    say "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})"
    return 1
  fi
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
  fi
  if [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
    say "installing hmac-file-server and test tools into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    touch "$VENV/.installed"
  fi
}

ensure_tus_client() {
  command -v node >/dev/null || ensure_system nodejs npm
  command -v npm >/dev/null || ensure_system npm
  if [ ! -d "$TUS_DIR/node_modules" ] || [ "$TUS_DIR/package-lock.json" -nt "$TUS_DIR/node_modules" ]; then
    say "installing tus-js-client into $TUS_DIR/node_modules (node $(node --version))"
    npm ci --prefix "$TUS_DIR" --no-audit --no-fund --loglevel=error
    touch "$TUS_DIR/node_modules"
  fi
}

ensure_browser_client() {
  command -v node >/dev/null || ensure_system nodejs npm
  command -v npm >/dev/null || ensure_system npm
  if [ ! -d "$BROWSER_DIR/node_modules" ] || [ "$BROWSER_DIR/package-lock.json" -nt "$BROWSER_DIR/node_modules" ]; then
    say "installing Converse.js and playwright-core into $BROWSER_DIR/node_modules (node $(node --version))"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix "$BROWSER_DIR" --no-audit --no-fund --loglevel=error
    touch "$BROWSER_DIR/node_modules"
  fi
}

# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
run_pytest() {
  local rc=0
  "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then
    say "pytest collected no tests: failing"
    return 1
  fi
  return "$rc"
}

lint() {
  say "ruff"
  "$VENV/bin/ruff" check hmacfs tests bench
  say "mypy"
  "$VENV/bin/mypy"
}

cmd=${1:-help}
shift || true
case "$cmd" in
  serve)
    ensure_system curl python3-venv
    ensure_venv
    exec "$VENV/bin/python" -m hmacfs dev "$@"
    ;;
  test)
    ensure_system "${SYSTEM_PACKAGES[@]}" "${INTEROP_PACKAGES[@]}" "${BROWSER_PACKAGES[@]}" \
      "${OBJECTSTORE_PACKAGES[@]}" "${DEB_BUILD_PACKAGES[@]}"
    ensure_venv
    ensure_tus_client
    ensure_browser_client
    lint
    say "pytest: the whole suite on the newest Twisted ($("$VENV/bin/python" -c 'import twisted; print(twisted.__version__)'))"
    run_pytest "$VENV/bin/python" -m pytest "$@"
    say "pytest: protocol, end-to-end and object store tests on Debian's python3-twisted ($(/usr/bin/python3 -c 'import twisted; print(twisted.__version__)'))"
    PYTHONPATH=$ROOT run_pytest /usr/bin/python3 -m pytest -p no:cacheprovider tests/protocol tests/e2e \
      tests/objectstore "$@"
    ;;
  test-fast)
    ensure_venv
    lint
    run_pytest "$VENV/bin/python" -m pytest -m "not slow and not system and not interop" "$@"
    ;;
  deb)
    ensure_system "${DEB_BUILD_PACKAGES[@]}"
    exec "$ROOT/packaging/build-deb" "$@"
    ;;
  *)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    [ "$cmd" = help ] || exit 2
    ;;
esac
