package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// serviceIP is the first address of the service range given to the apiserver
// (the ClusterIP of the `kubernetes` Service); nothing routes to it here.
const (
	serviceCIDR = "10.96.0.0/16"
	serviceIP   = "10.96.0.1"
)

// leaf describes one certificate signed by the cluster CA, stored as
// pki/<name>.crt and pki/<name>.key.
type leaf struct {
	name   string
	cn     string
	orgs   []string
	usages []x509.ExtKeyUsage
	dns    []string
	ips    []string
}

var (
	serverAuth = x509.ExtKeyUsageServerAuth
	clientAuth = x509.ExtKeyUsageClientAuth
	leaves     = []leaf{
		{name: "apiserver", cn: "kube-apiserver", usages: []x509.ExtKeyUsage{serverAuth},
			dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			ips: []string{"127.0.0.1", serviceIP}},
		// etcd uses one certificate for its client URL and for its peer URL.
		{name: "etcd", cn: "etcd", usages: []x509.ExtKeyUsage{serverAuth, clientAuth},
			dns: []string{"localhost"}, ips: []string{"127.0.0.1"}},
		{name: "apiserver-etcd-client", cn: "kube-apiserver-etcd-client", usages: []x509.ExtKeyUsage{clientAuth}},
		{name: "admin", cn: "ido-admin", orgs: []string{"system:masters"}, usages: []x509.ExtKeyUsage{clientAuth}},
		// The controller-manager's client identity, also its serving certificate.
		{name: "kube-controller-manager", cn: "system:kube-controller-manager", usages: []x509.ExtKeyUsage{clientAuth, serverAuth},
			dns: []string{"localhost"}, ips: []string{"127.0.0.1"}},
	}
)

// ensurePKI creates DIR/pki with a per-cluster CA, the leaf certificates
// above and the service-account key pair. Whatever already exists is kept, so
// kubeconfigs stay valid across down/up of the same DIR.
func ensurePKI(pki string) error {
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return err
	}
	caCert, caKey, err := loadPair(pki, "ca")
	if err != nil {
		tmpl := certTemplate("ido-k8s-ca", nil, 10*365*24*time.Hour)
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
		if caCert, caKey, err = createPair(pki, "ca", tmpl, nil, nil); err != nil {
			return err
		}
	}
	for _, l := range leaves {
		if _, _, err := loadPair(pki, l.name); err == nil {
			continue
		}
		tmpl := certTemplate(l.cn, l.orgs, 365*24*time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage, tmpl.DNSNames = l.usages, l.dns
		for _, ip := range l.ips {
			tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
		}
		if _, _, err := createPair(pki, l.name, tmpl, caCert, caKey); err != nil {
			return err
		}
	}
	// Service-account token signing key (sa.key) and verifying key (sa.pub).
	if _, err := os.Stat(filepath.Join(pki, "sa.pub")); err != nil {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
		if err != nil {
			return err
		}
		if err := writeKey(filepath.Join(pki, "sa.key"), key); err != nil {
			return err
		}
		return writePEM(filepath.Join(pki, "sa.pub"), "PUBLIC KEY", pub, 0o644)
	}
	return nil
}

func certTemplate(cn string, orgs []string, validity time.Duration) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    now.Add(-time.Hour), // tolerate small clock differences
		NotAfter:     now.Add(validity),
	}
}

// createPair makes an ECDSA P-256 key and a certificate from tmpl, signed by
// the parent (self-signed when parent is nil), and writes both files.
func createPair(dir, name string, tmpl, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	if err := writeKey(filepath.Join(dir, name+".key"), key); err != nil {
		return nil, nil, err
	}
	return cert, key, writePEM(filepath.Join(dir, name+".crt"), "CERTIFICATE", der, 0o644)
}

func loadPair(dir, name string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, name+".crt"))
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, name+".key"))
	if err != nil {
		return nil, nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, errors.New("bad PEM in " + name)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%s.key is not a signing key", name)
	}
	return cert, signer, nil
}

func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

// writeKubeconfig writes a kubeconfig for the client certificate
// pki/<user>.crt, with every certificate embedded.
func writeKubeconfig(path, pki, server, user string) error {
	read := func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(pki, name)) }
	ca, err := read("ca.crt")
	if err != nil {
		return err
	}
	crt, err := read(user + ".crt")
	if err != nil {
		return err
	}
	key, err := read(user + ".key")
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["ido"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: crt, ClientKeyData: key}
	cfg.Contexts["ido"] = &clientcmdapi.Context{Cluster: "ido", AuthInfo: user}
	cfg.CurrentContext = "ido"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}
