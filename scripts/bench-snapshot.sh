#!/usr/bin/env bash
# Benchmark of the initial snapshot: pgfanout run copying BENCH_ROWS (default 10000000, about
# 2 GB) pre-existing rows into a PostgreSQL and a ClickHouse destination vs `psql \copy` piped
# into psql / clickhouse-client, same machine, one run; plus pgbench TPS on the source alone
# and while a snapshot reads it. BENCH_PARALLELISM and BENCH_CHUNK_ROWS set [snapshot]
# parallelism and chunk_rows; BENCH_CLICKHOUSE=0 skips ClickHouse; BENCH_LOG sets pgfanout's
# RUST_LOG (default warn); BENCH_PG_SETTINGS adds postgresql.conf lines (';'-separated,
# experiments only).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet --bin pgfanout --example bench_snapshot
target="${CARGO_TARGET_DIR:-target}"
PGFANOUT_BIN="${PGFANOUT_BIN:-$target/release/pgfanout}" exec "$target/release/examples/bench_snapshot"
