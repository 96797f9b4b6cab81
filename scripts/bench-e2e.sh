#!/usr/bin/env bash
# End-to-end benchmark: pgfanout tail vs pg_recvlogical on the same WAL (1,000,000 inserts into
# a 10-column table), same machine, one run. Prints each client's rate and their ratio.
# BENCH_ROWS and BENCH_ROUNDS override the defaults (1000000, 3).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet --bin pgfanout --example bench_e2e
exec target/release/examples/bench_e2e
