#!/usr/bin/env bash
# Installs what pgfanout's demo, tests and benchmarks need on a fresh Debian machine, and says
# what it does. Safe to run again: it installs only what is missing.
#   - PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_recvlogical): package postgresql
#   - openssl (the tests make a throw-away CA for TLS): package openssl
#   - kill(1) for the crash tests: package procps
#   - ClickHouse (the ClickHouse destination's tests, demo and benchmarks start private servers,
#     testkit/src/localch.rs): packages clickhouse-server clickhouse-client
#   - Chromium (tests/admin.rs loads the status page headless): package chromium
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
# tests/admin.rs renders the admin endpoint's status page in headless Chromium.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# A newer release's single `clickhouse` binary (or PGFANOUT_CLICKHOUSE_BIN) serves as both.
if [ -z "${PGFANOUT_CLICKHOUSE_BIN:-}" ] && ! command -v clickhouse >/dev/null 2>&1; then
  command -v clickhouse-server >/dev/null 2>&1 || [ -x /usr/sbin/clickhouse-server ] || need+=(clickhouse-server)
  command -v clickhouse-client >/dev/null 2>&1 || need+=(clickhouse-client)
fi

if [ ${#need[@]} -eq 0 ]; then
  ch=$( (clickhouse-client --version || clickhouse client --version) 2>/dev/null | grep -o 'version [0-9.]*[0-9]' | head -1 || true)
  echo "install-deps: everything is installed (PostgreSQL $(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1), ClickHouse ${ch#version }, openssl, chromium)"
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
# Nor is ClickHouse's service, which the package may have started: stop it (only the package's
# server, which runs as the clickhouse user; private servers of running tests are left alone).
if [[ " ${need[*]} " == *" clickhouse-server "* ]]; then
  if [ -d /run/systemd/system ]; then
    systemctl stop clickhouse-server 2>/dev/null || true
  else
    start-stop-daemon --stop --quiet --oknodo --retry=TERM/30/KILL/5 --user clickhouse \
      --exec /usr/sbin/clickhouse-server 2>/dev/null || true
  fi
fi
echo "install-deps: done"
