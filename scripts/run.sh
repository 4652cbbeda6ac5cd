#!/usr/bin/env bash
# Sets up the machine, builds flashsigmoid into build/ and runs `flashsigmoid run` with its
# default shape (on the GPU when there is one, else on the CPU). Extra arguments go to
# `flashsigmoid run`, e.g. scripts/run.sh --causal --dtype bf16.
# FLASHSIGMOID_CUDA=OFF skips the CUDA backend (it is built whenever nvcc exists).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
if [[ -x /usr/local/cuda/bin/nvcc && ":$PATH:" != *":/usr/local/cuda/bin:"* ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
# Configure build/: CUDA AUTO (built whenever nvcc exists, GPU or not) unless FLASHSIGMOID_CUDA
# says otherwise; ccache when installed.
configure() {
  local args=(-S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
              "-DFLASHSIGMOID_CUDA=${FLASHSIGMOID_CUDA:-AUTO}")
  if command -v ccache >/dev/null 2>&1; then
    args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
  fi
  cmake "${args[@]}" "$@"
}
bash "$root/scripts/setup.sh"
configure
cmake --build "$build" --target flashsigmoid_cli -j2
exec "$build/tools/cli/flashsigmoid" run "$@"
