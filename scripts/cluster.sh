#!/usr/bin/env bash
# A local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager; no scheduler,
# no kubelet: Pods stay Pending) for tests, run from target/peers/ido-k8s:
#   scripts/cluster.sh up DIR                  build if needed, start, wait until ready
#   scripts/cluster.sh down DIR                stop everything started in DIR (idempotent)
#   scripts/cluster.sh restart DIR COMPONENT   restart etcd|kube-apiserver|kube-controller-manager
# DIR gets kubeconfig, env (KUBECONFIG, KUBECTL, HELM), logs/, pids/, pki/ and the etcd data.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
usage() { echo "usage: $0 up DIR | down DIR | restart DIR COMPONENT" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1 dir=$2
peers=$repo/target/peers

case $cmd in
  up)
    [ $# -eq 2 ] || usage
    "$repo/scripts/build-k8s.sh"
    "$peers/ido-k8s" up "$dir" --kubectl "$peers/kubectl" --helm "$peers/helm"
    dir=$(cd "$dir" && pwd)
    cat <<EOF
Use it with:
  export KUBECONFIG=$dir/kubeconfig    # or: . $dir/env
  $peers/kubectl get ns
  $peers/helm list -A
Stop it with: $0 down $dir
EOF
    ;;
  down)
    [ $# -eq 2 ] || usage
    [ -d "$dir" ] || exit 0
    # Use the binary that started the cluster if target/peers is gone.
    bin=$peers/ido-k8s
    [ -x "$bin" ] || bin=$(ls -d "${IDO_PEERS_CACHE:-${HOME:-/root}/.cache/ido/peers}"/ido-k8s-*/ido-k8s 2>/dev/null | head -n1)
    [ -n "$bin" ] || { "$repo/scripts/build-k8s.sh"; bin=$peers/ido-k8s; }
    "$bin" down "$dir"
    ;;
  restart)
    [ $# -eq 3 ] || usage
    "$repo/scripts/build-k8s.sh"
    "$peers/ido-k8s" restart "$dir" "$3"
    ;;
  *) usage ;;
esac
