#!/usr/bin/env bash
# Issue 25's whole GPU measurement in one go: about 7-8 minutes of a lent GPU machine after its start-up
# (each step has its own timeout; their sum, 540 s, stays inside the device tool's 600 s per command).
#
#   here:             bash bench/gpu/stage.sh               (once; writes .bench-gpu/, ~55 MB)
#                     bash bench/gpu/measure.sh --dry-run   (the same steps on this CPU, tiny budgets)
#   the GPU machine:  device tool, command "bash bench/gpu/measure.sh", carry [".bench-gpu"], timeout_s 600
#   then here:        .venv/bin/python -m bench.dataplane.publish <files_at>   (README's GPU section;
#                     the commit measured is the one stage.sh recorded in $OUT/commit)
#
# Steps, each bounded by its own timeout so that one failing step leaves the others' results in $OUT:
# 1. the environment from .bench-gpu/ (env.sh): tritonserver, numpy-1 environment with the project's
#    pinned transformers, perf_analyzer, MiniLM's architecture with random weights;
# 2. the stub's profile (bench.dataplane.profile): the generated runtime in-process on random batches of
#    32 workload texts, per-stage times and torch's profiler on the forward pass, fp16;
# 3. the data plane, fp16 (bench.dataplane): the raw in-process limit on the same texts (batches 1-256,
#    plain and length-grouped), then ours (the GPU defaults: max batch 128, two instances), ours through
#    the OpenAI sidecar (POST /v1/embeddings, answers checked against Triton's) and baseline (a), at 1,
#    64 and 256 clients (perf_analyzer for the Triton contenders, the Python generator for the sidecar);
# 4. bfloat16 beside float16: ours and ours-bf16 at 64 and 256 clients (the build's accuracy gate runs
#    on the GPU first);
# 5. generation, fp16 (bench.generation --device cuda): ours (python format, continuous batching, on
#    the GPU) against transformers' in-process limit and the per-request baseline, 1, 16 and 64 clients.
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
  SIDECAR_ARGS=(--models minilm --contenders ours,ours-openai --concurrency 4 --duration 2 --rounds 1
                --warmup 0.5 --raw-batch-sizes 8 --raw-seconds 0.1 --texts 64 --no-readme)
  BF16_ARGS=(--models tiny-bert --concurrency 16 --duration 2 --rounds 1 --warmup 0.5
             --raw-batch-sizes 8 --raw-seconds 0.1 --texts 64 --no-readme)
  GENERATION_ARGS=(--layers 2 --hidden 64 --max-tokens 8 --concurrency 1,4 --warmup-s 0.5 --window-s 2)
  # The dry run checks the steps, not the budget: a 2-core machine shared with other work is slow.
  T_PROFILE=300 T_DATAPLANE=400 T_SIDECAR=300 T_BF16=400 T_GENERATION=300
else
  step "environment"
  # shellcheck source=env.sh
  source bench/gpu/env.sh || { echo "measure.sh: environment failed" >&2; exit 1; }
  DEVICE=cuda
  PROFILE_ARGS=(--models minilm --minilm-path "$MINILM" --batch 32 --batches 30 --profiled 5)
  BENCH_ARGS=(--models minilm --minilm-path "$MINILM" --concurrency 1,64,256 --duration 6 --warmup 2
              --rounds 1 --raw-seconds 1)
  SIDECAR_ARGS=()
  BF16_ARGS=(--models minilm --minilm-path "$MINILM" --concurrency 64,256 --duration 6 --warmup 2 --rounds 1
             --raw-batch-sizes 64,256 --raw-seconds 1 --no-readme)
  GENERATION_ARGS=(--concurrency 1,16,64 --warmup-s 2 --window-s 6)
  # 540 s in all: inside the device tool's 600 s per command with the environment's start-up.
  T_PROFILE=80 T_DATAPLANE=250 T_SIDECAR=0 T_BF16=110 T_GENERATION=100
fi

step "perf_analyzer"
$PY -c 'from bench.common import perf_analyzer as p; print(p.command_prefix()); print(p.version(p.command_prefix()))' \
  || { echo "measure.sh: perf_analyzer does not run" >&2; exit 1; }

step "profile ($DEVICE)"
timeout $T_PROFILE $PY -m bench.dataplane.profile --device "$DEVICE" "${PROFILE_ARGS[@]}" --out "$OUT" \
  > "$OUT/profile.log" 2>&1
profile_rc=$?
tail -n 40 "$OUT/profile.log"

step "data plane ($DEVICE): ours (defaults), ours through the OpenAI sidecar, baseline (a)"
if [ $dry_run = 1 ]; then
  # On the CPU the sidecar is tried on MiniLM apart (tiny-bert is a classifier: no /v1/embeddings).
  timeout $T_DATAPLANE $PY -m bench.dataplane --device "$DEVICE" --contenders ours,baseline-a \
    --max-foreign-cpu 1 "${BENCH_ARGS[@]}" --out "$OUT" > "$OUT/dataplane.log" 2>&1
  dataplane_rc=$?
  timeout $T_SIDECAR $PY -m bench.dataplane --device "$DEVICE" --max-foreign-cpu 1 --retries 0 "${SIDECAR_ARGS[@]}" \
    --out "$OUT/sidecar" > "$OUT/sidecar.log" 2>&1 || dataplane_rc=$?
else
  timeout $T_DATAPLANE $PY -m bench.dataplane --device "$DEVICE" --contenders ours,ours-openai,baseline-a \
    --max-foreign-cpu 1 "${BENCH_ARGS[@]}" --out "$OUT" > "$OUT/dataplane.log" 2>&1
  dataplane_rc=$?
fi
grep -v -e "Loading weights" -e "Writing model" "$OUT/dataplane.log" | tail -n 60

step "bfloat16 beside float16 ($DEVICE)"
timeout $T_BF16 $PY -m bench.dataplane --device "$DEVICE" --contenders ours,ours-bf16 --max-foreign-cpu 1 \
  --retries 0 "${BF16_ARGS[@]}" --out "$OUT/bf16" > "$OUT/bf16.log" 2>&1
bf16_rc=$?
grep -v -e "Loading weights" -e "Writing model" "$OUT/bf16.log" | tail -n 20

step "generation ($DEVICE)"
timeout $T_GENERATION $PY -m bench.generation --device "$DEVICE" "${GENERATION_ARGS[@]}" --no-write \
  --workdir "$OUT/generation" > "$OUT/generation.log" 2>&1
generation_rc=$?
grep -v -e "Loading weights" -e "Writing model" "$OUT/generation.log" | tail -n 20

step "done: profile rc $profile_rc, data plane rc $dataplane_rc, bf16 rc $bf16_rc, generation rc $generation_rc; results in $OUT"
[ $profile_rc -eq 0 ] && [ $dataplane_rc -eq 0 ] && [ $bf16_rc -eq 0 ] && [ $generation_rc -eq 0 ]
