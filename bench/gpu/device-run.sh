#!/usr/bin/env bash
# Run the data-plane benchmark on a lent GPU machine (see stage.sh, which prepares .bench-gpu/ here).
# Arguments go to `python -m bench.dataplane` (after --device cuda); results land in $OUT (or bench/results).
set -euo pipefail
cd "$(dirname "$0")/../.."
STAGE=.bench-gpu
PY=${PYTHON:-python3}
SITE=/tmp/bench-site
nvidia-smi -L || true
# A separate environment with numpy 1 for the Python-backend stub (see make_env.py for why).
PY=$($PY bench/gpu/make_env.py "$STAGE/wheels" /tmp/bench-env)
mkdir -p "$SITE"
tar -xJf "$STAGE/tritonserver.tar.xz" -C "$SITE"
export PYTHONPATH="$PWD"
# tritonserver from PATH, as model_repo.triton looks there first; it then uses its compiled-in backend
# directory, which gets the Python backend with the stub built for this interpreter (3.12).
SERVER="$SITE/pytriton/tritonserver"
mkdir -p /opt/tritonserver/backends
rm -rf /opt/tritonserver/backends/python
cp -r "$SERVER/backends/python" /opt/tritonserver/backends/python
cp "$SERVER/python_backend_stubs/3.12/triton_python_backend_stub" /opt/tritonserver/backends/python/
export PATH="$SERVER/bin:$PATH"
export LD_LIBRARY_PATH="$SITE/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
MINILM=/tmp/bench-minilm
rm -rf "$MINILM"
$PY -m bench.common.checkpoints "$STAGE/minilm-architecture" "$MINILM" 2>&1 | grep -v "Writing model" || true
export PYTHONUNBUFFERED=1
$PY -m bench.dataplane --device cuda --minilm-path "$MINILM" --out "${OUT:-bench/results}" "$@"
