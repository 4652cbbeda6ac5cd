// Host-only checks (no GPU needed: CuTe layouts evaluated on the CPU) of the Hopper backward's
// register and shared-memory layouts (src/cuda/hopper/bwd_traits.cuh), for head dims 64 and 128:
// the transposed shared-memory views name the same elements, P^T / dS^T accumulator registers are the
// registers the RS wgmma expects as its A operand, each warpgroup owns its 64 keys of S^T and its
// D / 2 columns of dQ, which its one-warpgroup partition writes to the right place of its fp32
// staging tile (a bijection onto the tile, register pairs contiguous), and the stmatrix stores of the
// forward's O and the backward's dK / dV epilogue put each register at its own coordinate. Built in
// every CUDA build (only the layouts' types are used, no sm_90a code), so CI runs it.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cuda/hopper/bwd_traits.cuh"
#include "cuda/common/wgmma.cuh"  // acc_layout_as_a_operand
#include "cuda/hopper/fwd_traits.cuh"

namespace {

using namespace cute;

// Plain (row, column) -> element offsets of an M x N shared-memory tile, as the kernels store and
// read it by 32-bit shared addresses: errors against "a bijection onto the tile, and each aligned
// group of g columns of a row at g consecutive offsets, the group's first offset a multiple of g".
template <class Offsets>
int bad_grouped_offsets(const Offsets& offsets, int M, int N, int g) {
  std::vector<int> seen(M * N, 0);
  int bad = 0;
  for (int r = 0; r < M; ++r) {
    for (int c = 0; c < N; ++c) {
      const int o = offsets(r, c);
      if (o < 0 || o >= M * N || seen[o]++ != 0) ++bad;
      if (c % g == 0) {
        bad += o % g != 0;
      } else {
        bad += o != offsets(r, c - c % g) + c % g;
      }
    }
  }
  return bad;
}

template <int D>
void check_hopper_bwd_layouts() {
  using T = flashsigmoid::cuda::hopper::BwdTraits<D, cutlass::bfloat16_t>;
  constexpr int BN = T::kBlockN, BM = T::kBlockM;
  SCOPED_TRACE("D " + std::to_string(D));

  // Transposed views: same element, and bijections onto their tiles.
  int bad = 0;
  {
    typename T::SmemLayoutK k;
    typename T::SmemLayoutKt kt;
    std::vector<int> seen(BN * D, 0);
    for (int n = 0; n < BN; ++n) {
      for (int d = 0; d < D; ++d) {
        bad += kt(d, n) != k(n, d);
        const int o = k(n, d);
        bad += o < 0 || o >= BN * D || seen[o]++ != 0;
      }
    }
    EXPECT_EQ(bad, 0) << "sK / sKt";
  }
  bad = 0;
  {
    typename T::SmemLayoutQ q;
    typename T::SmemLayoutQt qt;
    for (int s = 0; s < T::kStages; ++s) {
      for (int m = 0; m < BM; ++m) {
        for (int d = 0; d < D; ++d) bad += qt(d, m, s) != q(m, d, s);
      }
    }
    EXPECT_EQ(bad, 0) << "sQ / sQt";
  }
  bad = 0;
  {
    typename T::SmemLayoutDsT dst;
    typename T::SmemLayoutDs ds;
    std::vector<int> seen(2 * BN * BM, 0);
    for (int b = 0; b < 2; ++b) {
      for (int n = 0; n < BN; ++n) {
        for (int m = 0; m < BM; ++m) {
          bad += ds(m, n, b) != dst(n, m, b);
          const int o = dst(n, m, b);
          bad += o < 0 || o >= 2 * BN * BM || seen[o]++ != 0;
        }
      }
    }
    EXPECT_EQ(bad, 0) << "sDs / sDsT";
  }

  typename T::TiledMmaSdP mma_sdp;
  typename T::TiledMmaDKV mma_dkv;
  typename T::TiledMmaDQ mma_dq;
  typename T::TiledMmaDQPart mma_dq_part;
  // The staging tile's shape, as the kernel partitions it (the swizzle only permutes addresses).
  auto staging_partition = mma_dq_part.get_thread_slice(0).partition_C(
      make_identity_tensor(shape(typename T::SmemLayoutDq{})));
  constexpr int kCols = T::kDqCols;
  std::vector<int> s_cover(BN * BM, 0), dq_cover(BM * D, 0), staged(T::kNConsumerWarpGroups * BM * kCols, 0);
  int bad_rows = 0, bad_a = 0, bad_staging = 0, bad_cols = 0;
  for (int ctid = 0; ctid < T::kNConsumerThreads; ++ctid) {
    const int wg = ctid / 128;
    // S^T / dP^T registers: (key, query), keys of this thread's warpgroup only.
    Tensor cS = mma_sdp.get_thread_slice(ctid).partition_C(make_identity_tensor(Shape<Int<BN>, Int<BM>>{}));
    for (int i = 0; i < size(cS); ++i) {
      const int key = get<0>(cS(i));
      bad_rows += key / 64 != wg;
      s_cover[key * BM + get<1>(cS(i))]++;
    }
    // The same registers viewed as the A operand of dV += P^T dO / dK += dS^T Q hold the (key, query)
    // element the RS wgmma reads there.
    Tensor cA = make_tensor(cS.data(), flashsigmoid::cuda::sm90::acc_layout_as_a_operand(cS.layout()));
    Tensor want = mma_dkv.get_thread_slice(ctid).partition_A(make_identity_tensor(Shape<Int<BN>, Int<BM>>{}));
    bad_a += size(cA) != size(want);
    for (int i = 0; i < size(want); ++i) bad_a += !(cA(i) == want(i));
    // dQ registers: (query, column), this warpgroup's half of D. The kernel copies them to its
    // staging tile through the one-warpgroup MMA's partition: register i lands at (row, col - w D / 2).
    Tensor cQ = mma_dq.get_thread_slice(ctid).partition_C(make_identity_tensor(Shape<Int<BM>, Int<D>>{}));
    Tensor cPart = mma_dq_part.get_thread_slice(ctid % 128).partition_C(make_identity_tensor(Shape<Int<BM>, Int<kCols>>{}));
    bad_staging += size(cQ) != size(cPart) || size(staging_partition) != size(cPart);
    for (int i = 0; i < size(cQ); ++i) {
      const int row = get<0>(cQ(i)), col = get<1>(cQ(i));
      bad_cols += col / kCols != wg;
      dq_cover[row * D + col]++;
      bad_staging += get<0>(cPart(i)) != row || get<1>(cPart(i)) + wg * kCols != col;
      const int r = get<0>(cPart(i)), c = get<1>(cPart(i));
      if (r < 0 || r >= BM || c < 0 || c >= kCols) ++bad_staging;
      else staged[(wg * BM + r) * kCols + c]++;
    }
  }
  EXPECT_EQ(bad_rows, 0) << "S^T registers outside the warpgroup's keys";
  EXPECT_EQ(bad_a, 0) << "P^T / dS^T registers are not the RS wgmma's A operand";
  EXPECT_EQ(bad_cols, 0) << "dQ registers outside the warpgroup's columns";
  EXPECT_EQ(bad_staging, 0) << "dQ registers do not land at their (row, column) of the staging tile";
  int bad_cover = 0;
  for (int c : s_cover) bad_cover += c != 1;
  for (int c : dq_cover) bad_cover += c != 1;
  for (int c : staged) bad_cover += c != 1;
  EXPECT_EQ(bad_cover, 0) << "S^T or dQ elements not held by exactly one register";

  // The staging tile's plain offsets (store_pairs_shared): a bijection onto the tile, and columns
  // 2c, 2c + 1 of a row adjacent, the pair 8-byte aligned.
  EXPECT_EQ(bad_grouped_offsets(typename T::SmemOffsetsDq{}, BM, kCols, 2), 0) << "dQ staging offsets";
}

// The epilogue's stmatrix copy (fwd_epilogue.cuh's store_output) of a TiledMma's C tile of shape
// (M, N), emulated per warp as PTX defines stmatrix.x4 (m8n8, b16): for each instruction, lane l
// gives the address of row l % 8 of matrix l / 8, and row r, elements 2q, 2q + 1 of matrix j come
// from lane 4r + q's register j (the register's two b16 halves). Each accumulator coordinate must be
// stored at that coordinate, every element of the tile once.
template <class TiledMma, int M, int N>
void check_stmatrix_epilogue(int threads) {
  TiledMma mma;
  auto r2s = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, cutlass::bfloat16_t>{}, mma);
  using Tile = Shape<Int<M>, Int<N>>;
  std::vector<int> cover(M * N, 0);
  int bad = 0;
  for (int warp = 0; warp < threads / 32; ++warp) {
    auto from = [&](int lane) {  // this lane's registers' coordinates, in the order copy() hands them over
      auto thr = r2s.get_thread_slice(warp * 32 + lane);
      return thr.retile_S(mma.get_thread_slice(warp * 32 + lane).partition_C(make_identity_tensor(Tile{})));
    };
    auto to = [&](int lane) { return r2s.get_thread_slice(warp * 32 + lane).partition_D(make_identity_tensor(Tile{})); };
    const int n_instr = int(size(to(0))) / 8;  // 8 b16 per lane's address row
    bad += size(from(0)) != size(to(0));
    for (int k = 0; k < n_instr; ++k) {
      for (int lane = 0; lane < 32; ++lane) {
        const int j = lane / 8, r = lane % 8;
        auto dst = to(lane);
        for (int e = 0; e < 8; ++e) {
          auto src = from(4 * r + e / 2);
          const auto want = src(k * 8 + 2 * j + e % 2);  // register j of that lane, half e % 2
          const auto got = dst(k * 8 + e);
          bad += !(want == got);
          cover[get<0>(got) * N + get<1>(got)]++;
        }
      }
    }
  }
  for (int c : cover) bad += c != 1;
  EXPECT_EQ(bad, 0) << "stmatrix epilogue copy";
}

