#!/usr/bin/env bash
# README command 1: install what is missing, build, and distribute a node image (an OVA in a
# local S3) to a local vCenter simulator with `ido run --once`; ends showing the template.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p ido -p ido-testkit --bins
exec target/release/ido-quickstart --ido target/release/ido "$@"
