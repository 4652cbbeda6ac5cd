#!/usr/bin/env bash
# Sets up the machine, builds flashsigmoid with its tests into build/, runs the C++ tests
# (ctest), installs the Python package and runs the Python tests. Exits non-zero when any
# step fails (the test steps all run even after an earlier test failure).
# FLASHSIGMOID_CUDA=OFF skips the CUDA backend; without a GPU the Python package is built
# without it anyway (to save build time), while the C++ build keeps it whenever nvcc exists.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$root"
bash scripts/setup.sh
cuda_args=()
if ((!have_gpu)); then
  # No GPU (CI): compile a small representative set of CUDA kernels so CI stays short;
  # the GPU machine builds everything (scripts/gpu_check.sh).
  cuda_args=("-DFLASHSIGMOID_CUDA_ARCHS=${FLASHSIGMOID_CUDA_ARCHS:-80}"
             "-DFLASHSIGMOID_HEAD_DIMS=${FLASHSIGMOID_HEAD_DIMS:-64}")
fi
configure -DFLASHSIGMOID_BUILD_TESTS=ON -DFLASHSIGMOID_BUILD_CLI=ON "${cuda_args[@]}"
cmake --build "$build" -j2

failed=()
echo "[test] ctest"
ctest --test-dir "$build" --output-on-failure -j2 || failed+=(ctest)

echo "[test] pip install the Python package"
pip_flags=(--no-build-isolation)
if [[ -e "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')/EXTERNALLY-MANAGED" ]]; then
  pip_flags+=(--break-system-packages)
fi
py_cuda="${FLASHSIGMOID_CUDA:-}"
if [[ -z "$py_cuda" ]] && ((!have_gpu)); then py_cuda=OFF; fi
if FLASHSIGMOID_CUDA="${py_cuda:-AUTO}" python3 -m pip install "${pip_flags[@]}" .; then
  echo "[test] pytest"
  python3 -m pytest -q tests/python || failed+=(pytest)
else
  failed+=("pip install")
fi

if ((${#failed[@]})); then
  echo "[test] FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "[test] all passed"
