#!/usr/bin/env bash
# A root filesystem holding a real MySQL server (Debian sid's mysql-server-core: MySQL 9.7 LTS), built
# once and cached, for the tests, the demo (`softcart-sync demo --source mysql`) and the benchmarks. They
# start private servers from it with chroot (cdc/dev/localservers.py, MySQLServer), on free ports,
# as they start private MariaDB and PostgreSQL servers from the host's binaries. Debian 12 packages
# no MySQL; sid does, and mmdebstrap (taken from Debian's packages, not installed) makes the root.
#   usage: deploy/mysql-root.sh          builds it if missing (~30 s, ~480 MB), prints its path
#   env:   SOFTCART_MYSQL_ROOT           where (default /var/cache/softcart-sync/mysql-root)
# Needs root (chroot, mmdebstrap as root), perl, and the host's Debian mirror.
set -euo pipefail
R=${SOFTCART_MYSQL_ROOT:-/var/cache/softcart-sync/mysql-root}
if [ -x "$R/usr/sbin/mysqld" ]; then echo "$R"; exit 0; fi
[ "$(id -u)" -eq 0 ] || { echo "mysql-root.sh: building the MySQL root needs root (chroot)" >&2; exit 1; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
if command -v mmdebstrap >/dev/null; then
  mm=$(command -v mmdebstrap)
else
  (cd "$T" && apt-get download -q mmdebstrap >/dev/null 2>&1) \
    || { apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null && (cd "$T" && apt-get download -q mmdebstrap >/dev/null); }
  dpkg -x "$T"/mmdebstrap_*.deb "$T/x"
  mm=$T/x/usr/bin/mmdebstrap
fi
# the host's own Debian mirror (from its apt sources), suite sid
uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$uri" ] || uri=$(awk '/^deb /{for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri sid main" > "$T/sources.list"
rm -rf --one-file-system "$R.tmp"  # a build cut short: mmdebstrap wants an empty target
mkdir -p "$(dirname "$R")"
echo "building a MySQL root in $R (Debian sid's mysql-server-core; once, ~30 s)" >&2
PATH=$T/x/usr/bin:$PATH perl "$mm" --variant=minbase -q --aptopt='Acquire::Check-Valid-Until "false"' \
  --include=mysql-server-core,mysql-client --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/man/*' sid "$R.tmp" "$T/sources.list"
mkdir -p "$R.tmp/var/lib/mysql-files" "$R.tmp/run/mysqld" "$R.tmp/srv/softcart"
mv "$R.tmp" "$R"
echo "$R"
