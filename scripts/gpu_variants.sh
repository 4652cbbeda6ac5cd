#!/usr/bin/env bash
# Times build variants side by side (one GPU call): each variant is configured with its own CUDA
# flags, and optionally its own source tree, all are built in parallel, then each runs the CUDA
# benchmark, ROUNDS times in turn (A B A B: two runs of one build show the noise). Used for tuning
# and for before/after comparisons; results go to bench/NOTES.md and bench/results/.
#   usage: bash scripts/gpu_variants.sh OUTDIR
#   env: VARIANTS ("name[@dir]:flags ...": several flags joined by "_", e.g. "x:-DA=1_-DB=2"; @dir builds
#        another source tree, e.g. a `git worktree add .wt-main main` copied along: "main@.wt-main:"),
#        FLASHSIGMOID_HEAD_DIMS (default "64;128"), BENCH_ARGS (default --quick), ROUNDS (default 1),
#        VARIANT_BACKWARD (default OFF: forward only, faster to build; ON for --backward).
#   Needs .deps (copy it to the GPU machine, and any @dir). Per-variant build logs and benchmark tables end up in
#   OUTDIR/variant_logs.tgz; stdout has the tables and the ptxas spill summary.
set -uo pipefail
if (( $# != 1 )); then
  echo "usage: bash scripts/gpu_variants.sh OUTDIR (settings in the environment: see the script's header)" >&2
  exit 2
fi
LOG="$(mkdir -p "$1" && cd "$1" && pwd)" || exit 2
cd "$(dirname "$0")/.."
DIMS="${FLASHSIGMOID_HEAD_DIMS:-64;128}"
export CUTLASS_INCLUDE_DIR="${CUTLASS_INCLUDE_DIR:-$PWD/.deps/cutlass/include}"  # also for @dir trees
VARIANTS="${VARIANTS:-base: exp:-DFLASHSIGMOID_SIGMOID_EXP=1}"
prefix=()
if ! cmake --find-package -DNAME=GTest -DCOMPILER_ID=GNU -DLANGUAGE=CXX -DMODE=EXIST >/dev/null 2>&1; then
  cmake -S .deps/googletest -B /tmp/gtest-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF \
    -DCMAKE_INSTALL_PREFIX=/tmp/gtest -DCMAKE_POSITION_INDEPENDENT_CODE=ON >/dev/null &&
    cmake --build /tmp/gtest-build -j16 >/dev/null && cmake --install /tmp/gtest-build >/dev/null
  prefix=(-DCMAKE_PREFIX_PATH=/tmp/gtest)
fi
for v in $VARIANTS; do
  name="${v%%:*}" flags="${v#*:}" src=.
  [[ "$name" == *@* ]] && src="${name#*@}" name="${name%%@*}"
  flags="${flags//_-D/ -D}"  # "_-D" separates several flags inside one variant
  (cmake -S "$src" -B "build-var-$name" -G Ninja -DFLASHSIGMOID_CUDA=ON -DFLASHSIGMOID_CUDA_ARCHS=90a \
     -DFLASHSIGMOID_HEAD_DIMS="$DIMS" -DFLASHSIGMOID_BUILD_TESTS=ON -DFLASHSIGMOID_BUILD_CLI=OFF \
     -DFLASHSIGMOID_CUDA_BACKWARD="${VARIANT_BACKWARD:-OFF}" \
     -DFLASHSIGMOID_BUILD_BENCH=OFF "${prefix[@]}" "-DCMAKE_CUDA_FLAGS=$flags -Xptxas=-v" >/dev/null &&
   cmake --build "build-var-$name" --target flashsigmoid_cuda_fwd_bench -j8 > "$LOG/build_$name.log" 2>&1 ||
   echo "variant $name failed to build") &
done
wait
for v in $VARIANTS; do
  name="${v%%:*}" && name="${name%%@*}"
  echo "== variant $name (${v#*:}): spills"
  grep -E "bytes spill" "$LOG/build_$name.log" | sort | uniq -c | head -4
done
for round in $(seq "${ROUNDS:-1}"); do
  for v in $VARIANTS; do
    name="${v%%:*}" && name="${name%%@*}"
    echo "== variant $name (${v#*:}), round $round"
    timeout 300 "build-var-$name/tests/gpu/flashsigmoid_cuda_fwd_bench" ${BENCH_ARGS:---quick} 2>&1 |
      tee "$LOG/bench_${name}_r$round.txt"
  done
done
# One archive for the per-variant files (easier to copy back from the GPU machine); stdout already
# holds every benchmark table.
(cd "$LOG" && tar -czf variant_logs.tgz build_*.log bench_*_r*.txt && rm -f build_*.log bench_*_r*.txt)
