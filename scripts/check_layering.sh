#!/usr/bin/env bash
# Checks that the CUDA kernel families share code only through src/cuda/common/: a file in
# src/cuda/<family>/ includes no other family's headers, and src/cuda/common/ includes no family's.
# Prints every offending include and exits 1 when there is one.
#   usage: bash scripts/check_layering.sh [CUDA_SRC_DIR]   (default: src/cuda of this checkout)
set -euo pipefail
dir="${1:-$(cd "$(dirname "$0")/.." && pwd)/src/cuda}"
[[ -d "$dir" ]] || { echo "check_layering.sh: no directory $dir" >&2; exit 2; }
bad=0
for folder in "$dir"/*/; do
  family="$(basename "$folder")"
  # Every "cuda/<folder>/..." include of a file below this folder, with its file and line.
  while IFS= read -r hit; do
    target="$(sed -E 's/.*#include *"cuda\/([^/"]+)\/.*/\1/' <<<"$hit")"
    if [[ "$target" != common && "$target" != "$family" ]]; then
      allowed="cuda/$family/ and cuda/common/"
      [[ "$family" == common ]] && allowed="cuda/common/"
      echo "layering: $hit (src/cuda/$family may include only $allowed)"
      bad=1
    fi
  done < <(grep -rnE '^\s*#\s*include\s*"cuda/[^/"]+/' "$folder" || true)
done
if ((bad)); then exit 1; fi
echo "layering: every CUDA kernel family includes only itself and cuda/common/"
