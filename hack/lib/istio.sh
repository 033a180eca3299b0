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
