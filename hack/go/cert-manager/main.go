// Command meshca-cert-manager runs cert-manager's own controllers and its admission webhook as
// plain processes against a local kube-apiserver, for mesh-ca-issuer's tests and demo. No line
// of cert-manager is copied here: this file only wires cert-manager's packages (pinned in go.mod)
// the way cert-manager's cmd/controller and cmd/webhook do. Those two commands are modules of
// their own that point at the main module with `replace ../../`, so the Go module proxy cannot
// serve them; this small main takes their place.
//
//	meshca-cert-manager controller --kubeconfig FILE --namespace NS --readyz-listen-address 127.0.0.1:PORT
//	meshca-cert-manager webhook --kubeconfig FILE --secure-port PORT --tls-cert-file F --tls-private-key-file F
//
// What differs from cert-manager's own controller binary, and why:
//   - Only the controllers an external issuer meets are linked in (the Certificate controllers
//     and the CertificateRequest approver), not ACME, Vault, Venafi or the ingress shims: the
//     build stays small and nothing here needs them.
//   - No leader election: the tests start one controller per namespace (--namespace), never two
//     for the same objects.
//   - Its flags are a subset of cert-manager's (same names, meanings and defaults): no config
//     file, and no ACME, ingress or Gateway API settings.
//   - No metrics or pprof listeners; instead /readyz on --readyz-listen-address answers 200 once
//     every informer cache has synced, so a caller waits on a signal, not on a sleep.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	webhookvalidation "github.com/cert-manager/cert-manager/internal/apis/config/webhook/validation"
	"github.com/cert-manager/cert-manager/internal/cmd/util"
	cmwebhook "github.com/cert-manager/cert-manager/internal/webhook"
	"github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	cmutil "github.com/cert-manager/cert-manager/pkg/util"
	utilfeature "github.com/cert-manager/cert-manager/pkg/util/feature"
	webhookoptions "github.com/cert-manager/cert-manager/pkg/webhook/options"
	cliflag "k8s.io/component-base/cli/flag"
	logsapi "k8s.io/component-base/logs/api/v1"

	// Each of these registers its controller with controller.Known() in an init function, as the
	// blank imports of cert-manager's cmd/controller/app do.
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
)

func main() {
	ctx, exit := util.SetupExitHandler(context.Background(), util.GracefulShutdown)
	defer exit() // may call os.Exit: deferred first, runs last

	logf.InitLogs()
	defer logf.FlushLogs()

	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: meshca-cert-manager controller|webhook|version [flags]")
		util.SetExitCodeValue(2)
		return
	}
	var err error
	switch os.Args[1] {
	case "controller":
		err = runController(logf.NewContext(ctx, logf.Log, "controller"), os.Args[2:])
	case "webhook":
		err = runWebhook(logf.NewContext(ctx, logf.Log, "webhook"), os.Args[2:])
	case "version":
		fmt.Println(cmutil.VersionInfo().GitVersion)
	default:
		err = fmt.Errorf("unknown command %q: want controller, webhook or version", os.Args[1])
	}
	if errors.Is(err, pflag.ErrHelp) {
		return
	}
	if err != nil {
		logf.Log.Error(err, "meshca-cert-manager failed")
		util.SetExitCode(err)
	}
}

// === controller ===

// controllerSettings are the controller flags this binary takes: cert-manager's names, meanings
// and defaults (internal/apis/config/controller/v1alpha1/defaults.go). That package is not
// imported because it imports every controller cert-manager has, and with them the Venafi
// client, whose module the Go module proxy does not serve.
type controllerSettings struct {
	kubeconfig               string
	namespace                string
	clusterResourceNamespace string
	qps                      float32
	burst                    int
	workers                  int
	minimumBackoff           time.Duration
	maximumBackoff           time.Duration
	enableOwnerRef           bool
	copiedAnnotationPrefixes []string
	featureGates             map[string]bool
	controllers              []string
	readyzAddress            string
	logging                  logsapi.LoggingConfiguration
}

