#!/usr/bin/env bash
# End-to-end benchmark of a PostgreSQL destination: pgfanout run (one tenant, identity mapping)
# vs PostgreSQL's native logical replication (CREATE SUBSCRIPTION) applying the same WAL, same
# machine, one run, for an insert-only, an update-heavy and a mixed workload.
# BENCH_ROWS (default 1000000) and BENCH_WORKLOADS (default insert,update,mixed) override.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet --bin pgfanout --example bench_fanout
exec target/release/examples/bench_fanout
