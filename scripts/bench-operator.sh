#!/usr/bin/env bash
# The operator at scale, figures in docs/benchmarks.md: 1000 Releases sharing 100
# node images whose templates already exist, on a real control plane; seconds to convergence,
# peak RSS and API requests per converged object, default concurrency and one NodeImage
# worker, with an SVG plot.
#   scripts/bench-operator.sh [--runs 2] [--images 100] [--per-image 10] [...]   (see crates/testkit/src/bin/ido-bench-operator.rs)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p ido -p ido-testkit --bins
exec target/release/ido-bench-operator --ido target/release/ido --svg docs/bench-operator.svg "$@"