func runController(ctx context.Context, args []string) error {
	log := logf.FromContext(ctx)

	cfg := controllerSettings{featureGates: map[string]bool{}}
	logsapi.SetRecommendedLoggingConfiguration(&cfg.logging)
	fs := pflag.NewFlagSet("controller", pflag.ContinueOnError)
	fs.StringVar(&cfg.kubeconfig, "kubeconfig", "", "path to a kubeconfig")
	fs.StringVar(&cfg.namespace, "namespace", "", "watch only this namespace (cluster-scoped controllers off)")
	fs.StringVar(&cfg.clusterResourceNamespace, "cluster-resource-namespace", "kube-system", "namespace of resources owned by cluster-scoped issuers")
	fs.Float32Var(&cfg.qps, "kube-api-qps", 20, "queries per second to the API server")
	fs.IntVar(&cfg.burst, "kube-api-burst", 50, "burst of queries to the API server")
	fs.IntVar(&cfg.workers, "concurrent-workers", 5, "workers per controller")
	fs.DurationVar(&cfg.minimumBackoff, "certificate-request-minimum-backoff-duration", time.Hour, "first back-off after a failed issuance, doubled per further failure")
	fs.DurationVar(&cfg.maximumBackoff, "certificate-request-maximum-backoff-duration", 32*time.Hour, "longest back-off after failed issuances")
	fs.BoolVar(&cfg.enableOwnerRef, "enable-certificate-owner-ref", false, "make Certificates own their Secrets")
	fs.StringSliceVar(&cfg.copiedAnnotationPrefixes, "copied-annotation-prefixes", []string{"*", "-kubectl.kubernetes.io/", "-fluxcd.io/", "-argocd.argoproj.io/"}, "annotation prefixes copied from a Certificate to its requests ('-' excludes)")
	fs.Var(cliflag.NewMapStringBool(&cfg.featureGates), "feature-gates", "feature gates: key=value pairs")
	fs.StringSliceVar(&cfg.controllers, "controllers", []string{"*"}, "controllers to run: '*' (every linked one), names, or '-name' to leave one out; linked: "+strings.Join(linkedControllers(), ", "))
	fs.StringVar(&cfg.readyzAddress, "readyz-listen-address", "", "host:port for /readyz, 200 once every informer cache has synced (empty: off)")
	logf.AddFlags(&cfg.logging, fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := utilfeature.DefaultMutableFeatureGate.SetFromMap(cfg.featureGates); err != nil {
		return fmt.Errorf("invalid --feature-gates: %w", err)
	}
	if cfg.minimumBackoff <= 0 || cfg.maximumBackoff < cfg.minimumBackoff {
		return fmt.Errorf("invalid back-off: want 0 < --certificate-request-minimum-backoff-duration (%s) <= --certificate-request-maximum-backoff-duration (%s)", cfg.minimumBackoff, cfg.maximumBackoff)
	}
	if err := logf.ValidateAndApply(&cfg.logging); err != nil {
		return fmt.Errorf("invalid logging flags: %w", err)
	}
	enabled, err := enabledControllers(cfg.controllers)
	if err != nil {
		return err
	}

	version := cmutil.VersionInfo()
	log.Info("starting cert-manager controller (meshca-cert-manager)", "version", version.GitVersion, "go_version", version.GoVersion, "controllers", strings.Join(enabled, ","), "namespace", cfg.namespace)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)

	factory, err := controller.NewContextFactory(ctx, controller.ContextOptions{
		Kubeconfig:         cfg.kubeconfig,
		KubernetesAPIQPS:   cfg.qps,
		KubernetesAPIBurst: cfg.burst,
		Namespace:          cfg.namespace,
		IssuerOptions: controller.IssuerOptions{
			ClusterResourceNamespace: cfg.clusterResourceNamespace,
		},
		CertificateOptions: controller.CertificateOptions{
			EnableOwnerRef:                           cfg.enableOwnerRef,
			CopiedAnnotationPrefixes:                 cfg.copiedAnnotationPrefixes,
			CertificateRequestMinimumBackoffDuration: cfg.minimumBackoff,
			CertificateRequestMaximumBackoffDuration: cfg.maximumBackoff,
		},
	})
	if err != nil {
		return err
	}
	base, err := factory.Build()
	if err != nil {
		return err
	}

	known := controller.Known()
	for _, name := range enabled {
		iface, err := known[name](factory)
		if err != nil {
			cancel()
			return errors.Join(fmt.Errorf("starting controller %s: %w", name, err), g.Wait())
		}
		log.Info("starting controller", "controller", name)
		g.Go(func() error { return iface.Run(cfg.workers, ctx) })
	}

	// Every controller registered its informers above; starting the factories now starts them all.
	base.SharedInformerFactory.Start(ctx.Done())
	base.KubeSharedInformerFactory.Start(ctx.Done())
	base.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())

	var ready atomic.Bool
	g.Go(func() error {
		base.SharedInformerFactory.WaitForCacheSync(ctx.Done())
		base.KubeSharedInformerFactory.WaitForCacheSync(ctx.Done())
		if ctx.Err() != nil {
			return nil
		}
		// Each controller starts its workers as soon as its own caches have synced; what was
		// queued meanwhile stays queued, so from here on no change is missed.
		ready.Store(true)
		log.Info("informer caches synced: ready")
		return nil
	})
	if cfg.readyzAddress != "" {
		if err := serveReadyz(ctx, g, cfg.readyzAddress, &ready); err != nil {
			cancel()
			return errors.Join(err, g.Wait())
		}
	}

	if err := g.Wait(); err != nil {
		return fmt.Errorf("controller stopped: %w", err)
	}
	base.KubeSharedInformerFactory.Shutdown()
	base.SharedInformerFactory.Shutdown()
	log.Info("control loops exited")
	return nil
}

// linkedControllers lists the controllers this binary carries, sorted.
func linkedControllers() []string {
	var names []string
	for name := range controller.Known() {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// enabledControllers reads --controllers as cert-manager does ('*', names, '-name'), except that
// naming a controller this binary does not carry is an error, not a silent no-op.
func enabledControllers(flags []string) ([]string, error) {
	linked := linkedControllers()
	var enabled, disabled []string
	for _, f := range flags {
		switch {
		case f == "*":
			enabled = append(enabled, linked...)
		case strings.HasPrefix(f, "-"):
			disabled = append(disabled, strings.TrimPrefix(f, "-"))
		default:
			enabled = append(enabled, f)
		}
	}
	if len(enabled) == 0 {
		enabled = append(enabled, linked...)
	}
	var out []string
	for _, name := range append(enabled, disabled...) {
		if !slices.Contains(linked, name) {
			return nil, fmt.Errorf("controller %q is not linked into meshca-cert-manager (linked: %s)", name, strings.Join(linked, ", "))
		}
	}
	for _, name := range enabled {
		if !slices.Contains(disabled, name) && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out, nil
}

func serveReadyz(ctx context.Context, g *errgroup.Group, address string, ready *atomic.Bool) error {
	listener, err := (&net.ListenConfig{}).Listen(ctx, "tcp", address)
	if err != nil {
		return fmt.Errorf("listening on --readyz-listen-address %s: %w", address, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ready.Load() {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return server.Shutdown(shutdown) //nolint:contextcheck // the root context is already done
	})
	g.Go(func() error {
		if err := server.Serve(listener); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	return nil
}

// === webhook ===

// runWebhook is cert-manager's webhook: defaulting, validation, and the check that whoever sets
// Approved or Denied on a CertificateRequest may `approve` its issuer's `signers` (the rule
// approver-policy-shaped RBAC relies on). Its flags are cert-manager's own (pkg/webhook/options).
func runWebhook(ctx context.Context, args []string) error {
	log := logf.FromContext(ctx)
	cfg, err := webhookoptions.NewWebhookConfiguration()
	if err != nil {
		return err
	}
	fs := pflag.NewFlagSet("webhook", pflag.ContinueOnError)
	webhookoptions.AddConfigFlags(fs, cfg)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := utilfeature.DefaultMutableFeatureGate.SetFromMap(cfg.FeatureGates); err != nil {
		return fmt.Errorf("invalid --feature-gates: %w", err)
	}
	if errs := webhookvalidation.ValidateWebhookConfiguration(cfg, nil); len(errs) > 0 {
		return fmt.Errorf("invalid flags: %w", errs.ToAggregate())
	}
	if err := logf.ValidateAndApply(&cfg.Logging); err != nil {
		return fmt.Errorf("invalid logging flags: %w", err)
	}
	version := cmutil.VersionInfo()
	log.Info("starting cert-manager webhook (meshca-cert-manager)", "version", version.GitVersion, "go_version", version.GoVersion)
	server, err := cmwebhook.NewCertManagerWebhookServer(log, *cfg)
	if err != nil {
		return err
	}
	return server.Run(ctx)
}
