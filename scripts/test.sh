#!/usr/bin/env bash
# The whole test suite: installs what is missing, then runs unit and integration tests against
# private PostgreSQL servers the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The never-panic property tests of the wire decoder and the change-log reader run this many
# cases each; the change log's crash model (slower: real files) runs PGFANOUT_MODEL_CASES.
export PGFANOUT_FUZZ_CASES="${PGFANOUT_FUZZ_CASES:-200000}"
export PGFANOUT_MODEL_CASES="${PGFANOUT_MODEL_CASES:-256}"
# The failpoints feature compiles the named failpoints in (src/failpoint.rs): the
# fault-injection suite (tests/faults.rs) exists only with it, so the test command always
# enables it. Release builds never have it.
cargo test --all-targets --features failpoints "$@"
