#!/usr/bin/env bash
# The whole test suite: installs what is missing, then runs unit and integration tests against
# private PostgreSQL servers the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The decoder's and value parser's never-panic property tests run this many cases each.
export PGFANOUT_FUZZ_CASES="${PGFANOUT_FUZZ_CASES:-200000}"
cargo test --all-targets "$@"
