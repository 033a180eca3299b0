// Istio's Helm charts (istiod's istio-discovery, ztunnel) for the tests of `meshca check` and
// for hack/demo: nothing is built from this module, only `go mod download -json istio.io/istio`
// run here, so the charts come through the Go module proxy pinned by this file and go.sum.
// (The same Istio pseudo-version as the real-istiod build; "served from an earlier copy, not an
// approved release", acceptable for a test dependency.)
module meshca.io/hack/go/istio-charts

go 1.26.0

require istio.io/istio v0.0.0-20260827124520-eed52ebb66ad
