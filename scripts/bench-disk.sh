#!/usr/bin/env bash
# The disk-import benchmark, figures in docs/benchmarks.md: builds the release binaries and
# runs, in one run, `ido import` of every disk format it reads (qcow2, vmdk streamOptimized
# and monolithicSparse, vhdx, vhd, vdi, raw) against `qemu-img convert -O raw` from a local
# file, a clone (`ido import --format raw` of a sparse raw, 4 GiB then 16 GiB) against
# `cp --sparse=always`, and over loopback HTTP (nginx) qcow2 and xz against CDI's path,
# nbdkit + qemu-img, `xz -dc -T1` and plain curl.
#   scripts/bench-disk.sh [--runs 3] [--cases qcow2,vhdx,clone,...|all] [--size MIB]
#                         [--svg docs/bench-disk.svg] [...]   (see crates/testkit/src/bin/ido-bench-disk.rs)
# Needs about 12 GiB free under target/ with the default --size 1024 (fixtures of 1 GiB
# of data each, outputs, CDI's scratch file), about 16 GiB with the clone case (its 16 GiB
# volume holds 2 GiB, and both copies of it exist at once).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p ido -p ido-testkit --bins
exec target/release/ido-bench-disk --ido target/release/ido "$@"
