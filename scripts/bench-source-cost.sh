#!/usr/bin/env bash
# Cost to the source: pgbench TPC-B TPS on a private PostgreSQL with no slot, with
# pg_recvlogical live vs `pgfanout run` without destinations live, and with a native
# subscription vs `pgfanout run` with one PostgreSQL destination, both into a second database
# on the same server (examples/bench_source_cost.rs); plus each consumer's lag and the
# CPU-seconds of walsenders and consumers. BENCH_SECONDS (pgbench -T, default 30),
# BENCH_WARMUP (default 5), BENCH_ROUNDS (default 2), BENCH_SCALE (default 10) and
# BENCH_CONFIGS (e.g. 1,2,3; default all five), BENCH_RETRIES (default 2: a measurement that
# other work on the machine disturbed is taken again) and BENCH_LOG_IN (where pgfanout's change
# log goes; experiments) override.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet --bin pgfanout --example bench_source_cost
target="${CARGO_TARGET_DIR:-target}"
PGFANOUT_BIN="${PGFANOUT_BIN:-$target/release/pgfanout}" exec "$target/release/examples/bench_source_cost"
