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
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
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
