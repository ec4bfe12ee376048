#!/usr/bin/env bash
# Set up softcart-sync for development on a fresh Debian host, from the repository's root: the demo
# and the tests. (To install it as a service, without test servers or dev tools: deploy/install.sh.)
#   - system packages, only those missing: MariaDB and PostgreSQL servers (the demo and the tests
#     start private instances of them, never the system's), Python's venv module, promtool
#     (Debian's prometheus package) to check the alert rules, openssl for the TLS tests, a C compiler
#     and Python's headers for the compiled binlog row decoder;
#   - a virtual environment in .venv with softcart-sync and its development tools.
# Safe to run again. Usage: deploy/bootstrap.sh   (PYTHON=... picks the Python, default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then
  case "$1" in
    --no-test-tools) echo "bootstrap.sh sets up development and tests; for a production install run" \
                          "deploy/install.sh (README: Running as a systemd service)" >&2; exit 2 ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
  esac
fi

need=()
[ -x /usr/sbin/mariadbd ] || command -v mariadbd >/dev/null 2>&1 || need+=(mariadb-server)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need+=(postgresql)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # the TLS tests make a throwaway CA
command -v cc >/dev/null 2>&1 || need+=(gcc)  # the compiled binlog row decoder (transform/_rowcodec.c)
python=${PYTHON:-python3}
"$python" -c "import ensurepip, venv" >/dev/null 2>&1 || need+=(python3-venv)
"$python" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
  || need+=(python3-dev)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # Wait for another apt or unattended-upgrades instead of failing on its lock; a policy-rc.d
  # isn't ours to set, so Debian may start the servers it installs (the tests don't use them).
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${need[@]}"
fi

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "softcart-sync needs Python 3.11 or newer (found $("$python" --version)); set PYTHON=..." >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python -c "import transform._rowcodec" || {
  echo "bootstrap.sh: the compiled row decoder (transform/_rowcodec.c) did not build; see: .venv/bin/python -m pip" \
       "install -v -e ." >&2; exit 1; }
echo "ready: .venv/bin/softcart-sync --help"
