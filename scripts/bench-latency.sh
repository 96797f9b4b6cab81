#!/usr/bin/env bash
# Latency benchmark: commit → visible in a PostgreSQL target, pgfanout against a native
# subscription reading the same WAL at the same time (examples/bench_latency.rs).
# BENCH_RATES (row changes/s, default 200,1000,5000,20000) and BENCH_SECONDS (per rate,
# default 60) override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet --bin pgfanout --example bench_latency
exec target/release/examples/bench_latency
