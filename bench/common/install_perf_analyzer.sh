#!/usr/bin/env bash
# Installs NVIDIA's perf_analyzer (PyPI perf-analyzer, the version pinned below) into a cache directory
# outside the repository, where bench/common/perf_analyzer.py finds it:
#
#   ${MODELDEPLOY_CACHE:-$HOME/.cache/modeldeploy}/bin/perf-analyzer-<version>/perf_analyzer
#
# Why not the virtualenv: the only real wheels are tagged manylinux_2_38 (glibc 2.38, libstdc++ from GCC 13),
# so on an older system (this project's Debian 12 machines: glibc 2.36) pip skips them and resolves
# `perf-analyzer` (which tritonclient[all] requires) to 0.1.0, an empty placeholder; that is what
# docker/constraints.txt pins, and pinning the real version there would make the install fail here. Where the binary cannot run on the system's libraries,
# this script adds runtime/: Debian 13's dynamic loader, libc, libm, libstdc++ and libgcc_s, fetched with
# apt-get from a private package list (the system's apt state is not touched); perf_analyzer.py then
# starts the binary through that loader. Idempotent; needs the network (not at test time).
#
#   install_perf_analyzer.sh          install if missing, then print the directory
#   install_perf_analyzer.sh --check  exit 0 if installed and runnable, 1 otherwise
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
version="${PERF_ANALYZER_VERSION:-2.60.0}"
cache="${MODELDEPLOY_CACHE:-$HOME/.cache/modeldeploy}"
dir="$cache/bin/perf-analyzer-$version"
python="${PYTHON:-$root/.venv/bin/python}"

runs() {
  # The binary prints its version and exits 0 (directly, or through the bundled loader).
  if [ -x "$dir/runtime/ld-linux-x86-64.so.2" ]; then
    "$dir/runtime/ld-linux-x86-64.so.2" --library-path "$dir/runtime:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" \
      "$dir/perf_analyzer" --version >/dev/null 2>&1
  else
    "$dir/perf_analyzer" --version >/dev/null 2>&1
  fi
}

if [ "${1:-}" = "--check" ]; then
  [ -x "$dir/perf_analyzer" ] && runs
  exit $?
fi
if [ -x "$dir/perf_analyzer" ] && runs; then
  echo "$dir"
  exit 0
fi
[ "$(uname -m)" = x86_64 ] || { echo "install_perf_analyzer.sh: only x86_64 is handled here" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 \
  -d "$work" "perf-analyzer==$version"
"$python" -m zipfile -e "$work"/perf_analyzer-"$version"-*.whl "$work/wheel"
staging="$(mktemp -d "$cache/bin/.perf-analyzer-XXXXXX" 2>/dev/null || { mkdir -p "$cache/bin"; mktemp -d "$cache/bin/.perf-analyzer-XXXXXX"; })"
chmod 0755 "$staging"
install -m 0755 "$work/wheel/perf_analyzer/bin/perf_analyzer" "$staging/perf_analyzer"
if ! "$staging/perf_analyzer" --version >/dev/null 2>&1; then
  # Too old a glibc/libstdc++ here: bring newer ones from Debian 13 (trixie) with a private apt state.
  apt="$work/apt"
  mkdir -p "$apt/lists/partial" "$apt/archives/partial"
  # The Debian mirror this machine's own apt sources name, asked for the next release's suite.
  mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  [ -n "$mirror" ] || mirror="$(grep -m1 -oE '^deb +(\[[^]]*\] +)?[a-z]+://[^ ]+' /etc/apt/sources.list 2>/dev/null \
    | awk '{print $NF}' || true)"
  [ -n "$mirror" ] || { echo "install_perf_analyzer.sh: no Debian mirror in this machine's apt sources" >&2; exit 1; }
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" > "$apt/sources.list"
  opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt" -o Debug::NoLocking=1 -o APT::Sandbox::User=root -qq)
  apt-get "${opts[@]}" update
  (cd "$apt" && apt-get "${opts[@]}" download libc6 libstdc++6 libgcc-s1 2>/dev/null)
  for deb in "$apt"/*.deb; do dpkg-deb -x "$deb" "$apt/root"; done
  mkdir -p "$staging/runtime"
  lib="$apt/root/usr/lib/x86_64-linux-gnu"
  cp -L "$lib/ld-linux-x86-64.so.2" "$lib/libc.so.6" "$lib/libm.so.6" "$lib/libstdc++.so.6" \
    "$lib/libgcc_s.so.1" "$staging/runtime/"
  chmod 0755 "$staging/runtime/ld-linux-x86-64.so.2"
fi
rm -rf "$dir"
mv "$staging" "$dir"
runs || { echo "install_perf_analyzer.sh: $dir/perf_analyzer does not run here" >&2; exit 1; }
echo "$dir"
