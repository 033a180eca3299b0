// spiffe-bundle reads a SPIFFE trust bundle the way every go-spiffe client (SPIRE among them)
// reads one, with go-spiffe's spiffebundle package, so the tests can check that what our bundle
// endpoint serves is a bundle an independent SPIFFE implementation accepts.
//
//	spiffe-bundle <trust domain> <bundle file>
//
// It prints one line per X.509 authority ("x509 <SHA-256 of the DER>"), then "sequence <n>" and
// "refresh_hint <seconds>" when the bundle sets them; a bundle go-spiffe refuses is go-spiffe's
// error on stderr and exit code 1.
package main

import (
	"crypto/sha256"
	"fmt"
	"os"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func main() {
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
