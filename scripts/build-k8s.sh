#!/usr/bin/env bash
# Builds the local Kubernetes control plane (tools/cluster -> ido-k8s, with a kubectl symlink)
# and helm (tools/helm) from the Go module proxy, into a cache outside the repo keyed by a hash
# of their sources, so every clone on this machine shares them:
#   ${IDO_PEERS_CACHE:-~/.cache/ido/peers}/ido-k8s-<hash>/{ido-k8s,kubectl}
#   ${IDO_PEERS_CACHE:-~/.cache/ido/peers}/helm-<hash>/helm
# then links them as target/peers/{ido-k8s,kubectl,helm}. Quiet when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/go-peer.sh

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

build ido-k8s tools/cluster . "$ldflags_k8s"
[ -L "$built/kubectl" ] || ln -sfn ido-k8s "$built/kubectl" # multi-call: dispatches on argv[0]
link "$built/kubectl" kubectl
build helm tools/helm helm.sh/helm/v4/cmd/helm "$ldflags_helm"
