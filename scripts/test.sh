#!/usr/bin/env bash
# The whole test suite: installs the test peers if missing, checks formatting and lints,
# then runs every test with nextest. Integration tests start their own peers (SeaweedFS,
# the vCenter simulator, …) on loopback. Arguments go to nextest (a filtered run skips the
# format and lint checks).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TERM_COLOR=never
if [ $# -eq 0 ]; then
  cargo fmt --all --check
  cargo clippy --workspace --all-targets -- -D warnings
fi
cargo nextest run --workspace --no-fail-fast "$@"
