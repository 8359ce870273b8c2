// Command ido-vcsim is the project's vCenter simulator: govmomi's simulator library (Debian's
// golang-github-vmware-govmomi-dev) behind a small main, since the package ships no vcsim binary.
//
// It prints the SDK URL on its first stdout line once it serves, and runs until killed.
//
// On top of the library it serves:
//   - HttpNfcLeasePullFromUrls_Task (pull mode, missing from vcsim 0.24.2): an HTTP handler in
//     front of /sdk answers it and runs the downloads in a task; every other request goes to
//     the simulator unchanged. Leases then report capabilities.pullModeSupported=true.
//     -no-pull turns this off (the call then faults with MethodNotFound, as in stock vcsim).
//   - GET /pull-stats: JSON array of every file pulled (bytes, sha256, error), for tests.
//   - GET /files/<path> (with -files DIR): static files from DIR, over the simulator's own
//     HTTP(S) listener, so pull mode can be tried against an https source.
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
	_ "unsafe" // go:linkname

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	_ "github.com/vmware/govmomi/lookup/simulator"
	_ "github.com/vmware/govmomi/pbm/simulator"
	_ "github.com/vmware/govmomi/sts/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator"
)

// nfcLease is the simulator's table of live NFC leases (ref → *simulator.HttpNfcLease).
// Leases live in their session's registry, which the package does not export; this table is
// the only way to reach the lease objects from outside without patching govmomi.
//
//go:linkname nfcLease github.com/vmware/govmomi/simulator.nfcLease
var nfcLease sync.Map

