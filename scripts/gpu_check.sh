#!/usr/bin/env bash
# Builds the CUDA backend on a GPU machine and checks it: GPU tests (ctest -L gpu),
# compute-sanitizer memcheck + racecheck on small shapes, the forward and backward benchmarks,
# the Python package's tests, the single-process harness and the CLI.
#   usage: bash scripts/gpu_check.sh OUTDIR   (logs, benchmark tables and the harness's report go there)
#   env: FLASHSIGMOID_CUDA_ARCHS (default 90a), FLASHSIGMOID_HEAD_DIMS (default "64;128"),
#        EXTRA_CMAKE_ARGS (e.g. "-DFLASHSIGMOID_SIGMOID_EXP=ON"), SKIP_SANITIZER=1, SKIP_BENCH=1,
#        SKIP_PYTHON=1, HARNESS_ARGS (extra flags for bench/harness.py, e.g. "--quick"),
#        COMMIT (the commit the harness records; the GPU machine's copy has no .git),
#        FWD_BENCH_ARGS (extra flags for the forward benchmark, e.g. "--kernel both"),
#        DECODE_ARGS (extra flags for bench/decode_bench.py, e.g. "--quick"),
#        STAGES (default "tests sanitizer bench python harness decode cli": which steps run after the build;
#        two calls can split them, e.g. STAGES="tests sanitizer bench" then STAGES="python harness cli"),
#        PY_HEAD_DIMS (head dims of the pip-installed package, default $FLASHSIGMOID_HEAD_DIMS),
#        SKIP_PORTABLE_PASS=1 (Hopper builds: one ctest pass with automatic dispatch instead of two),
#        PY_REUSE=1 (keep a Python package already installed), SKIP_PYTEST=1,
#        KV_BENCH_ARGS (extra flags for the C++ KV-cache benchmark, e.g. "--quick"), KV_NCU_SHAPE (ncu
#        reports of the KV-cache kernels on shapes "B:CACHE:HQ:HKV:NQ:PAGE ..."), KV_NSYS_SHAPE (an
#        nsys trace of the KV-cache benchmark on one shape: host time per CUDA call, time per kernel),
#        KV_SPLITS_SWEEP (the KV-cache benchmark per split count: "B:CACHE:HQ:HKV:NQ:PAGE=N,N,... ..."; each
#        shape also with the heuristic, into bench_kvcache_splits.txt),
#        PYTEST_ARGS (what pytest runs, default tests/python),
#        cp (a stage, not in the default list; needs 2 GPUs and the Python package, so STAGES="python cp"):
#        bench/cp_bench.py, context parallelism on 2 GPUs over NCCL, tables into $LOG/cp
#        (CP_ARGS: extra flags, e.g. "--n 65536,131072 --reps 2"; CP_TIMEOUT: seconds, default 480),
#        PACK_LOGS=1 (at the end, the .log / .txt files of OUTDIR into one logs.tgz, for when only a few
#        files can be copied back from the GPU machine; harness/ stays as it is;
#        parity-gpu/ goes into parity-gpu.tgz).
# Stage "cpu_amx" (not in the default list): where the host CPU has AMX (amx_tile, amx_bf16), the CPU
#   accuracy suite at the x86-64-v4-amx level (and at x86-64-v4-bf16 for comparison), then
#   `flashsigmoid run` bf16 timings of both levels, into $LOG/cpu_amx*.log.
# Stage "cpu_compare" (not in the default list): bench/cpu_compare.py on the host CPU with the pip-installed
#   package (STAGES="python cpu_compare"), into $LOG/cpu_compare; CPU_COMPARE_ARGS, CPU_COMPARE_TIMEOUT (400 s).
# Stage "study" (not in the default list; it trains for minutes): the parity study's gpu preset
#   (studies/parity/run.py) on the pip-installed package, into $LOG/parity-gpu; STUDY_ARGS adds flags
#   (e.g. "--parts lm"), STUDY_TIMEOUT (default 420 s) bounds it; COMMIT names the commit there too.
# Wheels under .whl (git-ignored; e.g. triton-sigmoid for the harness) are installed into /tmp/site first:
#   copy .whl to the GPU machine too.
# The Hopper forward and backward are dispatched by default when 90a is built (FLASHSIGMOID_HOPPER=AUTO);
#   then the GPU tests run once with the portable kernels forced (ctest -L portable_kernels: the test
#   binary with --forward-kernel=portable --backward-kernel=portable) and once more (forward and backward
#   tests) with the automatic choice.
#   EXTRA_CMAKE_ARGS="-DFLASHSIGMOID_HOPPER=OFF" leaves it out.
# Needs .deps: run scripts/prepare_device.sh here first (CUTLASS headers and, as the machine has no GoogleTest,
# .deps/googletest (a copy of /usr/src/googletest): copy .deps to the GPU machine.
set -uo pipefail
if (( $# != 1 )); then
  echo "usage: bash scripts/gpu_check.sh OUTDIR (settings in the environment: see the script's header)" >&2
  exit 2
fi
LOG="$(mkdir -p "$1" && cd "$1" && pwd)" || exit 2
cd "$(dirname "$0")/.."
# Every GPU step runs under a timeout, so a hung kernel costs minutes, not the whole call.
ARCHS="${FLASHSIGMOID_CUDA_ARCHS:-90a}"
DIMS="${FLASHSIGMOID_HEAD_DIMS:-64;128}"
BUILD=build-gpu
status=0
kernel_args=() bench_fwd_args=() bench_bwd_args=()  # a failed Hopper smoke test forces the portable kernels
# kvcache (not in the default list): the CUDA KV-cache kernels alone (their GPU tests, memcheck +
# racecheck on small cases, bench/cuda_decode_bench.cu), e.g. STAGES=kvcache with
# EXTRA_CMAKE_ARGS="-DFLASHSIGMOID_CUDA_BACKWARD=OFF -DFLASHSIGMOID_HOPPER=OFF" (a shorter build).
STAGES=" ${STAGES:-tests sanitizer bench python harness decode cli} "
want() { [[ "$STAGES" == *" $1 "* ]]; }
for stage in $STAGES; do
  case "$stage" in
    tests|sanitizer|bench|python|harness|decode|cli|kvcache|study|cp|cpu_amx|cpu_compare) ;;
    *) echo "gpu_check.sh: STAGES has '$stage'; accepted: tests sanitizer bench python harness decode cli kvcache study cp cpu_amx cpu_compare" >&2; exit 2 ;;
  esac
