#!/usr/bin/env bash
# Memory for one huge value: `pgfanout run` (release build) carries one row with a text value of
# BENCH_VALUE_MB MiB (default 200) from a private PostgreSQL through the change log into a
# PostgreSQL and a ClickHouse destination; prints the daemon's peak RSS (VmHWM), checks that the
# value arrived intact in both (length and md5), and fails if the peak passes the peak before
# the value + 3x the value + 32 MiB. This is tests/memory.rs (50 MiB in the test suite) at
# another size. The same run streams one 1,000,000-row transaction into both destinations with
# their default batch sizes and fails if the peak passes 100 MiB (invariant 3X; the debug
# build's test allows 110 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
PGFANOUT_HUGE_VALUE_MB="${BENCH_VALUE_MB:-200}" \
    cargo test --release --test memory -- --nocapture --test-threads 1
