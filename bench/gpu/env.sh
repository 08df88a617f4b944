# Sourced by device-run.sh and measure.sh on a lent GPU machine: turns the staged .bench-gpu/ (see stage.sh)
# into a working environment. Sets PY (the interpreter to use), MINILM (the MiniLM architecture with random
# weights), PERF_ANALYZER, PATH and LD_LIBRARY_PATH (tritonserver).
STAGE=.bench-gpu
PY=${PYTHON:-python3}
SITE=/tmp/bench-site
nvidia-smi -L || true
# A separate environment with numpy 1 for the Python-backend stub (see make_env.py for why).
rm -rf /tmp/bench-wheels && mkdir -p /tmp/bench-wheels
tar -xJf "$STAGE/wheels.tar.xz" -C /tmp/bench-wheels
PY=$($PY bench/gpu/make_env.py /tmp/bench-wheels /tmp/bench-env)
# Say at once what the environment lacks (a staged package's dependency the image does not have), rather
# than deep inside the first benchmark step.
$PY - <<'PYTHON'
import importlib

MODULES = ("numpy", "torch", "transformers", "tokenizers", "huggingface_hub", "safetensors",
           "tritonclient.grpc", "tritonclient.http", "fastapi", "uvicorn", "orjson", "pydantic")
missing = []
for name in MODULES:
    try:
        importlib.import_module(name)
    except Exception as exc:  # an ImportError, or a module that fails while importing
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
print("env.sh: environment", "complete" if not missing else "INCOMPLETE: " + "; ".join(missing), flush=True)
PYTHON
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
# perf_analyzer as stage.sh packed it (with its own glibc/libstdc++ runtime where this one's were too old).
if [ -f "$STAGE/perf-analyzer.tar.xz" ]; then
  mkdir -p "$SITE/perf-analyzer"
  tar -xJf "$STAGE/perf-analyzer.tar.xz" -C "$SITE/perf-analyzer"
  export PERF_ANALYZER="$SITE/perf-analyzer/perf_analyzer"
fi
MINILM=/tmp/bench-minilm
rm -rf "$MINILM"
$PY -m bench.common.checkpoints "$STAGE/minilm-architecture" "$MINILM" 2>&1 | grep -v "Writing model" || true
export PYTHONUNBUFFERED=1
