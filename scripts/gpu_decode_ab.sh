#!/usr/bin/env bash
# A/B of the CUDA KV-cache attention on one GPU: this tree ("new") against the same tree with an
# overlay's files in place ("base"), e.g. an earlier commit's decode sources:
#   mkdir -p overlay && git archive BASE src/cuda/decode | tar -x -C overlay
#   bash scripts/gpu_decode_ab.sh OUTDIR overlay
# Builds both (base in /tmp/decode_ab_base, in the background while gpu_check.sh builds this tree and
# runs the KV-cache GPU tests and sanitizers), then runs the two benchmarks alternately, two rounds:
# the quick set and AB_SHAPES. Writes OUTDIR/ab_new.txt, OUTDIR/ab_base.txt, OUTDIR/check.txt.
# env: FLASHSIGMOID_CUDA_ARCHS (default 90a), FLASHSIGMOID_HEAD_DIMS (default 128), AB_SHAPES.
set -uo pipefail
if (( $# != 2 )); then echo "usage: bash scripts/gpu_decode_ab.sh OUTDIR OVERLAY_DIR" >&2; exit 2; fi
OUT="$(mkdir -p "$1" && cd "$1" && pwd)" || exit 2
OVERLAY="$(cd "$2" && pwd)" || exit 2
cd "$(dirname "$0")/.."
export FLASHSIGMOID_CUDA_ARCHS="${FLASHSIGMOID_CUDA_ARCHS:-90a}" FLASHSIGMOID_HEAD_DIMS="${FLASHSIGMOID_HEAD_DIMS:-128}"
SHAPES="${AB_SHAPES:-1:1024:32:8:1:16 1:32768:32:8:1:16 4:8192:32:8:1:16 1:32768:8:1:1:16 1:8192:32:8:8:16}"
BASE_TREE=/tmp/decode_ab_base
rm -rf "$BASE_TREE" && mkdir -p "$BASE_TREE"
tar --exclude='./build*' -cf - . | tar -xf - -C "$BASE_TREE"
cp -r "$OVERLAY"/. "$BASE_TREE"/
# The benchmark lives with the GPU tests, which need GoogleTest: the base gets its own copy built from
# .deps/googletest where the machine has none (gpu_check.sh builds another for this tree).
gtest_prefix=()
if ! cmake --find-package -DNAME=GTest -DCOMPILER_ID=GNU -DLANGUAGE=CXX -DMODE=EXIST >/dev/null 2>&1; then
  cmake -S .deps/googletest -B /tmp/decode_ab_gtest_build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF \
    -DCMAKE_INSTALL_PREFIX=/tmp/decode_ab_gtest -DCMAKE_POSITION_INDEPENDENT_CODE=ON > /dev/null &&
    cmake --build /tmp/decode_ab_gtest_build -j16 > /dev/null && cmake --install /tmp/decode_ab_gtest_build > /dev/null ||
    { echo "GoogleTest for the base build failed" >&2; exit 1; }
  gtest_prefix=(-DCMAKE_PREFIX_PATH=/tmp/decode_ab_gtest)
fi
(
  cd "$BASE_TREE" &&
    cmake -S . -B build -G Ninja -DFLASHSIGMOID_CUDA=ON -DFLASHSIGMOID_CUDA_BACKWARD=OFF -DFLASHSIGMOID_HOPPER=OFF \
      -DFLASHSIGMOID_CUDA_ARCHS="$FLASHSIGMOID_CUDA_ARCHS" -DFLASHSIGMOID_HEAD_DIMS="$FLASHSIGMOID_HEAD_DIMS" \
      -DFLASHSIGMOID_BUILD_TESTS=ON -DFLASHSIGMOID_BUILD_CLI=OFF "${gtest_prefix[@]}" > "$OUT/base_build.txt" 2>&1 &&
    cmake --build build -j8 --target flashsigmoid_cuda_decode_bench >> "$OUT/base_build.txt" 2>&1
  echo "base build rc=$?" >> "$OUT/base_build.txt"
) &
SKIP_BENCH=1 STAGES=kvcache \
  EXTRA_CMAKE_ARGS="-DFLASHSIGMOID_CUDA_BACKWARD=OFF -DFLASHSIGMOID_HOPPER=OFF -DFLASHSIGMOID_BUILD_CLI=OFF" \
  bash scripts/gpu_check.sh "$OUT/check" > "$OUT/check.txt" 2>&1
echo "gpu_check rc=$?"
wait
tail -1 "$OUT/base_build.txt"
NEW=build-gpu/tests/gpu/flashsigmoid_cuda_decode_bench
BASE="$BASE_TREE/build/tests/gpu/flashsigmoid_cuda_decode_bench"
[[ -x "$NEW" && -x "$BASE" ]] || { echo "a benchmark binary is missing"; exit 1; }
for round in 1 2; do
  for v in new base; do
    bin=$NEW
    [[ $v == base ]] && bin=$BASE
    echo "== $v round $round" >> "$OUT/ab_$v.txt"
    timeout 200 "$bin" --quick >> "$OUT/ab_$v.txt" 2>&1
    for s in $SHAPES; do timeout 60 "$bin" --shape "$s" 2>&1 | tail -1 >> "$OUT/ab_$v.txt"; done
  done
done
