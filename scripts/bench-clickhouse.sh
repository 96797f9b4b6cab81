#!/usr/bin/env bash
# End-to-end benchmark of a ClickHouse destination: pgfanout run (one tenant, identity mapping,
# into a private ClickHouse server) vs pg_recvlogical decoding the same WAL (pgoutput, same
# publication), same machine, one run, for an insert-only, an update-heavy and a mixed workload.
# BENCH_ROWS (default 1000000) and BENCH_WORKLOADS (default insert,update,mixed) override;
# BENCH_LOG sets pgfanout's RUST_LOG (default warn); BENCH_CH_SETTINGS adds TOML lines to the
# destination (experiments only).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet --bin pgfanout --example bench_clickhouse
target="${CARGO_TARGET_DIR:-target}"
PGFANOUT_BIN="${PGFANOUT_BIN:-$target/release/pgfanout}" exec "$target/release/examples/bench_clickhouse"