done
HOPPER=0
[[ "$ARCHS" == *90* && "${EXTRA_CMAKE_ARGS:-}" != *FLASHSIGMOID_HOPPER=OFF* ]] && HOPPER=1

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

{ nvidia-smi; nvcc --version; } > "$LOG/machine.txt" 2>&1

cmake_extra=()
if ! cmake --find-package -DNAME=GTest -DCOMPILER_ID=GNU -DLANGUAGE=CXX -DMODE=EXIST >/dev/null 2>&1; then
  if [[ -d .deps/googletest ]]; then
    echo "== building GoogleTest from .deps/googletest"
    cmake -S .deps/googletest -B /tmp/gtest-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF \
      -DCMAKE_INSTALL_PREFIX=/tmp/gtest -DCMAKE_POSITION_INDEPENDENT_CODE=ON >/dev/null &&
      cmake --build /tmp/gtest-build -j16 >/dev/null && cmake --install /tmp/gtest-build >/dev/null
    cmake_extra+=(-DCMAKE_PREFIX_PATH=/tmp/gtest)
  else
    echo "no GoogleTest on this machine and no .deps/googletest: the tests cannot build" >&2
  fi
fi

# (not indented, to keep the diff small) the C++ build serves tests, sanitizer, bench and cli only;
# python, harness and study use the pip-installed package.
if want tests || want sanitizer || want bench || want cli || want kvcache || want cpu_amx; then
echo "== configure + build (archs $ARCHS, head dims $DIMS)"
cmake -S . -B "$BUILD" -G Ninja -DFLASHSIGMOID_CUDA=ON -DFLASHSIGMOID_CUDA_BACKWARD=ON -DFLASHSIGMOID_HOPPER=AUTO -DFLASHSIGMOID_CUDA_ARCHS="$ARCHS" \
  -DFLASHSIGMOID_HEAD_DIMS="$DIMS" -DFLASHSIGMOID_BUILD_TESTS=ON -DFLASHSIGMOID_BUILD_BENCH=OFF \
  -DFLASHSIGMOID_BUILD_CLI=ON "${cmake_extra[@]}" ${EXTRA_CMAKE_ARGS:-} > "$LOG/build.log" 2>&1 ||
  { tail -30 "$LOG/build.log"; exit 1; }
