#!/usr/bin/env bash
# Installs what bench/compare.py needs, from Debian's packages (run as root):
#   nginx   the reference server (its dav module takes the PUTs; Debian builds it in)
#   wrk     the HTTP load generator for the many-small-requests workloads (Lua scripts)
#   curl    single-connection 1 GiB transfers; coreutils' dd is already there
#   openssl the self-signed certificate of the https rows (both servers serve it)
# The project's Python environment (.venv, Twisted and hmacfs) is made by ./dev.sh.
#
# nginx is only ever started by compare.py itself, with a private config on a loopback port:
# the Debian service must not start (and listen on port 80) during the install.
set -euo pipefail

PACKAGES=(nginx wrk curl openssl coreutils procps)

say() { printf '==> %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  say "run as root (apt-get install ${PACKAGES[*]})"
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if [ ${#missing[@]} -gt 0 ]; then
  # Keep maintainer scripts from starting nginx.service: a policy-rc.d that refuses every
  # start, only for the time of this install, and only if the machine has none of its own.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  cleanup() { if [ "$made_policy" -eq 1 ]; then rm -f "$policy"; fi; }
  trap cleanup EXIT
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Where systemd runs, make sure the packaged service is not left running on port 80.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now nginx.service >/dev/null 2>&1 || true
fi

nginx -V 2>&1 | grep -q -- '--with-http_dav_module' || {
  say "this nginx has no dav module (dav_methods PUT): install Debian's 'nginx' package"
  exit 1
}
nginx -V 2>&1 | grep -q -- '--with-http_ssl_module' || {
  say "this nginx has no ssl module (the https rows): install Debian's 'nginx' package"
  exit 1
}
say "nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //'); wrk: $(command -v wrk)"
