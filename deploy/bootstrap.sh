#!/usr/bin/env bash
# Set up softcart-sync on a fresh Debian host, from the repository's root:
#   - system packages, only those missing: MariaDB and PostgreSQL servers (for the demo and the
#     tests, which start private instances of them), Python's venv module;
#   - for the tests, promtool (Debian's prometheus package) to check the alert rules, and openssl;
#   - a virtual environment in .venv with softcart-sync and its development tools.
# Safe to run again. Usage: deploy/bootstrap.sh [--no-test-tools]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/mariadbd ] || command -v mariadbd >/dev/null 2>&1 || need+=(mariadb-server)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need+=(postgresql)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need+=(python3-venv)
if [ "${1:-}" != "--no-test-tools" ]; then
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)  # the TLS tests make a throwaway CA
fi
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "softcart-sync needs Python 3.11 or newer (found $("$python" --version)); set PYTHON=..." >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
echo "ready: .venv/bin/softcart-sync --help"
