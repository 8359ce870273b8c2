// Command ociregistry: go-containerregistry's in-memory registry (pkg/registry) with the OCI
// 1.1 referrers API (GET /v2/<name>/referrers/<digest>) on a loopback address, plain HTTP.
// It prints the address it listens on as its first stdout line once it accepts connections.
//
//	ociregistry [-addr 127.0.0.1:0] [-manifest-location=false] [-v]
//
// One departure from pkg/registry: the 201 that ends a blob upload carries the Location of
// the blob, as the distribution spec says it must (pkg/registry leaves it out, and
// oci-client, the client ido is built on, refuses a blob upload without it). So does a
// manifest push unless -manifest-location=false, which keeps pkg/registry's answer (ECR's
// too) for the tests of clients that must cope with it.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on (host:port)")
	manifestLocation := flag.Bool("manifest-location", true, "add the Location the spec requires to 201 answers of manifest pushes")
	verbose := flag.Bool("v", false, "log to stderr")
	flag.Parse()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("ociregistry: %v", err)
	}
	logger := log.New(io.Discard, "", 0)
	if *verbose {
		logger = log.New(os.Stderr, "ociregistry: ", log.LstdFlags)
	}
	reg := registry.New(registry.WithReferrersSupport(true), registry.Logger(logger))
	kinds := []string{"/blobs/"}
	if *manifestLocation {
		kinds = append(kinds, "/manifests/")
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reg.ServeHTTP(withLocation{w, r.URL.Path, kinds}, r)
	})
	fmt.Println(ln.Addr().String())
	log.Fatal(http.Serve(ln, handler))
}

// withLocation adds `Location: /v2/<name>/<kind>/<digest>` to a 201 without one, for the
// kinds (`/blobs/`, `/manifests/`) given.
type withLocation struct {
	http.ResponseWriter
	path  string
	kinds []string
}

func (w withLocation) WriteHeader(code int) {
	h := w.Header()
	d := h.Get("Docker-Content-Digest")
	if code == http.StatusCreated && d != "" && h.Get("Location") == "" {
		for _, kind := range w.kinds {
			if i := strings.Index(w.path, kind); i > 0 {
				h.Set("Location", w.path[:i]+kind+d)
				break
			}
		}
	}
	w.ResponseWriter.WriteHeader(code)
}
