#!/usr/bin/env bash
# Sets up everything `make run` and `make test` need on a fresh Debian 12 host:
# system packages (only those missing), then the virtualenv at .venv with the
# project installed editable plus its test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"

# Debian packages the build or the tests need, added only when missing.
want=(pkg-config libsystemd-dev gcc)
if ! "$PY" -c 'import ensurepip' >/dev/null 2>&1; then want+=(python3-venv); fi
if [ ! -f "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; then
  want+=(python3-dev)
fi
# Extra packages requested by a caller (for example the JVM for integration tests).
# shellcheck disable=SC2206
want+=(${EXTRA_APT:-})
# Packages whose services must not start when installed (the bench runs their binaries itself,
# on loopback ports of its own): NO_START="prometheus ...".
# shellcheck disable=SC2206
no_start=(${NO_START:-})
want+=("${no_start[@]}")
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing Debian packages: ${missing[*]} (run as root or install them)" >&2
    exit 1
  fi
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  guard=""
  if [ ${#no_start[@]} -gt 0 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    # invoke-rc.d and deb-systemd-invoke start nothing while this answers 101.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    guard=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$guard" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  # Nor at the next boot: the units of those just installed are disabled (under systemd only).
  if [ -d /run/systemd/system ]; then
    for p in "${no_start[@]}"; do
      if [[ " ${missing[*]} " == *" $p "* ]]; then systemctl disable --now "$p" >/dev/null 2>&1 || true; fi
    done
  fi
fi

stamp=.venv/.installed
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
