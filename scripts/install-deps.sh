#!/usr/bin/env bash
# Installs what pgfanout's demo, tests and benchmarks need on a fresh Debian machine, and says
# what it does. Safe to run again: it installs only what is missing.
#   - PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_recvlogical): package postgresql
#   - openssl (the tests make a throw-away CA for TLS): package openssl
#   - kill(1) for the crash tests: package procps
set -euo pipefail

need=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
if ! command -v pg_recvlogical >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_recvlogical >/dev/null 2>&1; then
  need+=(postgresql-client)
fi
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The crash tests signal processes with kill(1) (SIGKILL, SIGSTOP, SIGCONT, SIGTERM).
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || need+=(procps)

if [ ${#need[@]} -eq 0 ]; then
  echo "install-deps: everything is installed (PostgreSQL $(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1), openssl)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${need[*]}; run this script as root (or: sudo apt-get install ${need[*]})" >&2
  exit 1
fi
echo "install-deps: installing ${need[*]} from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The package's own cluster is not needed: pgfanout starts private servers in temp directories.
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
if command -v pg_ctlcluster >/dev/null 2>&1; then
  for c in $(pg_lsclusters -h 2>/dev/null | awk '{print $1"/"$2}'); do
    pg_ctlcluster "${c%/*}" "${c#*/}" stop 2>/dev/null || true
  done
fi
echo "install-deps: done"
