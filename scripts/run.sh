#!/usr/bin/env bash
# Sets up the machine, builds flashsigmoid into build/ and runs `flashsigmoid run` with its
# default shape (on the GPU when there is one, else on the CPU). Extra arguments go to
# `flashsigmoid run`, e.g. scripts/run.sh --causal --dtype bf16.
# The CUDA backend is built when nvcc and a GPU are present (FLASHSIGMOID_CUDA=ON|OFF overrides).
set -euo pipefail
source "$(dirname "$0")/common.sh"
bash "$root/scripts/setup.sh"
# Without a GPU the CUDA kernels could not run: skip their (long) build unless asked for.
if ((!have_gpu)) && [[ -z "${FLASHSIGMOID_CUDA:-}" ]]; then export FLASHSIGMOID_CUDA=OFF; fi
configure
cmake --build "$build" --target flashsigmoid_cli -j2
exec "$build/tools/cli/flashsigmoid" run "$@"
