#!/usr/bin/env bash
# Protocol 2 benchmark (issue 14): one large transaction and 100 small ones committing right
# after it (`after`) or during it (`during`), under pgoutput protocol 1 and protocol 2 in the
# same run, into PostgreSQL destinations (examples/bench_streaming.rs). BENCH_ROWS (large
# transaction, default 1000000), BENCH_SCENARIOS (default after,during) and BENCH_ROUNDS
# (default 1; rounds alternate which protocol goes first) override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet --bin pgfanout --example bench_streaming
exec target/release/examples/bench_streaming
