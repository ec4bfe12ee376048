#!/usr/bin/env bash
# Install softcart-sync as a systemd service on a Debian host (as root), from this checkout or a wheel:
#
#   sudo -E deploy/install.sh [--instance NAME] [--wheel FILE]
#
#   1. Python: the system's /usr/bin/python3 (3.11 or newer; the unit's ProtectHome= hides a Python
#      under /root or /home), and Debian's python3-venv if missing (waiting for another apt's lock);
#   2. the package in its own virtual environment, /opt/softcart-sync (no test servers, no
#      development tools): /opt/softcart-sync/bin/softcart-sync; the units, SQL, alert rules and this
#      README under /opt/softcart-sync/share/softcart-sync, as the wheel carries them;
#   3. the systemd units into /etc/systemd/system (softcart-sync.service, the reconcile's .service
#      and .timer, and their @ templates), then daemon-reload;
#   4. /etc/softcart-sync (root, 0750): the settings file (softcart-sync.toml, or NAME.toml for
#      --instance NAME; 0640), written from the SOFTCART_* variables in this script's environment
#      when it does not exist yet (an existing one is kept, never overwritten), and the three
#      password files (source-password, staging-password, warehouse-password, or NAME.*-password;
#      0600) from SOFTCART_SOURCE_PASSWORD, SOFTCART_STAGING_PASSWORD, SOFTCART_WAREHOUSE_PASSWORD,
#      asked for at a terminal when not given (an existing file is kept then); an empty file means
#      no password. The settings file names the password files, so the command line run as root
#      finds them; the units hand the same files to the service as credentials.
#
# Starts nothing: README.md's next lines check, create the warehouse tables and enable the service.
# Safe to run again (an upgrade: the package and units are replaced, settings and passwords kept).
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/opt/softcart-sync
etc=/etc/softcart-sync
instance=""
wheel=""
while [ $# -gt 0 ]; do
  case "$1" in
    --instance) instance="${2:?--instance needs a name}"; shift 2 ;;
    --wheel) wheel="${2:?--wheel needs a file}"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$instance" ] && ! [[ "$instance" =~ ^[a-z0-9][a-z0-9_-]{0,30}$ ]]; then
  echo "install.sh: --instance $instance: use 1-31 lower-case letters, digits, - or _ (it names a unit and a user)" >&2
  exit 2
fi
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root (sudo -E deploy/install.sh)" >&2; exit 1; }

python=${PYTHON:-/usr/bin/python3}
case "$python" in
  /root/*|/home/*) echo "install.sh: $python is under /root or /home, which the unit's ProtectHome= hides;" \
                        "use the system's Python (PYTHON=/usr/bin/python3)" >&2; exit 1 ;;
esac
need=()
[ -x "$python" ] || need+=(python3)
"$python" -c "import ensurepip, venv" >/dev/null 2>&1 || need+=(python3-venv)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  # Wait for another apt or unattended-upgrades instead of failing on its lock.
  apt-get -o DPkg::Lock::Timeout=600 update -q
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${need[@]}"
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "install.sh: softcart-sync needs Python 3.11 or newer; $python is $("$python" --version 2>&1)" >&2; exit 1; }

echo "installing softcart-sync into $prefix"
[ -x "$prefix/bin/python" ] || "$python" -m venv "$prefix"
"$prefix/bin/python" -m pip install -q --upgrade pip
if [ -n "$wheel" ]; then
  "$prefix/bin/python" -m pip install -q --upgrade "$wheel"
else
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  "$prefix/bin/python" -m pip wheel -q --no-deps -w "$build" .
  "$prefix/bin/python" -m pip install -q "$build"/softcart_sync-*.whl  # with what it needs
  "$prefix/bin/python" -m pip install -q --force-reinstall --no-deps "$build"/softcart_sync-*.whl  # same version, new code
fi
"$prefix/bin/python" -c 'from transform import rowcodec
print("binlog row decoder:", "compiled" if rowcodec.NATIVE else "Python: the compiled one was not built (no C"
      " compiler or Python headers here; apt-get install gcc python3-dev and run install.sh again to have it)")'
share="$prefix/share/softcart-sync"
[ -f "$share/systemd/softcart-sync.service" ] || { echo "install.sh: the package carries no units in $share" >&2; exit 1; }
install -m 0644 "$share"/systemd/*.service "$share"/systemd/*.timer /etc/systemd/system/
systemctl daemon-reload

install -d -m 0750 "$etc"
name=${instance:-softcart-sync}
for side in source staging warehouse; do
  file="$etc/${instance:+$instance.}$side-password"
  var="SOFTCART_${side^^}_PASSWORD"
  if [ -n "${!var:-}" ]; then
    printf '%s' "${!var}" | install -m 0600 /dev/stdin "$file"
  elif [ ! -e "$file" ]; then
    password=""
    if [ -t 0 ]; then
      read -rsp "$side password (empty: none, or the URL's): " password; echo
    fi
    printf '%s' "$password" | install -m 0600 /dev/stdin "$file"
  fi
  export "SOFTCART_${side^^}_PASSWORD_FILE=$file"  # named in the settings file, for the CLI run as root
  unset "$var"
done
config="$etc/$name.toml"
if [ -e "$config" ]; then
  echo "keeping $config"
else
  # validates the settings too: a wrong one stops here, named
  "$prefix/bin/softcart-sync" settings --toml | install -m 0640 /dev/stdin "$config.new"
  mv "$config.new" "$config"
  echo "wrote $config"
fi
unit=${instance:+softcart-sync@$instance}
echo "installed; next: $prefix/bin/softcart-sync --config $config check, then" \
     "systemctl enable --now ${unit:-softcart-sync} softcart-sync-reconcile${instance:+@$instance}.timer"
