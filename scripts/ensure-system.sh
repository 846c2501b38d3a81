#!/usr/bin/env bash
# Installs the machine's packages cutover's lab, tests and benchmarks need, when missing:
# PostgreSQL 15 with pglogical, PgBouncer (and pgcopydb for the benchmarks). Idempotent and quiet
# when everything is there. Uses sudo when not root.
set -euo pipefail

packages=(postgresql-15 postgresql-15-pglogical postgresql-contrib pgbouncer)
[ "${WITH_BENCH:-0}" = 1 ] && packages+=(pgcopydb)

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
    echo "cutover needs: ${missing[*]}; install them with your package manager" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install as root: apt-get install ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
fi
echo "installing ${missing[*]} ..."
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian package starts a cluster of its own on 5432; the lab does not need it.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q '^15 *main'; then
    $sudo pg_ctlcluster 15 main stop 2>/dev/null || true
fi
# Nor the PgBouncer of the package: the tests start their own.
if command -v service >/dev/null; then
    $sudo service pgbouncer stop >/dev/null 2>&1 || true
fi
echo "installed ${missing[*]}"
