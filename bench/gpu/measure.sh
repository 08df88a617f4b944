#!/usr/bin/env bash
# Issue 18's whole GPU measurement in one go: about 7 minutes of a lent GPU machine after its start-up.
#
#   here:             bash bench/gpu/stage.sh               (once; writes .bench-gpu/, ~50 MB)
#                     bash bench/gpu/measure.sh --dry-run   (the same steps on this CPU, tiny budgets)
#   the GPU machine:  device tool, command "bash bench/gpu/measure.sh", carry [".bench-gpu"], timeout_s 600
#   then here:        .venv/bin/python -m bench.dataplane.publish <files_at>   (README's GPU section;
#                     the commit measured is the one stage.sh recorded in $OUT/commit)
#
# Steps, each bounded by its own timeout so that one failing step leaves the others' results in $OUT:
# 1. the environment from .bench-gpu/ (env.sh): tritonserver, numpy-1 environment, perf_analyzer, MiniLM's
#    architecture with random weights;
# 2. the stub's profile (bench.dataplane.profile): the generated runtime in-process on random batches of
#    32 workload texts, per-stage times and torch's profiler on the forward pass, fp16;
# 3. the data plane (bench.dataplane, fp16): the raw in-process limit on the same texts (batches 1-256,
#    plain and length-grouped), then ours (defaults), ours-gpu (candidate GPU defaults: max batch 128, two
#    instances) and baseline (a), driven by perf_analyzer at 1, 4, 16 and 64 clients, with the two-client
#    check at 64. Baseline (b) (FastAPI) is left out: the issue's GPU targets do not use it.
set -uo pipefail
cd "$(dirname "$0")/../.."
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
[ $# -eq 0 ] || { echo "usage: measure.sh [--dry-run]" >&2; exit 2; }
OUT=${OUT:-/tmp/bench-gpu-out}
mkdir -p "$OUT"
started=$SECONDS
step() { echo "== measure.sh, $((SECONDS - started)) s: $*"; }
cp .bench-gpu/commit "$OUT/commit" 2>/dev/null || git rev-parse HEAD > "$OUT/commit" 2>/dev/null || true

if [ $dry_run = 1 ]; then
  PY=${PYTHON:-.venv/bin/python}
  DEVICE=cpu
  PROFILE_ARGS=(--models tiny-bert --batches 3 --profiled 1)
  BENCH_ARGS=(--models tiny-bert --concurrency 1,64 --duration 6 --rounds 1 --warmup 0.5
              --raw-batch-sizes 1,8,64 --raw-seconds 0.1 --texts 64 --no-readme)
else
  step "environment"
  # shellcheck source=env.sh
  source bench/gpu/env.sh || { echo "measure.sh: environment failed" >&2; exit 1; }
  DEVICE=cuda
  PROFILE_ARGS=(--models minilm --minilm-path "$MINILM" --batch 32 --batches 30 --profiled 5)
  BENCH_ARGS=(--models minilm --minilm-path "$MINILM" --duration 8 --warmup 2 --rounds 2 --raw-seconds 1.5)
fi

step "perf_analyzer"
$PY -c 'from bench.common import perf_analyzer as p; print(p.command_prefix()); print(p.version(p.command_prefix()))' \
  || { echo "measure.sh: perf_analyzer does not run" >&2; exit 1; }

step "profile ($DEVICE)"
timeout 150 $PY -m bench.dataplane.profile --device "$DEVICE" "${PROFILE_ARGS[@]}" --out "$OUT" \
  > "$OUT/profile.log" 2>&1
profile_rc=$?
tail -n 40 "$OUT/profile.log"

step "data plane ($DEVICE)"
timeout 400 $PY -m bench.dataplane --device "$DEVICE" --contenders ours,ours-gpu,baseline-a \
  --max-foreign-cpu 1 "${BENCH_ARGS[@]}" --out "$OUT" > "$OUT/dataplane.log" 2>&1
dataplane_rc=$?
grep -v -e "Loading weights" -e "Writing model" "$OUT/dataplane.log" | tail -n 60

step "done: profile rc $profile_rc, data plane rc $dataplane_rc; results in $OUT"
[ $profile_rc -eq 0 ] && [ $dataplane_rc -eq 0 ]
