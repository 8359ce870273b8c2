package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// runEtcd runs a single-member etcd (the embed package of the etcd release
// that k8s.io/kubernetes itself depends on) with mutual TLS on its client and
// peer URLs, until SIGTERM/SIGINT.
func runEtcd() int {
	fs := flag.NewFlagSet("etcd", flag.ExitOnError)
	dataDir := fs.String("data-dir", "", "data directory (required)")
	clientURL := fs.String("listen-client-url", "https://127.0.0.1:2379", "client URL")
	peerURL := fs.String("listen-peer-url", "https://127.0.0.1:2380", "peer URL")
	cert := fs.String("cert-file", "", "serving (and peer) certificate")
	key := fs.String("key-file", "", "key of --cert-file")
	ca := fs.String("trusted-ca-file", "", "CA that signs client and peer certificates")
	noFsync := fs.Bool("unsafe-no-fsync", false, "skip fsync: faster, survives process kills but not OS crashes")
	fs.Parse(os.Args[1:]) //nolint:errcheck // ExitOnError
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "etcd: --data-dir is required")
		return 2
	}

	cfg := embed.NewConfig()
	cfg.Name = "ido"
	cfg.Dir = *dataDir
	cfg.LogLevel = "warn"
	cfg.UnsafeNoFsync = *noFsync
	cu, err := url.Parse(*clientURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 2
	}
	pu, err := url.Parse(*peerURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 2
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	if *cert != "" {
		cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile = *cert, *key
		cfg.ClientTLSInfo.TrustedCAFile, cfg.ClientTLSInfo.ClientCertAuth = *ca, true
		cfg.PeerTLSInfo = cfg.ClientTLSInfo // the certificate is valid for both uses
	}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-e.Server.ReadyNotify():
		fmt.Fprintln(os.Stderr, "etcd: ready to serve clients on", *clientURL)
	case s := <-sig:
		return stopEtcd(e, s.String())
	}
	select {
	case err := <-e.Err():
		stopEtcd(e, err.Error())
		return 1
	case s := <-sig:
		return stopEtcd(e, s.String())
	}
}

// stopEtcd closes etcd but waits at most 2 s: Close drains client
// connections (the apiserver's watch streams) for its whole request timeout,
// which would make every restart slow. Exiting earlier is as safe as a crash,
// which etcd recovers from through its WAL.
func stopEtcd(e *embed.Etcd, why string) int {
	done := make(chan struct{})
	go func() { e.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	fmt.Fprintln(os.Stderr, "etcd: stopped:", why)
	return 0
}