t0=$SECONDS
cmake --build "$BUILD" -j16 >> "$LOG/build.log" 2>&1 || { grep -B2 -A8 -m5 "error" "$LOG/build.log"; tail -20 "$LOG/build.log"; exit 1; }
echo "built in $((SECONDS - t0)) s"
fi

TESTS="$BUILD/tests/gpu/flashsigmoid_gpu_tests"
if want tests; then
  if (( HOPPER )); then
    # A hang in a Hopper pipeline must cost one minute, not the call. smoke WHAT FILTER LOGNAME: on
    # failure, the remaining C++ steps force the portable kernel (kernel_args: the test binary's
    # --WHAT-kernel=portable; the forward benchmark's --kernel portable). The backward has its own line,
    # so that a failure there leaves the Hopper forward's checks running.
    smoke() {
      echo "== Hopper $1 smoke test (60 s limit)"
      timeout 60 "$TESTS" --gtest_filter="$2" 2>&1 | tail -30 | tee "$LOG/$3"
      local rc=${PIPESTATUS[0]}
      if (( rc != 0 )); then
        echo "Hopper $1 smoke test failed (exit $rc): the remaining C++ steps force the portable $1"
        kernel_args+=("--$1-kernel=portable")
        [[ "$1" == forward ]] && bench_fwd_args+=(--kernel portable)
        [[ "$1" == backward ]] && bench_bwd_args+=(--kernel portable)
        status=1
      fi
      return $rc
    }
    smoke forward 'Cases/HopperForward.MatchesReference/basic_bf16_d*:Cases/HopperForward.MatchesReference/hopper_long_bf16_d*:Cases/HopperForward.MatchesReference/hopper_long_varlen_bf16_d*:Cases/HopperForward.MatchesReference/hopper_persistent_bf16_d*' \
      hopper_smoke.log
    smoke=$?
    smoke backward 'Cases/HopperBackward.MatchesReference/basic_bf16_d*:Cases/HopperBackward.MatchesReference/causal_fp16_d*:Cases/HopperBackward.MatchesReference/hbwd_long_bf16_d*:Cases/HopperBackward.MatchesReference/hbwd_long_causal_gqa_bias_bf16_d*' \
      hopper_bwd_smoke.log
    bwd_smoke=$?
    if [[ -z "${SKIP_PORTABLE_PASS:-}" ]]; then
      echo "== GPU tests, portable forward and backward forced"
      (cd "$BUILD" && ctest -L portable_kernels --output-on-failure -j8 --timeout 120) 2>&1 |
        tee "$LOG/ctest_gpu_portable.log" | tail -40 || status=1
    fi
    if (( smoke == 0 || bwd_smoke == 0 )); then
      # Only the forward and backward tests again (those whose Hopper smoke test passed), unless the
      # portable pass was skipped (SKIP_PORTABLE_PASS=1).
      if (( smoke == 0 && bwd_smoke == 0 )); then filter=(-R 'Forward|Backward')
      elif (( smoke == 0 )); then filter=(-R Forward)
      else filter=(-R Backward); fi
      [[ -n "${SKIP_PORTABLE_PASS:-}" ]] && filter=()
      echo "== GPU tests, automatic dispatch (Hopper where it applies) ${filter[*]}"
      (cd "$BUILD" && ctest -L gpu "${filter[@]}" --output-on-failure -j8 --timeout 120) 2>&1 |
        tee "$LOG/ctest_gpu.log" | tail -40 || status=1
    fi
  else
    echo "== GPU tests"
    (cd "$BUILD" && ctest -L gpu --output-on-failure -j8 --timeout 120) 2>&1 | tee "$LOG/ctest_gpu.log" | tail -40 || status=1
  fi
fi
# The sanitizer filters name one head dim: unless SANITIZER_HEAD_DIM says, the first of 64, 128, 256
# that is built (every kernel family has those).
SAN_D="${SANITIZER_HEAD_DIM:-}"
for d in 64 128 256; do [[ -z "$SAN_D" && ";$DIMS;" == *";$d;"* ]] && SAN_D=$d; done
SAN_D="${SAN_D:-64}"
# Backward names end in _det / _atomic (Options::deterministic): both modes run.
SMALL='Cases/GpuForward.MatchesReference/basic_bf16_d*:Cases/GpuForward.MatchesReference/varlen_causal_fp16_d*:Cases/GpuForward.MatchesReference/window_bf16_d*:Cases/GpuForward.MatchesReference/nq_gt_nk_bf16_d*:Cases/GpuForward.MatchesReference/alibi_per_batch_causal_bf16_d*:Cases/GpuForward.MatchesReference/varlen_window_alibi_fp16_d*:Cases/HopperForward.MatchesReference/hopper_long_bf16_d*:Cases/HopperForward.MatchesReference/hopper_long_gqa_window_fp16_d*:Cases/HopperForward.MatchesReference/hopper_long_varlen_fp16_d*:Cases/HopperForward.MatchesReference/hopper_many_tiles_per_cta_causal_bf16_d*:HopperForwardSchedule.*:Cases/GpuBackward.MatchesReference/basic_bf16_d*_*:Cases/GpuBackward.MatchesReference/varlen_causal_fp16_d*_*:Cases/GpuBackward.MatchesReference/window_bf16_d*_*:Cases/GpuBackward.MatchesReference/gqa_bf16_d*_*:Cases/GpuBackward.MatchesReference/alibi_per_batch_causal_bf16_d*_*:Cases/GpuBackward.MatchesReference/varlen_window_bias_fp16_d*_*:Cases/HopperBackward.MatchesReference/basic_bf16_d*:Cases/HopperBackward.MatchesReference/hbwd_unseen_keys_bias_fp16_d*:Cases/HopperBackward.DeterministicMatchesReference/hbwd_long_bf16_d*:Forms/GpuNonFinite.VarlenRowsPastTheLastSequenceAreZero/*:Cases/GpuForward.MatchesReference/pos_diagonal_causal_bf16_d*:Cases/GpuForward.MatchesReference/pos_varlen_causal_fp16_d*:Cases/GpuBackward.MatchesReference/pos_window_alibi_bf16_d*_*:Cases/GpuBackward.MatchesReference/pos_future_keys_causal_fp16_d*_*:Cases/HopperForward.MatchesReference/pos_diagonal_causal_bf16_d*:Cases/HopperBackward.MatchesReference/hbwd_pos_partly_future_window_alibi_bf16_d*:Cases/HopperBackward.DeterministicMatchesReference/hbwd_pos_long_causal_gqa_bias_bf16_d*'
if want sanitizer && [[ -z "${SKIP_SANITIZER:-}" ]]; then
  SMALL="${SMALL//_d\*/_d$SAN_D}"
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer $tool"
    timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 3 "$TESTS" "${kernel_args[@]}" --gtest_filter="$SMALL" 2>&1 |
      tee "$LOG/sanitizer_$tool.log" || status=1
    if (( HOPPER )); then
      # The automatic choice ran the Hopper kernels above: the portable ones on the same cases too.
      echo "== compute-sanitizer $tool, portable kernels forced"
      timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 3 "$TESTS" --forward-kernel=portable \
        --backward-kernel=portable --gtest_filter="$SMALL" 2>&1 | tee "$LOG/sanitizer_${tool}_portable.log" || status=1
    fi
  done
fi

