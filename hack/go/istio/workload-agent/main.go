// workload-agent is a TEST STAND-IN for istio-agent's certificate path: it asks a real istiod
// for workload certificates exactly as a sidecar's istio-agent does, with Istio's own code, and
// prints what istiod gave back so the tests can judge it (Go's x509.Verify and openssl).
//
// What it takes from Istio (istio.io/istio, pinned in ../go.mod; nothing copied):
//   - the Citadel CA client (security/pkg/nodeagent/caclient/providers/citadel): gRPC to
//     IstioCertificateService/CreateCertificate on istiod's port 15012, TLS verified against the
//     roots in --ca-root (istio-agent's ./var/run/secrets/istio/root-cert.pem, which the kubelet
//     projects from the istio-ca-root-cert ConfigMap), server name istiod.<ns>.svc;
//   - the Kubernetes token plugin (security/pkg/credentialfetcher/plugin): the ServiceAccount
//     token (audience istio-ca) read from --token-file at every request, as istio-agent reads its
//     projected token;
//   - the secret manager (security/pkg/nodeagent/cache): key and CSR for
//     spiffe://<trust domain>/ns/<namespace>/sa/<service account>, and the split of istiod's
//     answer into the workload's certificate chain and the roots the workload holds (the last
//     element of the answer).
//
// What it is not: no Envoy, no SDS server, no rotation schedule of its own. Each request uses a
// fresh secret manager (so nothing is served from its cache) over one gRPC connection, which it
// re-dials on error as istio-agent does.
//
// Usage:
//
//	workload-agent --ca-address 127.0.0.1:15012 --ca-root root-cert.pem --token-file token \
//	    --namespace NS --service-account SA [--trust-domain cluster.local] [--ca-namespace istio-system] \
//	    [--cluster-id Kubernetes] [--ttl 1h] [--for DURATION --every 300ms] [--out FILE]
//
// Without --for it makes one request and exits 0 when istiod issued a certificate, 1 when not.
// With --for it requests every --every until the duration has passed and exits 0 (failures are
// records, for the caller to count). Each request is one JSON line on --out (default stdout):
//
//	{"requested_at": RFC3339Nano, "at": RFC3339Nano, "ok": bool, "error": "...",
//	 "elements": [every element of istiod's answer, in order],
//	 "chain": "the workload's certificate chain as istio-agent keeps it (PEM)",
//	 "roots": "the roots istio-agent holds from this answer (PEM)"}
//
// The private key is never printed.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"istio.io/istio/pkg/log"
	"istio.io/istio/pkg/security"
	"istio.io/istio/security/pkg/credentialfetcher/plugin"
	"istio.io/istio/security/pkg/nodeagent/cache"
	"istio.io/istio/security/pkg/nodeagent/caclient/providers/citadel"
)

// record is one request and what istiod answered.
type record struct {
	RequestedAt string   `json:"requested_at"`
	At          string   `json:"at"`
	OK          bool     `json:"ok"`
	Error       string   `json:"error,omitempty"`
	Elements    []string `json:"elements,omitempty"`
	Chain       string   `json:"chain,omitempty"`
	Roots       string   `json:"roots,omitempty"`
}

// recordingClient is the Citadel client with two changes that do not touch what is sent or
// received: it keeps istiod's last answer (so the record can show every element), and Close
// is a no-op, because each request's secret manager closes its CA client and the connection
// is shared across requests.
type recordingClient struct {
	*citadel.CitadelClient
	last []string
}

func (c *recordingClient) CSRSign(csrPEM []byte, ttl int64) ([]string, error) {
	chain, err := c.CitadelClient.CSRSign(csrPEM, ttl)
	c.last = chain
	return chain, err
}

func (c *recordingClient) Close() {}

