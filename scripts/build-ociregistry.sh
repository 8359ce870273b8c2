#!/usr/bin/env bash
# Builds ociregistry (tools/ociregistry: go-containerregistry's in-memory registry with the OCI
# referrers API) for the `copy --referrers` tests, cached and linked as target/peers/ociregistry
# like the other Go peers (scripts/go-peer.sh). Quiet when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/go-peer.sh
build ociregistry tools/ociregistry . "-s -w"
