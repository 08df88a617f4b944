#!/usr/bin/env bash
# Copies the ModelDeployment CRD (generated into crds/ by `modeldeploy crd`) into the Helm chart's crds/,
# where Helm installs CRDs from. tests/chart checks that the two files are byte-identical.
#
#   scripts/sync-chart-crds.sh           copy
#   scripts/sync-chart-crds.sh --check   exit 1 (and show the diff) if the chart's copy is stale
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source_file="$root/crds/modeldeploy.dev_modeldeployments.yaml"
chart_file="$root/charts/modeldeploy/crds/modeldeploy.dev_modeldeployments.yaml"

case "${1:-}" in
  --check)
    if ! diff -u "$source_file" "$chart_file"; then
      echo "sync-chart-crds.sh: $chart_file differs from $source_file; run $0" >&2
      exit 1
    fi
    ;;
  "")
    tmp="$(mktemp "$chart_file.XXXXXX")"
    cp "$source_file" "$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$chart_file"
    ;;
  *)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac
