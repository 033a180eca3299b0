// spiffe-bundle reads a SPIFFE trust bundle the way every go-spiffe client (SPIRE among them)
// reads one, with go-spiffe's spiffebundle package, so the tests can check that what our bundle
// endpoint serves is a bundle an independent SPIFFE implementation accepts.
//
//	spiffe-bundle <trust domain> <bundle file>
//	spiffe-bundle fetch <trust domain> <url> <endpoint SPIFFE ID> <bootstrap PEM file>
//
// The second form fetches the bundle from a bundle endpoint as a go-spiffe federation client
// does (federation.FetchBundle with the https_spiffe profile, authenticated by the bootstrap
// roots), so the tests can check that our endpoint is one SPIRE-style peers can follow.
//
// It prints one line per X.509 authority ("x509 <SHA-256 of the DER>"), then "sequence <n>" and
// "refresh_hint <seconds>" when the bundle sets them; a bundle go-spiffe refuses is go-spiffe's
// error on stderr and exit code 1.
package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func main() {
	if len(os.Args) == 6 && os.Args[1] == "fetch" {
		fetch(os.Args[2], os.Args[3], os.Args[4], os.Args[5])
		return
	}
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: spiffe-bundle <trust domain> <bundle file>")
		os.Exit(2)
	}
	td, err := spiffeid.TrustDomainFromString(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	data, err := os.ReadFile(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	bundle, err := spiffebundle.Parse(td, data)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	show(bundle)
}

func fetch(trustDomain, url, endpointID, bootstrapFile string) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	id, err := spiffeid.FromString(endpointID)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	roots, err := x509bundle.Load(id.TrustDomain(), bootstrapFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bundle, err := federation.FetchBundle(ctx, td, url, federation.WithSPIFFEAuth(roots, id))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	show(bundle)
}

func show(bundle *spiffebundle.Bundle) {
	for _, authority := range bundle.X509Authorities() {
		fmt.Printf("x509 %x\n", sha256.Sum256(authority.Raw))
	}
	if sequence, ok := bundle.SequenceNumber(); ok {
		fmt.Printf("sequence %d\n", sequence)
	}
	if hint, ok := bundle.RefreshHint(); ok {
		fmt.Printf("refresh_hint %d\n", int64(hint.Seconds()))
	}
}
