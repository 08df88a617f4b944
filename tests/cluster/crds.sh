#!/usr/bin/env bash
# Fetch the third-party CRDs the e2e tests install (KEDA's, prometheus-operator's) from their pinned Go
# modules into ${MODELDEPLOY_CACHE:-$HOME/.cache/modeldeploy}/crds/, checking each module's hash against
# crds.env. Run at setup (make cluster-binaries); tests only read the copies, so they need no network.
#   crds.sh               fetch what is missing
#   crds.sh --check       exit 0 when every CRD is there
#   crds.sh --print-dir   print the directory
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=crds.env
source "$here/crds.env"
dest="${MODELDEPLOY_CACHE:-$HOME/.cache/modeldeploy}/crds/keda-${KEDA_VERSION}_prometheus-operator-${PROMETHEUS_OPERATOR_VERSION}"

present() {
  for file in $KEDA_CRDS $PROMETHEUS_OPERATOR_CRDS; do [[ -s "$dest/$(basename "$file")" ]] || return 1; done
}

case "${1:-}" in
  --print-dir) echo "$dest"; exit 0 ;;
  --check) present; exit $? ;;
  "") ;;
  *) echo "usage: $0 [--check|--print-dir]" >&2; exit 2 ;;
esac

if present; then echo "$dest"; exit 0; fi
command -v go >/dev/null || { echo "crds.sh: Go is needed to fetch the pinned modules" >&2; exit 1; }

fetch() {  # module version expected-sum files...
  local module=$1 version=$2 sum=$3; shift 3
  local info dir got
  # Only the module's zip is downloaded (no build): its go line need not suit this Go.
  info="$(cd / && GOFLAGS=-mod=mod go mod download -json "$module@$version")"
  dir="$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' <<<"$info")"
  got="$(sed -n 's/^\t"Sum": "\(.*\)",$/\1/p' <<<"$info")"
  if [[ "$got" != "$sum" ]]; then
    echo "crds.sh: $module@$version has hash $got, crds.env pins $sum" >&2
    exit 1
  fi
  [[ -d "$dir" ]] || { echo "crds.sh: $module@$version: no module directory ($info)" >&2; exit 1; }
  for file in "$@"; do
    install -m 0644 "$dir/$file" "$dest/$(basename "$file").tmp"
    mv "$dest/$(basename "$file").tmp" "$dest/$(basename "$file")"
  done
}

mkdir -p "$dest"
# shellcheck disable=SC2086
fetch "$KEDA_MODULE" "$KEDA_VERSION" "$KEDA_SUM" $KEDA_CRDS
# shellcheck disable=SC2086
fetch "$PROMETHEUS_OPERATOR_MODULE" "$PROMETHEUS_OPERATOR_VERSION" "$PROMETHEUS_OPERATOR_SUM" $PROMETHEUS_OPERATOR_CRDS
echo "$dest"