func main() {
	listen := flag.String("l", "127.0.0.1:0", "listen address")
	certFile := flag.String("cert", "", "TLS certificate (PEM); with -key, serve HTTPS with it")
	keyFile := flag.String("key", "", "TLS private key (PEM)")
	plain := flag.Bool("plain", false, "serve plain HTTP")
	username := flag.String("username", "", "accepted user name (default: any non-empty)")
	password := flag.String("password", "", "accepted password (default: any non-empty)")
	idle := flag.Duration("idle-timeout", 0, "expire sessions idle this long (0: never)")
	hosts := flag.Int("cluster-hosts", 3, "hosts per cluster")
	noPull := flag.Bool("no-pull", false, "no pull mode (HttpNfcLeasePullFromUrls_Task faults with MethodNotFound)")
	files := flag.String("files", "", "serve this directory at /files/")
	flag.Parse()

	simulator.SessionIdleTimeout = *idle

	model := simulator.VPX()
	model.ClusterHost = *hosts
	defer model.Remove()
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	model.Service.RegisterEndpoints = true
	model.Service.Listen = &url.URL{Host: *listen}
	if *username != "" {
		model.Service.Listen.User = url.UserPassword(*username, *password)
	}
	if !*plain {
		cfg := new(tls.Config)
		if *certFile != "" {
			cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
			if err != nil {
				log.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		model.Service.TLS = cfg
	}
	server := model.Service.NewServer()
	// Set before the URL is printed, so before any request arrives.
	f := &front{next: server.Config.Handler, noPull: *noPull}
	if *files != "" {
		f.files = http.StripPrefix("/files/", http.FileServer(http.Dir(*files)))
	}
	server.Config.Handler = f
	u := *server.URL
	u.User = nil
	fmt.Println(u.String())
	os.Stdout.Sync()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	server.Close()
}

// front serves pull mode, /pull-stats and /files/, and hands everything else to the simulator.
type front struct {
	next   http.Handler
	files  http.Handler
	noPull bool
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/pull-stats":
		stats.serve(w)
		return
	case f.files != nil && strings.HasPrefix(r.URL.Path, "/files/"):
		f.files.ServeHTTP(w, r)
		return
	case r.Method == http.MethodPost && (r.URL.Path == "/sdk" || r.URL.Path == "/sdk/vimService"):
		if f.noPull {
			break
		}
		markPullCapable()
		body, err := ioutil.ReadAll(r.Body)
		_ = r.Body.Close()
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.Body = ioutil.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		if bytes.Contains(body, []byte("HttpNfcLeasePullFromUrls_Task")) {
			m, err := simulator.UnmarshalBody(types.TypeFunc(), body)
			if err == nil && m.Name == "HttpNfcLeasePullFromUrls_Task" {
				f.pull(w, r, m.Body.(*types.HttpNfcLeasePullFromUrls_Task))
				return
			}
		}
	}
	f.next.ServeHTTP(w, r)
}

// markPullCapable makes every lease report capabilities.pullModeSupported=true.
func markPullCapable() {
	nfcLease.Range(func(_, v interface{}) bool {
		l := v.(*simulator.HttpNfcLease)
		simulator.Map.WithLock(l, func() { l.Capabilities.PullModeSupported = true })
		return true
	})
}

// pull answers HttpNfcLeasePullFromUrls_Task: checks the session, the lease and the files,
// then starts the downloads in a task and returns the task.
func (f *front) pull(w http.ResponseWriter, r *http.Request, req *types.HttpNfcLeasePullFromUrls_Task) {
	// The session: let the simulator judge it (and refresh it) with a CurrentTime call.
	check := httptest.NewRequest(http.MethodPost, "/sdk", strings.NewReader(currentTime))
	check.Header = r.Header.Clone()
	check.Header.Del("Content-Length")
	rec := httptest.NewRecorder()
	f.next.ServeHTTP(rec, check)
	if rec.Code != http.StatusOK {
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
		return
	}

	// Leases belong to their session (ids are "session[<key>]<uuid>").
	var lease *simulator.HttpNfcLease
	if v, ok := nfcLease.Load(req.This); ok {
		if c, err := r.Cookie(soap.SessionCookieName); err == nil &&
			strings.HasPrefix(req.This.Value, "session["+c.Value+"]") {
			lease = v.(*simulator.HttpNfcLease)
		}
	}
	if lease == nil {
		writeFault(w, "managed object not found: "+req.This.String(), &types.ManagedObjectNotFound{Obj: req.This})
		return
	}

	var fault types.BaseMethodFault
	var msg string
	simulator.Map.WithLock(lease, func() {
		if lease.State != types.HttpNfcLeaseStateReady {
			fault, msg = &types.InvalidState{}, fmt.Sprintf("lease is %s, not ready", lease.State)
			return
		}
		if len(req.Files) == 0 {
			fault, msg = &types.InvalidArgument{InvalidProperty: "files"}, "no files"
			return
		}
		keys := map[string]bool{}
		for _, d := range lease.Info.DeviceUrl {
			keys[d.ImportKey] = true
		}
		for _, file := range req.Files {
			if !keys[file.TargetDeviceId] {
				fault = &types.InvalidArgument{InvalidProperty: "targetDeviceId"}
				msg = fmt.Sprintf("no device with import key %q", file.TargetDeviceId)
				return
			}
			if u, err := url.Parse(file.Url); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				fault, msg = &types.InvalidArgument{InvalidProperty: "url"}, fmt.Sprintf("not an http(s) URL: %q", file.Url)
				return
			}
		}
		lease.Mode = "pull"
	})
	if fault != nil {
		writeFault(w, msg, fault)
		return
	}

	task := simulator.CreateTask(lease, "pullFromUrls", nil)
	go runTask(task, func() (string, types.BaseMethodFault) { return pullFiles(task, lease, req.Files) })

	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, `%s<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><HttpNfcLeasePullFromUrls_TaskResponse xmlns="urn:vim25"><returnval type="Task">%s</returnval></HttpNfcLeasePullFromUrls_TaskResponse></soapenv:Body></soapenv:Envelope>`,
		xml.Header, escape(task.Self.Value))
}

const currentTime = `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></CurrentTime></soapenv:Body></soapenv:Envelope>`

