#!/usr/bin/env bash
# Builds the local Kubernetes control plane (tools/cluster -> ido-k8s, with a kubectl symlink)
# and helm (tools/helm) from the Go module proxy, into a cache outside the repo keyed by a hash
# of their sources, so every clone on this machine shares them:
#   ${IDO_PEERS_CACHE:-~/.cache/ido/peers}/ido-k8s-<hash>/{ido-k8s,kubectl}
#   ${IDO_PEERS_CACHE:-~/.cache/ido/peers}/helm-<hash>/helm
# then links them as target/peers/{ido-k8s,kubectl,helm}. Quiet when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH" GOTOOLCHAIN=local
cache=${IDO_PEERS_CACHE:-${HOME:-/root}/.cache/ido/peers}
mkdir -p "$cache" target/peers

# version NAME: the version tools/*/go.mod pins for module NAME.
version() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$2"; }

k8s=$(version k8s.io/kubernetes tools/cluster/go.mod)
k8s_minor=${k8s#v1.}; k8s_minor=${k8s_minor%%.*}
ldflags_k8s="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  # What `kubectl version` and the apiserver's /version report (upstream sets these at release).
  ldflags_k8s+=" -X $pkg.gitVersion=$k8s -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean"
done
helm_v=$(version helm.sh/helm/v4 tools/helm/go.mod)
ldflags_helm="-s -w -X helm.sh/helm/v4/internal/version.version=$helm_v"

# link TARGET NAME: points target/peers/NAME at TARGET atomically (tests may be using it).
link() {
  [ "$(readlink "target/peers/$2" 2>/dev/null)" = "$1" ] && return
  ln -sfn "$1" "target/peers/.$2.$$" && mv -Tf "target/peers/.$2.$$" "target/peers/$2"
}

# build NAME MODULE_DIR PACKAGE LDFLAGS: builds into $cache/NAME-<hash>/NAME unless there already.
build() {
  local name=$1 dir=$2 pkg=$3 ldflags=$4 key out
  key=$( { go version; echo "$pkg $ldflags"; cd "$dir" && cat go.mod go.sum $(ls ./*.go 2>/dev/null); } \
    | sha256sum | cut -c1-16)
  out=$cache/$name-$key
  if [ ! -x "$out/$name" ]; then
    mkdir -p "$out"
    (
      flock 9 # another clone may be building the same thing
      if [ ! -x "$out/$name" ]; then
        echo "building $name ($dir) ..."
        local t0=$SECONDS
        (cd "$dir" && nice -n 5 go build -trimpath -ldflags="$ldflags" -o "$out/$name.tmp" "$pkg")
        mv "$out/$name.tmp" "$out/$name"
        echo "built $out/$name in $((SECONDS - t0))s"
      fi
    ) 9>"$out/.lock"
  fi
  link "$out/$name" "$name"
  built=$out
}

build ido-k8s tools/cluster . "$ldflags_k8s"
[ -L "$built/kubectl" ] || ln -sfn ido-k8s "$built/kubectl" # multi-call: dispatches on argv[0]
link "$built/kubectl" kubectl
build helm tools/helm helm.sh/helm/v4/cmd/helm "$ldflags_helm"
