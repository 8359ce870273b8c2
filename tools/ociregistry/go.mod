// Builds ociregistry: go-containerregistry's in-memory registry (pkg/registry) with the OCI
// referrers API, a test peer for `ido copy --referrers` (docker-registry 2.8 has no such API).
module ido.dev/tools/ociregistry

go 1.26.0

require github.com/google/go-containerregistry v0.22.1
