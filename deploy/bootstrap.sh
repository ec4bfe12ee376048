#!/usr/bin/env bash
# Set up softcart-sync for development on a fresh Debian host, from the repository's root: the demo
# and the tests. (To install it as a service, without test servers or dev tools: deploy/install.sh.)
#   - system packages, only those missing: MariaDB and PostgreSQL servers (the demo and the tests
#     start private instances of them, never the system's), Python's venv module, openssl for the
#     TLS tests, a C compiler and Python's headers for the compiled binlog row decoder;
#   - a virtual environment in .venv with softcart-sync and its development tools, and promtool
#     (to check the alert rules) taken out of Debian's prometheus package into .venv/bin: the
#     package itself is not installed (it would start a Prometheus server on :9090);
#   - as root: a root filesystem with MySQL 9.7 (Debian sid's, built once with mmdebstrap into
#     /var/cache/softcart-sync/mysql-root, ~480 MB: deploy/mysql-root.sh), from which the tests and
#     `softcart-sync demo --source mysql` start private MySQL servers.
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
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # the TLS tests make a throwaway CA
command -v cc >/dev/null 2>&1 || need+=(gcc)  # the compiled binlog row decoder (transform/_rowcodec.c)
python=${PYTHON:-python3}
"$python" -c "import ensurepip, venv" >/dev/null 2>&1 || need+=(python3-venv)
"$python" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
  || need+=(python3-dev)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
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
if [ ! -x .venv/bin/promtool ] && ! command -v promtool >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q prometheus >/dev/null 2>&1) \
    || { $sudo apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null && (cd "$tmp" && apt-get download -q prometheus >/dev/null); }
  dpkg -x "$tmp"/prometheus_*.deb "$tmp/x" && cp "$tmp/x/usr/bin/promtool" .venv/bin/promtool
  rm -rf "$tmp"
fi
if [ "$(id -u)" -eq 0 ]; then
  deploy/mysql-root.sh >/dev/null
else
  echo "bootstrap.sh: not root: the tests on MySQL need deploy/mysql-root.sh run as root once" >&2
fi
.venv/bin/python -c "import transform._rowcodec" || {
  echo "bootstrap.sh: the compiled row decoder (transform/_rowcodec.c) did not build; see: .venv/bin/python -m pip" \
       "install -v -e ." >&2; exit 1; }
echo "ready: .venv/bin/softcart-sync --help"
