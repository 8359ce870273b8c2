package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// order is the start order; down stops in reverse.
var order = []string{"etcd", "kube-apiserver", "kube-controller-manager"}

// ports are picked once per `up` and saved in DIR/ports.json for the probes
// of `restart` (the saved command lines carry them too).
type ports struct {
	Etcd, EtcdPeer, APIServer, ControllerManager int
}

// cluster is one control plane living in dir (absolute).
type cluster struct {
	dir   string
	ports ports
	exits map[string]chan error // components started by this process
	ready map[string]bool       // components seen ready by this process
	began time.Time
}

func (c *cluster) path(elem ...string) string {
	return filepath.Join(append([]string{c.dir}, elem...)...)
}

// args returns each component's command line (without argv[0]).
func (c *cluster) args(name string) []string {
	pki := func(f string) string { return c.path("pki", f) }
	p := c.ports
	switch name {
	case "etcd":
		return []string{"etcd",
			"--data-dir=" + c.path("etcd"),
			fmt.Sprintf("--listen-client-url=https://127.0.0.1:%d", p.Etcd),
			fmt.Sprintf("--listen-peer-url=https://127.0.0.1:%d", p.EtcdPeer),
			"--cert-file=" + pki("etcd.crt"), "--key-file=" + pki("etcd.key"), "--trusted-ca-file=" + pki("ca.crt"),
			"--unsafe-no-fsync", // a throwaway test cluster: speed over crash safety
		}
	case "kube-apiserver":
		return []string{"kube-apiserver",
			fmt.Sprintf("--etcd-servers=https://127.0.0.1:%d", p.Etcd),
			"--etcd-cafile=" + pki("ca.crt"),
			"--etcd-certfile=" + pki("apiserver-etcd-client.crt"), "--etcd-keyfile=" + pki("apiserver-etcd-client.key"),
			"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
			fmt.Sprintf("--secure-port=%d", p.APIServer),
			"--tls-cert-file=" + pki("apiserver.crt"), "--tls-private-key-file=" + pki("apiserver.key"),
			"--client-ca-file=" + pki("ca.crt"),
			"--service-account-key-file=" + pki("sa.pub"),
			"--service-account-signing-key-file=" + pki("sa.key"),
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-cluster-ip-range=" + serviceCIDR,
			"--authorization-mode=Node,RBAC",
			"--allow-privileged=true",
			// Endpoints may not be loopback addresses, and there is no
			// node network to advertise: leave `kubernetes` without endpoints.
			"--endpoint-reconciler-type=none",
			"--profiling=false",
			// On SIGTERM, drain in-flight requests and give watches 2 s,
			// instead of waiting up to --request-timeout (60 s) for them.
			"--shutdown-send-retry-after=true",
		}
	case "kube-controller-manager":
		kc := c.path("controller-manager.kubeconfig")
		return []string{"kube-controller-manager",
			"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
			"--bind-address=127.0.0.1",
			fmt.Sprintf("--secure-port=%d", p.ControllerManager),
			"--tls-cert-file=" + pki("kube-controller-manager.crt"),
			"--tls-private-key-file=" + pki("kube-controller-manager.key"),
			"--client-ca-file=" + pki("ca.crt"),
			"--controllers=*", // every default controller: GC, namespace, job, deployment, SA, SA token, ...
			"--use-service-account-credentials=true",
			"--service-account-private-key-file=" + pki("sa.key"),
			"--root-ca-file=" + pki("ca.crt"),
			"--cluster-signing-cert-file=" + pki("ca.crt"), "--cluster-signing-key-file=" + pki("ca.key"),
			"--cluster-name=ido",
			"--leader-elect=false",
			// Building the controllers makes ~3 requests each (their own
			// ServiceAccount and token); the default 20 QPS makes that 5 s.
			"--kube-api-qps=100", "--kube-api-burst=200",
			"--profiling=false",
		}
	}
	panic("unknown component " + name)
}

