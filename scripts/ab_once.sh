#!/usr/bin/env bash
# One-off A/B (not kept): D 64 backward, main (.wt-main) vs this tree; then this tree's GPU backward tests.
set -uo pipefail
export CUTLASS_INCLUDE_DIR=$PWD/.deps/cutlass/include
cmake -S .deps/googletest -B /tmp/gtest-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF \
  -DCMAKE_INSTALL_PREFIX=/tmp/gtest -DCMAKE_POSITION_INDEPENDENT_CODE=ON >/dev/null &&
  cmake --build /tmp/gtest-build -j16 >/dev/null && cmake --install /tmp/gtest-build >/dev/null
for v in main:.wt-main m128:.; do
  n=${v%%:*} src=${v#*:}
  cmake -S $src -B build-$n -G Ninja -DFLASHSIGMOID_CUDA=ON -DFLASHSIGMOID_CUDA_ARCHS=90a -DFLASHSIGMOID_HEAD_DIMS=64 \
    -DFLASHSIGMOID_BUILD_TESTS=ON -DFLASHSIGMOID_BUILD_CLI=OFF -DFLASHSIGMOID_CUDA_BACKWARD=ON -DFLASHSIGMOID_BUILD_BENCH=OFF \
    -DCMAKE_PREFIX_PATH=/tmp/gtest >/dev/null
done
(cmake --build build-main --target flashsigmoid_cuda_fwd_bench -j6 > $OUT/build_main.log 2>&1 || echo main build failed) &
(cmake --build build-m128 --target flashsigmoid_cuda_fwd_bench flashsigmoid_gpu_tests -j10 > $OUT/build_m128.log 2>&1 || echo m128 build failed) &
wait
echo "built at $SECONDS s"
for r in 1 2; do for n in main m128; do for s in 64:1024:0 64:4096:0 64:8192:0 64:1024:1 64:8192:1; do
  timeout 30 build-$n/tests/gpu/flashsigmoid_cuda_fwd_bench --backward --shape $s 2>&1 | grep -E "^ +64" | sed "s/^/$n r$r /"
done; done; done
echo "benched at $SECONDS s"
timeout 100 build-m128/tests/gpu/flashsigmoid_gpu_tests --gtest_filter='*ackward*' > $OUT/tests.txt 2>&1; echo "tests rc $?"
grep -E "PASSED|FAILED|tests ran" $OUT/tests.txt | head
