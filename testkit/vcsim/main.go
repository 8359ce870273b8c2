// Command ido-vcsim is the project's vCenter simulator: govmomi's simulator library (Debian's
// golang-github-vmware-govmomi-dev) behind a small main, since the package ships no vcsim binary.
//
// It prints the SDK URL on its first stdout line once it serves, and runs until killed.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"

	_ "github.com/vmware/govmomi/lookup/simulator"
	_ "github.com/vmware/govmomi/pbm/simulator"
	_ "github.com/vmware/govmomi/sts/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator"
)

func main() {
	listen := flag.String("l", "127.0.0.1:0", "listen address")
	certFile := flag.String("cert", "", "TLS certificate (PEM); with -key, serve HTTPS with it")
	keyFile := flag.String("key", "", "TLS private key (PEM)")
	plain := flag.Bool("plain", false, "serve plain HTTP")
	username := flag.String("username", "", "accepted user name (default: any non-empty)")
	password := flag.String("password", "", "accepted password (default: any non-empty)")
	idle := flag.Duration("idle-timeout", 0, "expire sessions idle this long (0: never)")
	hosts := flag.Int("cluster-hosts", 3, "hosts per cluster")
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
	u := *server.URL
	u.User = nil
	fmt.Println(u.String())
	os.Stdout.Sync()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	server.Close()
}
