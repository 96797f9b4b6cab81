#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs `pgfanout demo` — a
# private PostgreSQL source and two tenant databases, a private ClickHouse, a workload, a live
# view, a SIGKILL and a replay, then checks that every target equals its projection of the
# source. Everything is removed at the end. Arguments go to the demo: `--duration 60s`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec cargo run --release --quiet -- demo "$@"
