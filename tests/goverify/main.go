// goverify judges certificates the way istiod does: with Go's own crypto/x509.
//
// istiod is written in Go; what it accepts is what x509.Verify accepts (path length, CA:TRUE on
// intermediates, extended key usages, URI and DNS name constraints, validity). The tests run
// every bundle they write through this program, next to openssl. Standard library only: it is
// built with Debian's golang-go and no module can be fetched.
//
// Usage:
//
//	goverify cacerts DIR [--at RFC3339]
//	    istiod's load-time check of a cacerts bundle (pilot/pkg/bootstrap/istio_ca.go and
//	    security/pkg/pki/util/keycertbundle.go): x509.Verify of the first certificate of
//	    ca-cert.pem with cert-chain.pem as intermediates against every root in root-cert.pem
//	    (default key usage: serverAuth), then the key parses and matches the certificate; with a
//	    non-empty ca-crl.pem, every certificate of cert-chain.pem must have a CRL in it whose
//	    signature checks from that certificate (istiod 1.27+, "missing CRL signed by ...").
//	    When tls.crt exists the TLS format wins, as in istiod: chain = tls.crt then ca.crt,
//	    root = ca.crt, key = tls.key.
//
//	goverify chain --leaf FILE --roots FILE [--chain FILE] [--eku server|client|any] [--at RFC3339]
//	    x509.Verify of the first certificate of --leaf (a workload certificate) with the other
//	    certificates of --leaf and every certificate of --chain as intermediates, against every
//	    certificate of --roots.
//
// Exit status: 0 verified (prints "OK"), 1 refused (prints why), 2 bad usage or unreadable input.
package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "cacerts":
		err = cacerts(os.Args[2:])
	case "chain":
		err = chain(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		var bad usageError
		if errors.As(err, &bad) {
			fmt.Fprintln(os.Stderr, "goverify:", err)
			os.Exit(2)
		}
		fmt.Println("REFUSED:", err)
		os.Exit(1)
	}
	fmt.Println("OK")
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usage() {
	fmt.Fprintln(os.Stderr, "usage: goverify cacerts DIR [--at RFC3339] | goverify chain --leaf FILE --roots FILE [--chain FILE] [--eku server|client|any] [--at RFC3339]")
	os.Exit(2)
}

func parseAt(s string) (time.Time, error) {
	if s == "" {
		return time.Now(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, usageError{fmt.Sprintf("--at %q: %v", s, err)}
	}
	return t, nil
}

func readFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usageError{err.Error()}
	}
	return b, nil
}

// certs parses every CERTIFICATE block of a PEM file; other blocks are an error, so a key or
// garbage passed as a certificate is never ignored silently.
func certs(what string, data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: PEM block %q is not a certificate", what, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", what, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no PEM certificate", what)
	}
	return out, nil
}

func pool(cs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range cs {
		p.AddCert(c)
	}
	return p
}

func cacerts(args []string) error {
	fs := flag.NewFlagSet("cacerts", flag.ContinueOnError)
	at := fs.String("at", "", "verification time (RFC 3339), default now")
	if len(args) < 1 {
		return usageError{"cacerts needs a directory"}
	}
	dir := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return usageError{err.Error()}
	}
	now, err := parseAt(*at)
	if err != nil {
		return err
	}
	var certPEM, keyPEM, chainPEM, rootPEM []byte
	if _, statErr := os.Stat(filepath.Join(dir, "tls.crt")); statErr == nil {
		// istiod: "If tls.crt exists the TLS format wins".
		tlsCrt, err := readFile(filepath.Join(dir, "tls.crt"))
		if err != nil {
			return err
		}
		if keyPEM, err = readFile(filepath.Join(dir, "tls.key")); err != nil {
			return err
		}
		if rootPEM, err = readFile(filepath.Join(dir, "ca.crt")); err != nil {
			return err
		}
		certPEM = tlsCrt
		chainPEM = append(append([]byte{}, tlsCrt...), rootPEM...)
	} else {
		if certPEM, err = readFile(filepath.Join(dir, "ca-cert.pem")); err != nil {
			return err
		}
		if keyPEM, err = readFile(filepath.Join(dir, "ca-key.pem")); err != nil {
			return err
		}
		if chainPEM, err = readFile(filepath.Join(dir, "cert-chain.pem")); err != nil {
			return err
		}
		if rootPEM, err = readFile(filepath.Join(dir, "root-cert.pem")); err != nil {
			return err
		}
	}
	signing, err := certs("signing certificate", certPEM)
	if err != nil {
		return err
	}
	chainCerts, err := certs("cert chain", chainPEM)
	if err != nil {
		return err
	}
	roots, err := certs("root certificates", rootPEM)
	if err != nil {
		return err
	}
	// istiod passes no KeyUsages, so x509.Verify requires serverAuth wherever an EKU is set.
	if _, err := signing[0].Verify(x509.VerifyOptions{
		Intermediates: pool(chainCerts),
		Roots:         pool(roots),
		CurrentTime:   now,
	}); err != nil {
		return fmt.Errorf("cannot verify the cert with the provided root chain and cert pool: %v", err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return err
	}
	if !publicKeyEqual(signing[0].PublicKey, key.Public()) {
		return errors.New("the private key does not match the signing certificate")
	}
	if !signing[0].IsCA {
		return errors.New("the signing certificate is not a CA (istiod checks CA:TRUE at start)")
	}
	// istiod 1.27+ (keycertbundle.go Verify): a non-empty ca-crl.pem must hold, for every
	// certificate of cert-chain.pem, a CRL whose signature checks from it; otherwise the whole
	// bundle is refused.
	crlPEM, err := os.ReadFile(filepath.Join(dir, "ca-crl.pem"))
	if err == nil && len(crlPEM) != 0 {
		return crlsCoverChain(crlPEM, chainCerts)
	}
	return nil
}

