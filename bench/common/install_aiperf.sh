#!/usr/bin/env bash
# Installs NVIDIA's aiperf (PyPI aiperf, the version aiperf-requirements.txt pins), the field's load generator that
# bench/generation/loadgen.py sets beside our own client, into its own virtualenv in the cache outside the
# repository: its pins clash with the project's, and it is about 1.2 GB, so neither `make setup` nor
# `make test` installs it (`make bench-loadgen` does). Idempotent; needs the package registry, not at
# benchmark time (aiperf runs offline when given a local tokenizer directory).
#
# Prints the virtualenv's directory; the command is <dir>/bin/aiperf.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
requirements="$here/aiperf-requirements.txt"
version="$(sed -n 's/^aiperf==//p' "$requirements")"
cache="${MODELDEPLOY_CACHE:-$HOME/.cache/modeldeploy}"
dir="$cache/client-venvs/aiperf-$version"
python="${PYTHON:-$root/.venv/bin/python}"

if [ ! -f "$dir/.installed" ]; then
  rm -rf "$dir"
  "$python" -m venv "$dir" >&2
  "$dir/bin/python" -m pip install --quiet --upgrade pip >&2
  "$dir/bin/python" -m pip install --quiet -r "$requirements" >&2
  "$dir/bin/aiperf" --help >/dev/null
  touch "$dir/.installed"
fi
echo "$dir"
