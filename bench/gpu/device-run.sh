#!/usr/bin/env bash
# Run the data-plane benchmark on a lent GPU machine (see stage.sh, which prepares .bench-gpu/ here).
# Arguments go to `python -m bench.dataplane` (after --device cuda); results land in $OUT (or bench/results).
# For the whole measurement of issue 18 in one go, run measure.sh instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=env.sh
source bench/gpu/env.sh
$PY -m bench.dataplane --device cuda --minilm-path "$MINILM" --out "${OUT:-bench/results}" "$@"
