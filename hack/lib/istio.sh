# shellcheck shell=bash
# Real istiod for the tests and the demo, built from istio.io/istio through the Go module proxy
# (pinned in hack/go/istio, nothing of Istio's code in this repository) and cached under
# ~/.cache/mesh-ca-issuer/istio-<version>-<pins>/:
#
#   pilot-discovery     istiod
#   workload-agent      our istio-agent stand-in on Istio's own CA client (hack/go/istio/workload-agent)
#   crd-all.gen.yaml    Istio's CRDs, from the same module
#   istiod-rbac.yaml    istiod's ServiceAccount, ClusterRoles, Roles and bindings, rendered by helm
#                       from the module's own istio-discovery chart
#   VERSION             what was built
#
# Sourced after hack/lib/common.sh, never executed.

# The Istio commit the pin names (hack/go/istio/go.mod): master of 2026-08-27, whose VERSION file
# says 1.31, i.e. Istio 1.31 in development. The proxy serves no tagged Istio release as a Go
# module, only pseudo-versions of master.
ISTIO_PSEUDO_VERSION="v0.0.0-20260827124520-eed52ebb66ad"
ISTIO_VERSION="1.31-dev"
ISTIO_MODULE="$MESHCA_REPO_ROOT/hack/go/istio"

# The directory the Istio artefacts are cached in (keyed by version and the pins).
istio_cache_dir() {
  printf '%s\n' "$MESHCA_CACHE_DIR/istio-$ISTIO_VERSION-$(go_module_key "$ISTIO_MODULE")"
}

# Builds (or finds in the cache) everything listed above; prints the directory.
ensure_istio() {
  local dir go_bin
  dir="$(istio_cache_dir)"
  go_bin="$(ensure_go)"
  mkdir -p "$dir"
  if [ ! -x "$dir/pilot-discovery" ] || ! "$dir/pilot-discovery" version --short >/dev/null 2>&1; then
    log "istiod (pilot-discovery $ISTIO_VERSION) is not cached: building it from istio.io/istio (about 20 minutes on 2 cores, once per machine)"
    # Built as Istio's Makefile builds its standard binaries (STANDARD_TAGS: vtprotobuf,
    # disable_pgv; static, -trimpath, stripped), with the version stamp its
    # common/scripts/report_build_info.sh would write, so istiod says what it is.
    local rev="${ISTIO_PSEUDO_VERSION##*-}"
    go_build_with_progress "istiod $ISTIO_VERSION" "$ISTIO_MODULE" istio.io/istio/pilot/cmd/pilot-discovery "$dir/pilot-discovery" \
      -tags vtprotobuf,disable_pgv \
      -ldflags "-s -w -X istio.io/istio/pkg/version.buildVersion=$ISTIO_VERSION -X istio.io/istio/pkg/version.buildGitRevision=$rev -X istio.io/istio/pkg/version.buildStatus=Clean -X istio.io/istio/pkg/version.buildTag=$ISTIO_PSEUDO_VERSION" ||
      die "building istiod failed; full log: $dir/pilot-discovery.log. Fix the cause (disk space, the Go module proxy unreachable) and run again."
  fi
  # The agent is our code: rebuilt whenever its source changes (seconds once istiod is built).
  local agent_key
  agent_key="$(sha256sum "$ISTIO_MODULE/workload-agent/main.go" | cut -c1-12)"
  if [ ! -x "$dir/workload-agent" ] || [ "$(cat "$dir/workload-agent.key" 2>/dev/null)" != "$agent_key" ]; then
    go_build_with_progress "workload-agent" "$ISTIO_MODULE" ./workload-agent "$dir/workload-agent" -ldflags "-s -w" ||
      die "building hack/go/istio/workload-agent failed; full log: $dir/workload-agent.log"
    printf '%s\n' "$agent_key" >"$dir/workload-agent.key"
  fi
  if [ ! -s "$dir/crd-all.gen.yaml" ] || [ ! -s "$dir/istiod-rbac.yaml" ]; then
    local src helm
    src="$(cd "$ISTIO_MODULE" && "$go_bin" list -m -f '{{.Dir}}' istio.io/istio)" ||
      die "could not find istio.io/istio in the module cache (cd hack/go/istio && go mod download)"
    cp "$src/manifests/charts/base/files/crd-all.gen.yaml" "$dir/crd-all.gen.yaml.part"
    chmod u+w "$dir/crd-all.gen.yaml.part"
    mv "$dir/crd-all.gen.yaml.part" "$dir/crd-all.gen.yaml"
    helm="$(ensure_helm)"
    "$helm" template istiod "$src/manifests/charts/istio-control/istio-discovery" --namespace istio-system \
      --show-only templates/serviceaccount.yaml \
      --show-only templates/clusterrole.yaml --show-only templates/clusterrolebinding.yaml \
      --show-only templates/role.yaml --show-only templates/rolebinding.yaml \
      >"$dir/istiod-rbac.yaml.part" || die "helm could not render istiod's RBAC from $src/manifests/charts/istio-control/istio-discovery"
    mv "$dir/istiod-rbac.yaml.part" "$dir/istiod-rbac.yaml"
  fi
  printf 'istio.io/istio %s (Istio %s), built with %s\n' "$ISTIO_PSEUDO_VERSION" "$ISTIO_VERSION" "$("$go_bin" version | awk '{print $3}')" >"$dir/VERSION"
  printf '%s\n' "$dir"
}

# === istiod in the demos (hack/demo --istiod, hack/demo-multicluster) ===
# The tests have their own fixture (tests/support/istiod.rs); these are the same steps in shell.

# Installs Istio's CRDs and istiod's RBAC into the cluster of $KUBECONFIG, with kubectl $1.
istio_install() {
  local kubectl="$1" dir
  dir="$(ensure_istio)"
  "$kubectl" apply --server-side --force-conflicts --field-manager=mesh-ca-issuer-demo -f "$dir/crd-all.gen.yaml" >/dev/null
  "$kubectl" wait --for=condition=Established --timeout=60s crd --all >/dev/null
  "$kubectl" apply --server-side --force-conflicts --field-manager=mesh-ca-issuer-demo -f "$dir/istiod-rbac.yaml" >/dev/null
}

# Starts istiod for the cluster of $KUBECONFIG (kubectl $1) in working directory $2, with mesh
# trust domain $3 and ISTIO_MULTIROOT_MESH=$4, the way Istio runs it outside a cluster:
# ./etc/cacerts projected from istio-system/cacerts by the kubelet stand-in ($5: the
# kubelet_stand_in example binary), ./etc/istio/config/mesh, a kubeconfig as its ServiceAccount
# istio-system/istiod (a TokenRequest token; the chart's RBAC), every port on a free loopback
# port. Waits for /ready. Sets ISTIOD_PID, KUBELET_PID, ISTIOD_CA_PORT and ISTIOD_LOG.
start_istiod() {
  local kubectl="$1" dir="$2" trust_domain="$3" multiroot="$4" kubelet="$5" istio server ca token user
  istio="$(ensure_istio)"
  mkdir -p "$dir/etc/istio/config"
  printf 'trustDomain: %s\nrootNamespace: istio-system\n' "$trust_domain" >"$dir/etc/istio/config/mesh"
  server="$("$kubectl" config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')"
  ca="$("$kubectl" config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
  token="$("$kubectl" -n istio-system create token istiod --duration 24h)"
  user="istiod"
  (
    umask 077
    cat >"$dir/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: cluster, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: $user, user: {token: "$token"}}]
contexts: [{name: istiod, context: {cluster: cluster, user: $user, namespace: istio-system}}]
current-context: istiod
KUBECONFIG
  )
  "$kubelet" --namespace istio-system --secret cacerts --dir "$dir/etc/cacerts" >"$dir/kubelet.log" 2>&1 &
  KUBELET_PID=$!
  for _ in $(seq 1 300); do
    [ -e "$dir/etc/cacerts/..data" ] && break
    kill -0 "$KUBELET_PID" 2>/dev/null || { cat "$dir/kubelet.log" >&2; die "the kubelet stand-in exited"; }
    sleep 0.2
  done
  local http https grpc ctrlz monitoring
  http="$(free_port)"; https="$(free_port)"; grpc="$(free_port)"; ISTIOD_CA_PORT="$(free_port)"
  monitoring="$(free_port)"; ctrlz="$(free_port)"
  ISTIOD_LOG="$dir/istiod.log"
  (
    cd "$dir" || exit 1
    exec env -i PATH="$PATH" HOME="$dir" POD_NAMESPACE=istio-system POD_NAME=istiod-demo \
      ISTIO_MULTIROOT_MESH="$multiroot" "$istio/pilot-discovery" discovery \
      --kubeconfig "$dir/kubeconfig" --meshConfig ./etc/istio/config/mesh --networksConfig ./etc/istio/config/meshNetworks \
      --httpAddr "127.0.0.1:$http" --httpsAddr "127.0.0.1:$https" --grpcAddr "127.0.0.1:$grpc" \
      --secureGRPCAddr "127.0.0.1:$ISTIOD_CA_PORT" --monitoringAddr "127.0.0.1:$monitoring" \
      --ctrlz_port "$ctrlz" --ctrlz_address 127.0.0.1 --domain cluster.local
  ) >"$ISTIOD_LOG" 2>&1 &
  ISTIOD_PID=$!
  for _ in $(seq 1 600); do
    curl -fsS "http://127.0.0.1:$http/ready" >/dev/null 2>&1 && return 0
    kill -0 "$ISTIOD_PID" 2>/dev/null || { tail -n 40 "$ISTIOD_LOG" >&2; die "istiod exited (log: $ISTIOD_LOG)"; }
    sleep 0.2
  done
  tail -n 40 "$ISTIOD_LOG" >&2
  die "istiod was not ready within 120s (log: $ISTIOD_LOG)"
}

# Asks istiod (CA on 127.0.0.1:$2) for a workload certificate as istio-agent does, for
# ServiceAccount $4 in namespace $3 of the cluster of $KUBECONFIG (kubectl $1), trust domain $5.
# Writes into directory $6: answer.json (what istiod answered), leaf.pem, intermediates.pem and
# roots.pem (the roots the workload holds). The workload's token comes from the TokenRequest API
# (audience istio-ca) and istiod's roots from its istio-ca-root-cert ConfigMap, read once here
# (a kubelet would keep both current).
istio_workload_certificate() {
  local kubectl="$1" ca_port="$2" ns="$3" sa="$4" trust_domain="$5" out="$6" istio
  istio="$(ensure_istio)"
  mkdir -p "$out/var/run/secrets/istio" "$out/var/run/secrets/tokens"
  for _ in $(seq 1 300); do
    "$kubectl" -n "$ns" get configmap istio-ca-root-cert >/dev/null 2>&1 && break
    sleep 0.2
  done
  "$kubectl" -n "$ns" get configmap istio-ca-root-cert -o jsonpath='{.data.root-cert\.pem}' >"$out/var/run/secrets/istio/root-cert.pem"
  (umask 077 && "$kubectl" -n "$ns" create token "$sa" --audience istio-ca --duration 1h >"$out/var/run/secrets/tokens/istio-token")
  (cd "$out" && "$istio/workload-agent" --ca-address "127.0.0.1:$ca_port" --ca-root ./var/run/secrets/istio/root-cert.pem \
    --token-file ./var/run/secrets/tokens/istio-token --trust-domain "$trust_domain" --namespace "$ns" \
    --service-account "$sa" >answer.json 2>agent.log) || { cat "$out/agent.log" >&2; die "istiod issued no workload certificate"; }
  python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
answer = json.load(open(f"{out}/answer.json"))
certs = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", answer["chain"], re.S)
open(f"{out}/leaf.pem", "w").write(certs[0])
open(f"{out}/intermediates.pem", "w").write("".join(certs[1:]))
open(f"{out}/roots.pem", "w").write(answer["roots"])
PY
}
