#!/usr/bin/env bash
# The image cache benchmark, figures in docs/benchmarks.md: builds the admission benchmark
# (release) and runs, on loopback docker-registry instances, (a) the admission webhook's
# latency over HTTPS at a steady open-loop rate, every image cached and with a share of cold
# lookups, and (b) a burst of pods asking for one new image at once (one record, one copy),
# with an SVG plot.
#   scripts/bench-cache.sh [--runs 3] [--seconds 20] [--rate 500] [--cold-share 0.1]
#                          [--burst 100] [...]   (see crates/operator/examples/bench_admission.rs)
# Needs docker-registry and skopeo (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p ido-operator --example bench_admission
exec target/release/examples/bench_admission --svg docs/bench-cache.svg --json docs/bench-cache.json "$@"
