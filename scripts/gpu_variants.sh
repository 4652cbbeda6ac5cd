#!/usr/bin/env bash
# Times build variants of the portable forward side by side (one GPU call): each variant is
# configured with its own CUDA flags, all are built in parallel, then each runs the forward
# benchmark. Used for tuning; results go to bench/NOTES.md and bench/results/.
#   env: VARIANTS ("name:flags name:flags ...", several flags joined by "_": "x:-DA=1_-DB=2"), FLASHSIGMOID_HEAD_DIMS (default "64;128"),
#        BENCH_ARGS (default --quick). Needs .deps (carry it).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG="${OUT:-$PWD/gpu_check_logs}"
mkdir -p "$LOG"
DIMS="${FLASHSIGMOID_HEAD_DIMS:-64;128}"
VARIANTS="${VARIANTS:-base: w4:-DFLASHSIGMOID_FWD_WARPS=4 mb2:-DFLASHSIGMOID_FWD_MINBLOCKS=2 exp:-DFLASHSIGMOID_SIGMOID_EXP=1}"
prefix=()
if ! cmake --find-package -DNAME=GTest -DCOMPILER_ID=GNU -DLANGUAGE=CXX -DMODE=EXIST >/dev/null 2>&1; then
  cmake -S .deps/googletest -B /tmp/gtest-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF \
    -DCMAKE_INSTALL_PREFIX=/tmp/gtest -DCMAKE_POSITION_INDEPENDENT_CODE=ON >/dev/null &&
    cmake --build /tmp/gtest-build -j16 >/dev/null && cmake --install /tmp/gtest-build >/dev/null
  prefix=(-DCMAKE_PREFIX_PATH=/tmp/gtest)
fi
for v in $VARIANTS; do
  name="${v%%:*}" flags="${v#*:}"
  flags="${flags//_-D/ -D}"  # "_-D" separates several flags inside one variant
  (cmake -S . -B "build-var-$name" -G Ninja -DFLASHSIGMOID_CUDA=ON -DFLASHSIGMOID_CUDA_ARCHS=90a \
     -DFLASHSIGMOID_HEAD_DIMS="$DIMS" -DFLASHSIGMOID_BUILD_TESTS=ON -DFLASHSIGMOID_BUILD_CLI=OFF \
     -DFLASHSIGMOID_BUILD_BENCH=OFF "${prefix[@]}" "-DCMAKE_CUDA_FLAGS=$flags -Xptxas=-v" >/dev/null &&
   cmake --build "build-var-$name" --target flashsigmoid_cuda_fwd_bench -j8 > "$LOG/build_$name.log" 2>&1 ||
   echo "variant $name failed to build") &
done
wait
for v in $VARIANTS; do
  name="${v%%:*}"
  echo "== variant $name (${v#*:})"
  grep -E "registers|spill" "$LOG/build_$name.log" | grep -B1 -A0 "spill" | grep -E "bytes spill" | sort | uniq -c | head -4
  "build-var-$name/tests/gpu/flashsigmoid_cuda_fwd_bench" ${BENCH_ARGS:---quick} 2>&1 | tee "$LOG/bench_$name.txt"
done