// probe reports whether a component answers its health endpoint.
func (c *cluster) probe(name string) error {
	switch name {
	case "etcd":
		return c.get("apiserver-etcd-client", c.ports.Etcd, "/health", `"health":"true"`)
	case "kube-apiserver":
		return c.get("admin", c.ports.APIServer, "/readyz", "ok")
	case "kube-controller-manager":
		// Its controllers add their own checks once built: wait for those, not
		// just for the HTTP server, which answers first.
		return c.get("admin", c.ports.ControllerManager, "/healthz?verbose", "[+]garbage-collector-controller ok")
	}
	return errors.New("unknown component " + name)
}

// get does a GET over mutual TLS with the client certificate pki/<user>.crt
// and succeeds on status 200 with a body containing want.
func (c *cluster) get(user string, port int, path, want string) error {
	ca, err := os.ReadFile(c.path("pki", "ca.crt"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair(c.path("pki", user+".crt"), c.path("pki", user+".key"))
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}},
	}}
	defer client.CloseIdleConnections()
	resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d%s", port, path))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// cmdline is exactly what /proc/PID/cmdline shows for our process.
func cmdline(argv []string) []byte { return []byte(strings.Join(argv, "\x00") + "\x00") }

// start launches `ido-k8s <args>` detached in its own session, logging to
// DIR/logs/<name>.log, and records its command line and pid.
func (c *cluster) start(name string, args []string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	argv := append([]string{"ido-k8s"}, args...)
	if err := os.WriteFile(c.path("cmdline", name), cmdline(argv), 0o644); err != nil {
		return err
	}
	log, err := os.OpenFile(c.path("logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	fmt.Fprintf(log, "=== %s ido-k8s: starting %s\n", time.Now().Format(time.RFC3339), strings.Join(args, " "))
	cmd := &exec.Cmd{Path: self, Args: argv, Dir: c.dir, Stdout: log, Stderr: log,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true}}
	if err := cmd.Start(); err != nil {
		return err
	}
	exit := make(chan error, 1)
	go func() { exit <- cmd.Wait() }() // reaps the child if it dies while we wait
	c.exits[name] = exit
	return os.WriteFile(c.path("pids", name+".pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
}

// running returns the pid of the component if the pid file names a live
// process whose command line is the one we saved (not a recycled pid).
func (c *cluster) running(name string) (int, bool) {
	b, err := os.ReadFile(c.path("pids", name+".pid"))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	want, err1 := os.ReadFile(c.path("cmdline", name))
	got, err2 := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return pid, err1 == nil && err2 == nil && bytes.Equal(want, got)
}

// stop sends SIGTERM, then SIGKILL after 5 s, and removes the pid file. A
// process that exited is gone from running() at once: a zombie has an empty
// /proc/PID/cmdline (zombies of ours are reaped by the goroutine in start).
func (c *cluster) stop(name string) {
	if pid, ok := c.running(name); ok {
		syscall.Kill(pid, syscall.SIGTERM) //nolint:errcheck
		for i := 0; c.isRunning(name); i++ {
			if i == 100 { // 5 s
				syscall.Kill(pid, syscall.SIGKILL) //nolint:errcheck
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	os.Remove(c.path("pids", name+".pid"))
}

func (c *cluster) isRunning(name string) bool { _, ok := c.running(name); return ok }

// waitReady polls the component's probe until it passes, the process exits,
// or the deadline passes.
func (c *cluster) waitReady(name string, deadline time.Time, check func() error) error {
	for {
		err := check()
		if err == nil {
			return nil
		}
		if exit, ok := c.exits[name]; ok {
			select {
			case werr := <-exit:
				exit <- werr
				return fmt.Errorf("%s exited: %v", name, werr)
			default:
			}
		} else if !c.isRunning(name) {
			return fmt.Errorf("%s is not running", name)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready in time: %v", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// await waits for the component's probe once, printing when it passed.
func (c *cluster) await(name string, deadline time.Time) error {
	if c.ready[name] {
		return nil
	}
	if err := c.waitReady(name, deadline, func() error { return c.probe(name) }); err != nil {
		return err
	}
	c.ready[name] = true
	fmt.Printf("  %-24s ready at %.1fs\n", name, time.Since(c.began).Seconds())
	return nil
}

// tail prints the end of the component's log.
func (c *cluster) tail(name string, lines int) {
	b, _ := os.ReadFile(c.path("logs", name+".log"))
	l := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	fmt.Fprintf(os.Stderr, "--- last %d lines of %s ---\n%s\n---\n", len(l), c.path("logs", name+".log"), strings.Join(l, "\n"))
}

func (c *cluster) loadPorts() error {
	b, err := os.ReadFile(c.path("ports.json"))
	if err != nil {
		return err
	}
	return json.Unmarshal(b, &c.ports)
}

func openCluster(dir string) (*cluster, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	return &cluster{dir: abs, exits: map[string]chan error{}, ready: map[string]bool{}, began: time.Now()}, nil
}

// freePorts asks the kernel for distinct unused loopback ports (all
// listeners stay open until every port is picked, so none repeats).
func freePorts(ports ...*int) error {
	for _, p := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer l.Close()
		*p = l.Addr().(*net.TCPAddr).Port
	}
	return nil
}

func runUp() int {
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	helm := fs.String("helm", os.Getenv("IDO_HELM"), "helm binary to name in DIR/env (default $IDO_HELM)")
	kubectl := fs.String("kubectl", os.Getenv("IDO_KUBECTL"), "kubectl to name in DIR/env (default $IDO_KUBECTL, else DIR/bin/kubectl -> this binary)")
	timeout := fs.Duration("timeout", 90*time.Second, "give up when not ready after this long")
	fs.Parse(os.Args[1:]) //nolint:errcheck
	if fs.NArg() > 0 {    // allow flags after DIR too
		fs.Parse(append(fs.Args()[1:], fs.Arg(0))) //nolint:errcheck
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: ido-k8s up DIR [--helm PATH] [--kubectl PATH] [--timeout D]")
		return 2
	}
	c, err := openCluster(fs.Arg(0))
	if err == nil {
		err = c.up(*helm, *kubectl, c.began.Add(*timeout))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ido-k8s up:", err)
		return 1
	}
	fmt.Printf("cluster %s ready in %.1fs: export KUBECONFIG=%s\n", c.dir, time.Since(c.began).Seconds(), c.path("kubeconfig"))
	return 0
}

func (c *cluster) up(helm, kubectl string, deadline time.Time) error {
	for _, d := range []string{"pids", "logs", "cmdline", "bin"} {
		if err := os.MkdirAll(c.path(d), 0o755); err != nil {
			return err
		}
	}
	if err := c.writeEnv(helm, kubectl); err != nil {
		return err
	}
	// Already up (all three ours and alive)? Then only check readiness.
	alive := 0
	for _, name := range order {
		if c.isRunning(name) {
			alive++
		}
	}
	if alive == len(order) && c.loadPorts() == nil {
		fmt.Println("already running")
		return c.waitAll(deadline)
	}
	for i := len(order) - 1; i >= 0; i-- { // leftovers of a half-dead cluster
		c.stop(order[i])
	}

	if err := ensurePKI(c.path("pki")); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := freePorts(&c.ports.Etcd, &c.ports.EtcdPeer, &c.ports.APIServer, &c.ports.ControllerManager); err != nil {
		return err
	}
	b, _ := json.Marshal(c.ports)
	if err := os.WriteFile(c.path("ports.json"), b, 0o644); err != nil {
		return err
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", c.ports.APIServer)
	if err := writeKubeconfig(c.path("kubeconfig"), c.path("pki"), server, "admin"); err != nil {
		return err
	}
	if err := writeKubeconfig(c.path("controller-manager.kubeconfig"), c.path("pki"), server, "kube-controller-manager"); err != nil {
		return err
	}

	// etcd and the apiserver start together (the apiserver retries etcd);
	// the controller-manager once the apiserver is ready.
	for _, name := range order {
		if name == "kube-controller-manager" {
			for _, dep := range order[:2] {
				if err := c.await(dep, deadline); err != nil {
					return c.abort(dep, err)
				}
			}
		}
		if err := c.start(name, c.args(name)); err != nil {
			return c.abort(name, err)
		}
	}
	return c.waitAll(deadline)
}

// waitAll waits until every component answers its probe, then for the
// `default` ServiceAccount in `default`: the sign that the controllers work.
func (c *cluster) waitAll(deadline time.Time) error {
	for _, name := range order {
		if err := c.await(name, deadline); err != nil {
			return c.abort(name, err)
		}
	}
	sa := func() error {
		return c.get("admin", c.ports.APIServer, "/api/v1/namespaces/default/serviceaccounts/default", `"name":"default"`)
	}
	if err := c.waitReady("kube-controller-manager", deadline, sa); err != nil {
		return c.abort("kube-controller-manager", fmt.Errorf("no default ServiceAccount: %w", err))
	}
	return nil
}

// abort shows the failing component's log and stops what this process started.
func (c *cluster) abort(name string, err error) error {
	c.tail(name, 40)
	for i := len(order) - 1; i >= 0; i-- {
		if _, started := c.exits[order[i]]; started {
			c.stop(order[i])
		}
	}
	return err
}

// writeEnv writes DIR/env: KUBECONFIG, KUBECTL and HELM as shell assignments.
func (c *cluster) writeEnv(helm, kubectl string) error {
	if kubectl == "" {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		kubectl = c.path("bin", "kubectl")
		os.Remove(kubectl)
		if err := os.Symlink(self, kubectl); err != nil {
			return err
		}
	}
	var env strings.Builder
	for _, kv := range [][2]string{{"KUBECONFIG", c.path("kubeconfig")}, {"KUBECTL", kubectl}, {"HELM", helm}} {
		v := kv[1]
		if v != "" {
			if abs, err := filepath.Abs(v); err == nil {
				v = abs
			}
		}
		fmt.Fprintf(&env, "%s=%s\n", kv[0], shellQuote(v))
	}
	return os.WriteFile(c.path("env"), []byte(env.String()), 0o644)
}

// shellQuote leaves plain paths bare and single-quotes anything else.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func runDown() int {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: ido-k8s down DIR")
		return 2
	}
	c, err := openCluster(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "ido-k8s down:", err)
		return 1
	}
	for i := len(order) - 1; i >= 0; i-- {
		c.stop(order[i])
	}
	return 0
}

func runRestart() int {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: ido-k8s restart DIR etcd|kube-apiserver|kube-controller-manager")
		return 2
	}
	c, err := openCluster(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "ido-k8s restart:", err)
		return 1
	}
	name := os.Args[2]
	saved, err := os.ReadFile(c.path("cmdline", name))
	if err == nil {
		err = c.loadPorts()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ido-k8s restart: %s was never started in %s: %v\n", name, c.dir, err)
		return 1
	}
	argv := strings.Split(strings.TrimSuffix(string(saved), "\x00"), "\x00")
	c.stop(name)
	if err := c.start(name, argv[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ido-k8s restart:", err)
		return 1
	}
	if err := c.waitReady(name, c.began.Add(60*time.Second), func() error { return c.probe(name) }); err != nil {
		c.tail(name, 40)
		fmt.Fprintln(os.Stderr, "ido-k8s restart:", err)
		return 1
	}
	fmt.Printf("%s restarted in %.1fs\n", name, time.Since(c.began).Seconds())
	return 0
}