func main() {
	caAddress := flag.String("ca-address", "", "istiod's CA gRPC address (port 15012), host:port")
	caRoot := flag.String("ca-root", "", "PEM roots that verify istiod's serving certificate")
	caNamespace := flag.String("ca-namespace", "istio-system", "istiod's namespace: the server name is istiod.<ns>.svc")
	tokenFile := flag.String("token-file", "", "ServiceAccount token with audience istio-ca (read at every request)")
	trustDomain := flag.String("trust-domain", "cluster.local", "the mesh's trust domain")
	namespace := flag.String("namespace", "", "the workload's namespace")
	serviceAccount := flag.String("service-account", "", "the workload's ServiceAccount")
	clusterID := flag.String("cluster-id", "Kubernetes", "istiod's cluster ID (sent as ClusterID metadata)")
	ttl := flag.Duration("ttl", time.Hour, "requested certificate lifetime")
	duration := flag.Duration("for", 0, "keep requesting for this long (0: one request)")
	every := flag.Duration("every", 300*time.Millisecond, "time between the starts of two requests with --for")
	outPath := flag.String("out", "", "file for the JSON lines (default stdout)")
	flag.Parse()
	if *caAddress == "" || *caRoot == "" || *tokenFile == "" || *namespace == "" || *serviceAccount == "" {
		fmt.Fprintln(os.Stderr, "workload-agent: --ca-address, --ca-root, --token-file, --namespace and --service-account are required")
		os.Exit(2)
	}
	// Istio's packages log through istio.io/istio/pkg/log: to stderr, so stdout stays JSON.
	logOptions := log.DefaultOptions()
	logOptions.OutputPaths = []string{"stderr"}
	logOptions.ErrorOutputPaths = []string{"stderr"}
	if err := log.Configure(logOptions); err != nil {
		fmt.Fprintln(os.Stderr, "workload-agent: configuring logs:", err)
		os.Exit(2)
	}

	var out io.Writer = os.Stdout
	if *outPath != "" {
		f, err := os.Create(*outPath)
		if err != nil {
			fmt.Fprintln(os.Stderr, "workload-agent:", err)
			os.Exit(2)
		}
		defer f.Close()
		out = f
	}

	// The options pilot-agent builds for a sidecar (pilot/cmd/pilot-agent/options/security.go),
	// with its defaults: RSA 2048 keys, no ECC.
	opts := &security.Options{
		CAEndpoint:         *caAddress,
		CAEndpointSAN:      "istiod." + *caNamespace + ".svc",
		ClusterID:          *clusterID,
		TrustDomain:        *trustDomain,
		WorkloadNamespace:  *namespace,
		ServiceAccount:     *serviceAccount,
		WorkloadRSAKeySize: 2048,
		SecretTTL:          *ttl,
		CredFetcher:        plugin.CreateTokenPlugin(*tokenFile),
	}
	citadelClient, err := citadel.NewCitadelClient(opts, &citadel.TLSOptions{RootCert: *caRoot})
	if err != nil {
		fmt.Fprintln(os.Stderr, "workload-agent: connecting to istiod:", err)
		os.Exit(1)
	}
	defer citadelClient.Close()
	client := &recordingClient{CitadelClient: citadelClient}

	encoder := json.NewEncoder(out)
	deadline := time.Now().Add(*duration)
	for {
		started := time.Now()
		rec := request(client, opts)
		if err := encoder.Encode(rec); err != nil {
			fmt.Fprintln(os.Stderr, "workload-agent: writing a record:", err)
			os.Exit(2)
		}
		if *duration == 0 {
			if !rec.OK {
				fmt.Fprintln(os.Stderr, "workload-agent: istiod issued no certificate:", rec.Error)
				os.Exit(1)
			}
			return
		}
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(time.Until(started.Add(*every)))
	}
}

// request asks istiod for one workload certificate through a fresh secret manager, as
// istio-agent does when its cached certificate is due.
func request(client *recordingClient, opts *security.Options) record {
	rec := record{RequestedAt: time.Now().UTC().Format(time.RFC3339Nano)}
	client.last = nil
	manager, err := cache.NewSecretManagerClient(client, opts)
	if err != nil {
		rec.At = time.Now().UTC().Format(time.RFC3339Nano)
		rec.Error = "creating the secret manager: " + err.Error()
		return rec
	}
	defer manager.Close()
	item, err := manager.GenerateSecret(security.WorkloadKeyCertResourceName)
	rec.At = time.Now().UTC().Format(time.RFC3339Nano)
	if err != nil {
		rec.Error = err.Error()
		return rec
	}
	rec.OK = true
	rec.Elements = client.last
	rec.Chain = string(item.CertificateChain)
	rec.Roots = string(item.RootCert)
	return rec
}
