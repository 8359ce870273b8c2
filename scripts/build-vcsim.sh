#!/usr/bin/env bash
# Builds the project's vCenter simulator (testkit/vcsim/main.go) offline against Debian's govmomi
# library, into target/peers/ido-vcsim. Skips the build when the binary is newer than the source.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/peers/ido-vcsim
if [ -x "$out" ] && [ "$out" -nt testkit/vcsim/main.go ]; then exit 0; fi
mkdir -p target/peers/gopath/src/ido-vcsim
cp testkit/vcsim/main.go target/peers/gopath/src/ido-vcsim/
export GOPATH="$PWD/target/peers/gopath:/usr/share/gocode" GO111MODULE=off GOFLAGS=-mod=mod GOCACHE="$PWD/target/peers/gocache"
unset GOFLAGS
(cd target/peers/gopath/src/ido-vcsim && go build -o "../../../ido-vcsim" .)
echo "built $out"
