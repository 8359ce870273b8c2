#!/usr/bin/env bash
# Builds govc (tools/govc: govmomi's CLI from the Go module proxy, the original operator's
# import.ova path) for the vSphere benchmark, cached and linked as target/peers/govc like the
# other Go peers (scripts/go-peer.sh). Quiet when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/go-peer.sh
build govc tools/govc . "-s -w"