// runTask runs fn as the task's body (like simulator.Task.Run, with a useful error message).
func runTask(t *simulator.Task, fn func() (string, types.BaseMethodFault)) {
	simulator.Map.Update(t, []types.PropertyChange{
		{Name: "info.startTime", Val: time.Now()},
		{Name: "info.state", Val: types.TaskInfoStateRunning},
	})
	msg, fault := fn()
	state := types.TaskInfoStateSuccess
	var lmf interface{}
	if fault != nil {
		state = types.TaskInfoStateError
		lmf = types.LocalizedMethodFault{Fault: fault, LocalizedMessage: msg}
		log.Printf("pullFromUrls %s failed: %s", t.Self.Value, msg)
	}
	simulator.Map.Update(t, []types.PropertyChange{
		{Name: "info.completeTime", Val: time.Now()},
		{Name: "info.state", Val: state},
		{Name: "info.error", Val: lmf},
	})
}

// pullFiles downloads every file in turn; the first failure ends the task.
func pullFiles(t *simulator.Task, lease *simulator.HttpNfcLease, files []types.HttpNfcLeaseSourceFile) (string, types.BaseMethodFault) {
	var total, done int64
	for _, f := range files {
		total += f.Size
	}
	last := int32(-1)
	progress := func(n int64) {
		done += n
		if total <= 0 {
			return
		}
		pct := int32(done * 100 / total)
		if pct > 99 {
			pct = 99
		}
		if pct != last {
			last = pct
			simulator.Map.WithLock(lease, func() { lease.TransferProgress = pct })
			simulator.Map.Update(t, []types.PropertyChange{{Name: "info.progress", Val: pct}})
		}
	}
	for _, f := range files {
		st := pullStat{
			Lease:          lease.Self.Value,
			TargetDeviceID: f.TargetDeviceId,
			URL:            f.Url,
			MemberName:     f.MemberName,
			Create:         f.Create,
			Size:           f.Size,
			SSLThumbprint:  f.SslThumbprint,
		}
		n, sum, msg, fault := fetch(f, progress)
		st.Bytes, st.SHA256, st.Error = n, sum, msg
		stats.add(st)
		if fault != nil {
			return msg, fault
		}
	}
	simulator.Map.WithLock(lease, func() { lease.TransferProgress = 100 })
	simulator.Map.Update(t, []types.PropertyChange{{Name: "info.progress", Val: int32(100)}})
	return "", nil
}

