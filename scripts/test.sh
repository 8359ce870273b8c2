#!/usr/bin/env bash
# The whole test suite: installs the test peers if missing, checks formatting and lints,
# then runs every test with nextest. Integration tests start their own peers (SeaweedFS,
# the vCenter simulator, …) on loopback. Arguments go to nextest (a filtered run skips the
# format and lint checks).
set -euo pipefail
cd "$(dirname "$0")/.."

# Free space where the build and the tests write: the build takes a few GB, the tests up to
# about 1 GB of temporary files at once (the disk corpus); a run short of space says so here.
space() {
  mkdir -p target
  df -h target "${TMPDIR:-/tmp}" | awk -v when="$1" 'NR > 1 { print "test.sh: " when ": " $4 " free on " $6 }' | sort -u
}
space "before"
trap 'space "after"' EXIT

scripts/setup.sh
export CARGO_TERM_COLOR=never
if [ $# -eq 0 ]; then
  cargo fmt --all --check
  cargo clippy --workspace --all-targets -- -D warnings
fi
cargo nextest run --workspace --no-fail-fast "$@"
