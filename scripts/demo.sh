#!/usr/bin/env bash
# The embedded default: installs what is missing, builds, and runs `pgfanout demo` (a private
# PostgreSQL, a small multi-tenant schema, changes streaming live; Ctrl-C ends it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec cargo run --release --quiet -- demo "$@"
