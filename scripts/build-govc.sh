#!/usr/bin/env bash
# Builds govc (tools/govc: govmomi's CLI from the Go module proxy, the original operator's
# import.ova path) into a cache outside the repo keyed by a hash of its sources, so every clone
# on this machine shares it:
#   ${IDO_PEERS_CACHE:-~/.cache/ido/peers}/govc-<hash>/govc
# then links it as target/peers/govc. Quiet when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH" GOTOOLCHAIN=local
cache=${IDO_PEERS_CACHE:-${HOME:-/root}/.cache/ido/peers}
mkdir -p "$cache" target/peers

name=govc dir=tools/govc ldflags="-s -w"
key=$( { go version; echo ". $ldflags"; cd "$dir" && cat go.mod go.sum ./*.go; } | sha256sum | cut -c1-16)
out=$cache/$name-$key
if [ ! -x "$out/$name" ]; then
  mkdir -p "$out"
  (
    flock 9 # another clone may be building the same thing
    if [ ! -x "$out/$name" ]; then
      echo "building $name ($dir) ..."
      t0=$SECONDS
      (cd "$dir" && nice -n 5 go build -trimpath -ldflags="$ldflags" -o "$out/$name.tmp" .)
      mv "$out/$name.tmp" "$out/$name"
      echo "built $out/$name in $((SECONDS - t0))s"
    fi
  ) 9>"$out/.lock"
fi
# Points target/peers/govc at the cached binary atomically (a benchmark may be using it).
if [ "$(readlink "target/peers/$name" 2>/dev/null)" != "$out/$name" ]; then
  ln -sfn "$out/$name" "target/peers/.$name.$$" && mv -Tf "target/peers/.$name.$$" "target/peers/$name"
fi
