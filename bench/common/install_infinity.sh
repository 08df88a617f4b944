#!/usr/bin/env bash
# Install Infinity (michaelfeil/infinity, PyPI `infinity-emb`), the peer embedding server bench/dataplane
# measures against, into its own virtual environment: its pins (transformers < 4.58, numpy < 2, typer <
# 0.13, ...) clash with the project's. The environment reuses the project's torch through a .pth file
# naming the project venv's site-packages (listed after its own packages, so its pins win) instead of
# downloading torch again. Prints the path of its `infinity_emb` executable.
#   bash bench/common/install_infinity.sh [project venv, default .venv]
set -euo pipefail
cd "$(dirname "$0")/../.."
PROJECT_VENV=${1:-.venv}
TARGET=${INFINITY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/modeldeploy/infinity-0.0.78}
if [ ! -f "$TARGET/.complete" ]; then
  rm -rf "$TARGET" "$TARGET.tmp"
  "$PROJECT_VENV/bin/python" -m venv "$TARGET"
  project_site=$("$PROJECT_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  own_site=$("$TARGET/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$(cd "$project_site" && pwd)" > "$own_site/zz-modeldeploy-project.pth"
  "$TARGET/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    "infinity-emb[server]==0.0.78" "sentence-transformers>=3.0.1,<4" "transformers>=4.47,<4.58" "numpy<2" \
    "click<8.2" "typer<0.13" "uvicorn[standard]<0.33" "rich<14" posthog prometheus-fastapi-instrumentator \
    orjson "huggingface_hub<1.0" "tokenizers<0.23" distro backoff >&2
  touch "$TARGET/.complete"
fi
echo "$TARGET/bin/infinity_emb"
