#!/usr/bin/env bash
# The vSphere push benchmark, figures in docs/benchmarks.md: ido's path
# (`ido run --once`, S3 -> NFC) against the original operator's (`govc import.ova`, govmomi's
# importx) on the same OVA and the same vCenter simulator, with an SVG plot.
#   scripts/bench-vsphere.sh [--runs 3] [--disk-mib 1024] [...]   (see crates/testkit/src/bin/ido-bench-vsphere.rs)
# Needs /usr/bin/time and about 2 GiB free under target/ and SeaweedFS' data directory.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-govc.sh
cargo build --release -p ido -p ido-testkit --bins
exec target/release/ido-bench-vsphere --ido target/release/ido --govc target/peers/govc \
  --svg docs/bench-vsphere.svg "$@"