if want bench && [[ -z "${SKIP_BENCH:-}" ]]; then
  echo "== forward benchmark"
  timeout 300 "$BUILD/tests/gpu/flashsigmoid_cuda_fwd_bench" "${bench_fwd_args[@]}" ${FWD_BENCH_ARGS:-} 2>&1 | tee "$LOG/bench_fwd.txt" || status=1
  echo "== backward benchmark"
  timeout 300 "$BUILD/tests/gpu/flashsigmoid_cuda_fwd_bench" --backward "${bench_bwd_args[@]}" 2>&1 | tee "$LOG/bench_bwd.txt" || status=1
fi
if want kvcache; then
  echo "== KV-cache GPU tests"
  (cd "$BUILD" && ctest -L gpu -R KVCache --output-on-failure -j8 --timeout 120) 2>&1 |
    tee "$LOG/ctest_kvcache.log" | tail -20 || status=1
  if [[ -z "${SKIP_SANITIZER:-}" ]]; then
    KV_SMALL="Cases/GpuKVCache.MatchesReference/paged_ps16_bf16_d$SAN_D:Cases/GpuKVCache.MatchesReference/paged_ps1_fp16_d$SAN_D:Cases/GpuKVCache.MatchesReference/gqa_8_1_nq8_causal_fp16_d$SAN_D:Cases/GpuKVCache.MatchesReference/alibi_per_head_causal_bf16_d$SAN_D:Cases/GpuKVCache.MatchesReference/gqa_32_8_nq8_paged_bf16_d$SAN_D:GpuKVCacheMisc.BadSequencesThreeSplits:GpuKVCacheMisc.BadCacheBatchIdx:GpuKVCacheMisc.NaNPropagation:GpuKVCacheMisc.DependentLaunchChangesNoBit"
    for tool in memcheck racecheck; do
      echo "== compute-sanitizer $tool (KV cache)"
      timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 3 "$TESTS" --gtest_filter="$KV_SMALL" 2>&1 |
        tail -25 | tee "$LOG/sanitizer_kvcache_$tool.log" || status=1
    done
  fi
  if [[ -z "${SKIP_BENCH:-}" ]]; then
    echo "== KV-cache benchmark"
    timeout 400 "$BUILD/tests/gpu/flashsigmoid_cuda_decode_bench" ${KV_BENCH_ARGS:-} 2>&1 |
      tee "$LOG/bench_kvcache_cuda.txt" || status=1
    # KV_NCU_SHAPE="B:CACHE:HQ:HKV:NQ:PAGE ...": Nsight Compute reports of the attention kernel and the
    # split sum (one call's launches) on each shape, into one file.
    if [[ -n "${KV_NCU_SHAPE:-}" ]] && command -v ncu >/dev/null; then
      for shape in $KV_NCU_SHAPE; do
        echo "== Nsight Compute, KV-cache attention $shape" | tee -a "$LOG/ncu_kvcache.txt"
        timeout 120 ncu --kernel-name regex:'decode_kernel|sum_splits' --launch-skip 10 --launch-count 2 \
          --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
          --section SchedulerStats --section LaunchStats "$BUILD/tests/gpu/flashsigmoid_cuda_decode_bench" \
          --shape "$shape" --reps 2 >> "$LOG/ncu_kvcache.txt" 2>&1 || echo "ncu failed (see ncu_kvcache.txt)"
      done
      grep -E 'decode_kernel|sum_splits|Duration|DRAM Throughput|Grid Size|Registers Per' \
        "$LOG/ncu_kvcache.txt" | tail -80
    elif [[ -n "${KV_NCU_SHAPE:-}" ]]; then
      echo "== KV_NCU_SHAPE given but ncu is not on this machine: no report" | tee "$LOG/ncu_kvcache.txt"
    fi
    # KV_NSYS_SHAPE=B:CACHE:HQ:HKV:NQ:PAGE: an Nsight Systems trace of the benchmark on that shape; its
    # CUDA API and kernel summaries (host time per runtime call, time per kernel) into nsys_kvcache.txt.
    if [[ -n "${KV_NSYS_SHAPE:-}" ]] && command -v nsys >/dev/null; then
      echo "== Nsight Systems, KV-cache benchmark $KV_NSYS_SHAPE"
      timeout 180 nsys profile -t cuda -o /tmp/kv_nsys -f true "$BUILD/tests/gpu/flashsigmoid_cuda_decode_bench" \
        --shape "$KV_NSYS_SHAPE" --reps 50 > /dev/null 2>&1 &&
        timeout 120 nsys stats -r cuda_api_sum,cuda_gpu_kern_sum /tmp/kv_nsys.nsys-rep > "$LOG/nsys_kvcache.txt" 2>&1 ||
        echo "nsys failed"
      grep -E 'cuda[A-Z][A-Za-z]*|decode_kernel|sum_splits' "$LOG/nsys_kvcache.txt" | cut -c1-160 | head -30
    elif [[ -n "${KV_NSYS_SHAPE:-}" ]]; then
      echo "== KV_NSYS_SHAPE given but nsys is not on this machine: no trace" | tee "$LOG/nsys_kvcache.txt"
    fi
    # KV_SPLITS_SWEEP="1:1024:32:8:1:16=2,4,8,16 ...": where the small-shape floor sits against the split count.
    for item in ${KV_SPLITS_SWEEP:-}; do
      shape=${item%%=*}
      counts=${item#*=}
      for n in 0 ${counts//,/ }; do
        echo "== KV-cache benchmark $shape, splits $n (0 = heuristic)"
        timeout 60 "$BUILD/tests/gpu/flashsigmoid_cuda_decode_bench" --shape "$shape" --splits "$n" 2>&1
      done
    done 2>&1 | tee "$LOG/bench_kvcache_splits.txt"
  fi
fi
if want python && [[ -z "${SKIP_PYTHON:-}" ]]; then
  # The Python package with the same kernels, then its tests (GPU ones included). PY_REUSE=1 keeps a
  # package already installed on this (warm) machine, for a harness-only follow-up call.
  if [[ -n "${PY_REUSE:-}" ]] && python3 -c "import flashsigmoid" 2>/dev/null; then
    echo "== Python package already installed (PY_REUSE=1)"
  else
    echo "== Python package (pip install)"
    FLASHSIGMOID_CUDA=ON CMAKE_ARGS="-DFLASHSIGMOID_CUDA_ARCHS=$ARCHS -DFLASHSIGMOID_HEAD_DIMS=${PY_HEAD_DIMS:-$DIMS} ${EXTRA_CMAKE_ARGS:-}" \
      python3 -m pip install -q --no-build-isolation . > "$LOG/pip_install.log" 2>&1 || { status=1; tail -20 "$LOG/pip_install.log"; }
  fi
  if [[ -z "${SKIP_PYTEST:-}" ]]; then
    echo "== pytest"
    timeout 400 python3 -m pytest -q ${PYTEST_ARGS:-tests/python} 2>&1 | tee "$LOG/pytest.log" | tail -15 || status=1
  fi
fi
if want harness && [[ -z "${SKIP_BENCH:-}" ]]; then
  # One process: flashsigmoid (when the Python package is installed; else reported n/a), SDPA flash / cuDNN,
  # triton-sigmoid (when installed), plain sigmoid, cuBLAS GEMM; writes .md/.json/.png into $LOG/harness.
  # COMMIT (env) names the commit, since the GPU machine's copy has no .git.
  echo "== benchmark harness (bench/harness.py ${HARNESS_ARGS:-})"
  timeout 400 python3 bench/harness.py --out "$LOG/harness" ${COMMIT:+--commit "$COMMIT"} ${HARNESS_ARGS:-} 2>&1 |
    tee "$LOG/bench_harness.txt" || status=1
fi
if want decode && [[ -z "${SKIP_BENCH:-}" ]]; then
  # KV-cache decode (needs the Python package): bandwidth against a device copy, SDPA, FlashInfer when
  # importable; writes .md/.json into $LOG/decode.
  echo "== decode benchmark (bench/decode_bench.py ${DECODE_ARGS:-})"
  timeout 500 python3 bench/decode_bench.py --device cuda --out "$LOG/decode" ${COMMIT:+--commit "$COMMIT"} \
    ${DECODE_ARGS:-} 2>&1 | tee "$LOG/bench_decode.txt" || status=1
  echo "== host time per KV-cache call (bench/op_overhead.py)"
  timeout 120 python3 bench/op_overhead.py --device cuda 2>&1 | tee -a "$LOG/bench_decode.txt" || status=1
fi
if want cp; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
  if (( gpus < 2 )); then
    echo "== context-parallel benchmark skipped: it needs 2 GPUs, this machine has $gpus" | tee "$LOG/bench_cp.txt"
    status=1
  else
    echo "== context-parallel benchmark (bench/cp_bench.py ${CP_ARGS:-})"
    timeout "${CP_TIMEOUT:-480}" python3 bench/cp_bench.py "$LOG/cp" ${COMMIT:+--commit "$COMMIT"} ${CP_ARGS:-} 2>&1 |
      tee "$LOG/bench_cp.txt" || status=1
  fi
fi
if want cpu_amx; then
  if grep -qw amx_bf16 /proc/cpuinfo; then
    for level in x86-64-v4-amx x86-64-v4-bf16; do
      echo "== CPU accuracy suite at $level"
      FLASHSIGMOID_CPU_ISA=$level timeout 300 "$BUILD/tests/cpp/flashsigmoid_tests" \
        --gtest_filter='CpuIsa.*:*/CpuAccuracy.*:*/NonFinite.*:CpuDeterminism.*:*/KVCacheAccuracy.*:KVCache.*:*/DecodeMatchesForward.*' 2>&1 |
        tail -15 | tee "$LOG/cpu_amx_tests_$level.log"
      (( PIPESTATUS[0] == 0 )) || status=1
      for d in 64 128; do
        FLASHSIGMOID_CPU_ISA=$level timeout 120 "$BUILD/tools/cli/flashsigmoid" run --device cpu --dtype bf16 \
          --seqlen 4096 --heads 8 --head-dim $d --iters 3 2>&1 | tee -a "$LOG/cpu_amx_run.log" || status=1
      done
    done
  else
    echo "== cpu_amx: this CPU has no AMX-BF16; skipped" | tee "$LOG/cpu_amx_skipped.log"
  fi
fi
if want cpu_compare; then
  # The host CPU against PyTorch (bench/cpu_compare.py) with the pip-installed package, e.g. on a GPU
  # machine whose CPU has AMX; CPU_COMPARE_ARGS adds flags (e.g. "--quick --dtypes bf16").
  echo "== CPU comparison (bench/cpu_compare.py ${CPU_COMPARE_ARGS:-})"
  timeout "${CPU_COMPARE_TIMEOUT:-400}" python3 bench/cpu_compare.py "$LOG/cpu_compare" ${COMMIT:+--commit "$COMMIT"} ${CPU_COMPARE_ARGS:-} 2>&1 |
    tee "$LOG/cpu_compare.txt" | tail -30 || status=1
fi
if want cli; then
  echo "== CLI main job"
  timeout 120 "$BUILD/tools/cli/flashsigmoid" run 2>&1 | tee "$LOG/cli_run.txt" || status=1
fi
if want study; then
  # Each part's JSON is written as its variants finish, so a timeout still leaves the curves so far.
  echo "== parity study, gpu preset (studies/parity/run.py ${STUDY_ARGS:-})"
  timeout "${STUDY_TIMEOUT:-420}" python3 studies/parity/run.py --preset gpu --out "$LOG/parity-gpu" ${STUDY_ARGS:-} \
    2>&1 | tee "$LOG/parity_gpu.log" | tail -40 || status=1
  [[ -f "$LOG/parity-gpu/summary.md" ]] || python3 studies/parity/report.py "$LOG/parity-gpu" || status=1
fi
if [[ -n "${PACK_LOGS:-}" ]]; then
  (cd "$LOG" && tar czf logs.tgz --remove-files -- *.log *.txt 2>/dev/null)
  if [[ -d "$LOG/parity-gpu" ]]; then (cd "$LOG" && tar czf parity-gpu.tgz --remove-files parity-gpu); fi
fi
exit $status