TEST(HopperBwdLayouts, D64) { check_hopper_bwd_layouts<64>(); }
TEST(HopperBwdLayouts, D128) { check_hopper_bwd_layouts<128>(); }

// The epilogue's read-back (store_output): 16-byte vectors of 8 columns (c % 8 == 0) at plain
// offsets of the swizzled tile must be contiguous and 16-byte aligned, and the offsets a bijection.
template <class SmemLayout, int M, int N>
void check_vector_readback() {
  EXPECT_EQ(bad_grouped_offsets(as_position_independent_swizzle_layout(SmemLayout{}), M, N, 8), 0)
      << "epilogue read-back vectors";
}

TEST(HopperEpilogueLayouts, ForwardO) {
  using flashsigmoid::cuda::hopper::FwdTraits;
  check_vector_readback<FwdTraits<64, cutlass::bfloat16_t>::SmemLayoutO, 128, 64>();
  check_vector_readback<FwdTraits<128, cutlass::bfloat16_t>::SmemLayoutO, 128, 128>();
  check_vector_readback<FwdTraits<256, cutlass::bfloat16_t>::SmemLayoutO, 128, 256>();
  check_stmatrix_epilogue<FwdTraits<64, cutlass::bfloat16_t>::TiledMmaPV, 128, 64>(256);
  check_stmatrix_epilogue<FwdTraits<128, cutlass::bfloat16_t>::TiledMmaPV, 128, 128>(256);
  check_stmatrix_epilogue<FwdTraits<256, cutlass::bfloat16_t>::TiledMmaPV, 128, 256>(256);
}
TEST(HopperEpilogueLayouts, BackwardDkDv) {
  using flashsigmoid::cuda::hopper::BwdTraits;
  check_vector_readback<BwdTraits<64, cutlass::bfloat16_t>::SmemLayoutV, 128, 64>();
  check_vector_readback<BwdTraits<128, cutlass::bfloat16_t>::SmemLayoutV, 128, 128>();
  check_stmatrix_epilogue<BwdTraits<64, cutlass::bfloat16_t>::TiledMmaDKV, 128, 64>(256);
  check_stmatrix_epilogue<BwdTraits<128, cutlass::bfloat16_t>::TiledMmaDKV, 128, 128>(256);
}

}  // namespace