// fetch GETs one file (the tar member memberName of it, if set) and counts and hashes it.
func fetch(f types.HttpNfcLeaseSourceFile, progress func(int64)) (int64, string, string, types.BaseMethodFault) {
	u, _ := url.Parse(f.Url)
	shown := u.Scheme + "://" + u.Host + u.Path // no query: presigned URLs carry signatures
	transport := &http.Transport{Proxy: nil}
	var mismatch string
	if u.Scheme == "https" {
		want := strings.ReplaceAll(f.SslThumbprint, ":", "")
		if want == "" {
			return 0, "", "https URL without sslThumbprint: " + shown, &types.InvalidArgument{InvalidProperty: "sslThumbprint"}
		}
		// Trusted by thumbprint (SHA-1 of the leaf certificate's DER), not by CA.
		transport.TLSClientConfig = &tls.Config{
			InsecureSkipVerify: true,
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				if len(raw) == 0 {
					return errors.New("no server certificate")
				}
				sum := sha1.Sum(raw[0])
				got := strings.ToUpper(hex.EncodeToString(sum[:]))
				if got != want {
					mismatch = got
					return fmt.Errorf("server certificate thumbprint %s, expected %s", got, f.SslThumbprint)
				}
				return nil
			},
		}
	}
	client := &http.Client{Transport: transport, Timeout: 30 * time.Minute}
	defer transport.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, f.Url, nil)
	if err != nil {
		return 0, "", err.Error(), &types.InvalidArgument{InvalidProperty: "url"}
	}
	for _, h := range f.HttpHeaders {
		req.Header.Set(h.Key, h.Value)
	}
	resp, err := client.Do(req)
	if err != nil {
		msg := fmt.Sprintf("GET %s: %v", shown, errors.Unwrap(err))
		if mismatch != "" {
			return 0, "", msg, &types.SSLVerifyFault{Thumbprint: mismatch}
		}
		return 0, "", msg, &types.FileFault{File: shown}
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return 0, "", fmt.Sprintf("GET %s: HTTP %s", shown, resp.Status), &types.FileNotFound{FileFault: types.FileFault{File: shown}}
	case resp.StatusCode != http.StatusOK:
		return 0, "", fmt.Sprintf("GET %s: HTTP %s", shown, resp.Status), &types.FileFault{File: shown}
	}
	var src io.Reader = resp.Body
	what := shown
	if f.MemberName != "" {
		what = shown + "#" + f.MemberName
		tr := tar.NewReader(resp.Body)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				return 0, "", fmt.Sprintf("%s: no member %q in the archive", shown, f.MemberName),
					&types.FileNotFound{FileFault: types.FileFault{File: f.MemberName}}
			}
			if err != nil {
				return 0, "", fmt.Sprintf("%s: reading the archive: %v", shown, err), &types.FileFault{File: shown}
			}
			if strings.TrimPrefix(h.Name, "./") == f.MemberName && (h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeRegA) {
				src = tr
				break
			}
		}
	}
	hash := sha256.New()
	n, err := io.Copy(hash, io.TeeReader(src, progressWriter(progress)))
	sum := hex.EncodeToString(hash.Sum(nil))
	if err != nil {
		return n, sum, fmt.Sprintf("%s: reading: %v", what, err), &types.FileFault{File: shown}
	}
	if f.Size > 0 && n != f.Size {
		return n, sum, fmt.Sprintf("%s: %d bytes, expected %d", what, n, f.Size), &types.InvalidArgument{InvalidProperty: "size"}
	}
	log.Printf("pullFromUrls %s: %d bytes", what, n)
	return n, sum, "", nil
}

type progressWriter func(int64)

func (p progressWriter) Write(b []byte) (int, error) {
	p(int64(len(b)))
	return len(b), nil
}

// pullStat is one pulled file, as GET /pull-stats shows it.
type pullStat struct {
	Lease          string `json:"lease"`
	TargetDeviceID string `json:"targetDeviceId"`
	URL            string `json:"url"`
	MemberName     string `json:"memberName"`
	Create         bool   `json:"create"`
	Size           int64  `json:"size"`
	SSLThumbprint  string `json:"sslThumbprint"`
	Bytes          int64  `json:"bytes"`
	SHA256         string `json:"sha256"`
	Error          string `json:"error"`
}

type statTable struct {
	sync.Mutex
	all []pullStat
}

var stats statTable

func (s *statTable) add(st pullStat) {
	s.Lock()
	s.all = append(s.all, st)
	s.Unlock()
}

func (s *statTable) serve(w http.ResponseWriter) {
	s.Lock()
	all := append([]pullStat{}, s.all...)
	s.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(all)
}

// writeFault answers with a SOAP fault the way vcsim does (HTTP 500, <KindFault xsi:type=Kind>).
func writeFault(w http.ResponseWriter, msg string, fault types.BaseMethodFault) {
	kind := fmt.Sprintf("%T", fault)
	kind = kind[strings.LastIndex(kind, ".")+1:]
	var detail bytes.Buffer
	start := xml.StartElement{
		Name: xml.Name{Local: kind + "Fault"},
		Attr: []xml.Attr{{Name: xml.Name{Local: "xmlns"}, Value: "urn:vim25"}, {Name: xml.Name{Local: "xsi:type"}, Value: kind}},
	}
	if err := xml.NewEncoder(&detail).EncodeElement(fault, start); err != nil {
		detail.Reset()
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, `%s<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring><detail>%s</detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`,
		xml.Header, escape(msg), detail.String())
}

func escape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
