#!/usr/bin/env bash
# Prepares .deps (git-ignored) for a run on the GPU machine, which has no network and no
# GoogleTest: the CUTLASS/CuTe headers (scripts/fetch_cutlass.sh) and a copy of Debian's
# GoogleTest sources (package googletest), which scripts/gpu_check.sh builds there, and a copy of
# the parity study's text (fortunes, jargon-text).
# Then copy the tree with .deps to the GPU machine and run `bash scripts/gpu_check.sh OUTDIR` there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/fetch_cutlass.sh"
if [[ ! -f "$root/.deps/googletest/CMakeLists.txt" ]]; then
  if [[ ! -f /usr/src/googletest/CMakeLists.txt ]]; then
    apt-get update -qq && apt-get install -y -qq googletest
  fi
  rm -rf "$root/.deps/googletest"
  cp -r /usr/src/googletest "$root/.deps/googletest"
fi
# The parity study's text (studies/parity/data.py), from the Debian packages that setup.sh installs.
if [[ -d /usr/share/games/fortunes && -f /usr/share/doc/jargon-text/jargon.txt.gz ]]; then
  rm -rf "$root/.deps/parity-text" && mkdir -p "$root/.deps/parity-text/fortunes"
  find /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.*' -exec cp {} "$root/.deps/parity-text/fortunes/" \;
  cp /usr/share/doc/jargon-text/jargon.txt.gz "$root/.deps/parity-text/"
fi
echo "prepared $root/.deps: $(ls "$root/.deps" | tr '\n' ' ')"
