#!/usr/bin/env bash
# The container-image benchmark, figures in docs/benchmarks.md: builds the release
# binaries and runs ido against skopeo 1.9.3 on loopback docker-registry instances.
#   scripts/bench-oci.sh [--runs 3] [--cases a,b,c] [...]   (see crates/testkit/src/bin/ido-bench-oci.rs)
# Needs docker-registry, skopeo, curl and /usr/bin/time (scripts/setup.sh installs them) and
# about 4 GiB free under target/ and $TMPDIR (a 1 GiB layout, the source registry, a destination).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p ido -p ido-testkit --bins
cargo build --release -p ido-oci --example copy_many
exec target/release/ido-bench-oci --ido target/release/ido --copy-many target/release/examples/copy_many \
  --svg docs/bench-oci.svg "$@"
