#!/usr/bin/env bash
# The disk-import benchmark, figures in docs/benchmarks.md: builds the release
# binaries and runs `ido import` against CDI's path, nbdkit + qemu-img and plain curl, over
# loopback HTTP (nginx).
#   scripts/bench-disk.sh [--runs 3] [--cases qcow2,xz] [...]   (see crates/testkit/src/bin/ido-bench-disk.rs)
# Needs about 8 GiB free under target/ (fixtures, outputs, CDI's scratch file).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p ido -p ido-testkit --bins
exec target/release/ido-bench-disk --ido target/release/ido "$@"