// crlsCoverChain is istiod's CRL rule, with istiod's error text.
func crlsCoverChain(crlPEM []byte, chain []*x509.Certificate) error {
	var crls []*x509.RevocationList
	for rest := crlPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		crl, err := x509.ParseRevocationList(block.Bytes)
		if err != nil {
			return fmt.Errorf("failed to parse CRL PEM: %w", err)
		}
		crls = append(crls, crl)
	}
	var uncovered []string
	for _, ca := range chain {
		covered := false
		for _, crl := range crls {
			if crl.CheckSignatureFrom(ca) == nil {
				covered = true
				break
			}
		}
		if !covered {
			uncovered = append(uncovered, ca.Subject.String())
		}
	}
	if len(uncovered) != 0 {
		return fmt.Errorf("missing CRL signed by certificates: %v", uncovered)
	}
	return nil
}

func parseKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("private key: no PEM block")
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
		return nil, errors.New("private key: not a signing key")
	}
	if k, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	return nil, fmt.Errorf("private key: %q block is neither PKCS#8, SEC1 nor PKCS#1", block.Type)
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	switch k := a.(type) {
	case *ecdsa.PublicKey:
		return k.Equal(b)
	case *rsa.PublicKey:
		return k.Equal(b)
	case ed25519.PublicKey:
		return k.Equal(b)
	}
	return false
}

func chain(args []string) error {
	fs := flag.NewFlagSet("chain", flag.ContinueOnError)
	leafPath := fs.String("leaf", "", "PEM file whose first certificate is verified; the rest are intermediates")
	chainPath := fs.String("chain", "", "PEM file of further intermediates")
	rootsPath := fs.String("roots", "", "PEM file of trusted roots")
	eku := fs.String("eku", "server", "required extended key usage: server, client or any")
	at := fs.String("at", "", "verification time (RFC 3339), default now")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if *leafPath == "" || *rootsPath == "" {
		return usageError{"chain needs --leaf and --roots"}
	}
	now, err := parseAt(*at)
	if err != nil {
		return err
	}
	leafPEM, err := readFile(*leafPath)
	if err != nil {
		return err
	}
	rootPEM, err := readFile(*rootsPath)
	if err != nil {
		return err
	}
	leaf, err := certs("leaf", leafPEM)
	if err != nil {
		return err
	}
	roots, err := certs("roots", rootPEM)
	if err != nil {
		return err
	}
	intermediates := leaf[1:]
	if *chainPath != "" {
		chainPEM, err := readFile(*chainPath)
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(chainPEM)) > 0 {
			more, err := certs("chain", chainPEM)
			if err != nil {
				return err
			}
			intermediates = append(intermediates, more...)
		}
	}
	var usages []x509.ExtKeyUsage
	switch *eku {
	case "server":
		usages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	case "client":
		usages = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case "any":
		usages = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
	default:
		return usageError{fmt.Sprintf("--eku %q: want server, client or any", *eku)}
	}
	if _, err := leaf[0].Verify(x509.VerifyOptions{
		Intermediates: pool(intermediates),
		Roots:         pool(roots),
		CurrentTime:   now,
		KeyUsages:     usages,
	}); err != nil {
		return err
	}
	return nil
}
