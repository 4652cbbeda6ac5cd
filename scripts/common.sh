# Shared by scripts/run.sh and scripts/test.sh (sourced, not run): paths, nvcc on PATH, GPU
# detection and the CMake configure step.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
if [[ -x /usr/local/cuda/bin/nvcc && ":$PATH:" != *":/usr/local/cuda/bin:"* ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
have_gpu=0
if nvidia-smi -L >/dev/null 2>&1; then have_gpu=1; fi

# Configure build/: CUDA AUTO (built whenever nvcc exists) unless FLASHSIGMOID_CUDA says
# otherwise; ccache when installed. Extra arguments go to cmake.
configure() {
  local args=(-S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
              "-DFLASHSIGMOID_CUDA=${FLASHSIGMOID_CUDA:-AUTO}")
  if command -v ccache >/dev/null 2>&1; then
    args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
  fi
  cmake "${args[@]}" "$@"
}
