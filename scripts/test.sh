#!/usr/bin/env bash
# The whole test suite: installs the test peers if missing, then runs every test with nextest.
# Integration tests start their own peers (SeaweedFS, the vCenter simulator, …) on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TERM_COLOR=never
cargo nextest run --workspace --no-fail-fast "$@"
