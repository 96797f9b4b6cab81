#!/usr/bin/env bash
# 1,000 tenant databases: pgfanout run with one PostgreSQL destination per tenant (one database
# each, on one private server) vs the same Zipf-distributed changes into ONE destination holding
# every tenant, in one run; peak RSS; commit → visible for a cold tenant after its connection
# closed. Overrides: BENCH_DESTINATIONS (1000), BENCH_ROWS (200000), BENCH_MAX_CONNECTIONS (50),
# BENCH_IDLE_TIMEOUT (5s), BENCH_FLUSH_INTERVAL (0s, every destination). Run it under `flock /tmp/cargo.lock` on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet --bin pgfanout --example bench_many
target="${CARGO_TARGET_DIR:-target}"
PGFANOUT_BIN="${PGFANOUT_BIN:-$target/release/pgfanout}" exec "$target/release/examples/bench_many"
