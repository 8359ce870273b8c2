# Sourced by scripts/build-k8s.sh, scripts/build-govc.sh and scripts/build-ociregistry.sh: Go
# peers built from the modules under tools/ into a cache outside the repo, keyed by a hash of
# their sources, so every clone on this machine shares them
# (${IDO_PEERS_CACHE:-~/.cache/ido/peers}/NAME-<hash>/NAME), and linked as target/peers/NAME.
# Run from the repository's root.
export PATH="/usr/local/go/bin:$PATH" GOTOOLCHAIN=local
cache=${IDO_PEERS_CACHE:-${HOME:-/root}/.cache/ido/peers}
mkdir -p "$cache" target/peers

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
