// Host-only checks (no GPU needed: CuTe layouts evaluated on the CPU) of the fused dQ's register and
// shared-memory layouts in the portable backward (bwd_traits.cuh), for every supported head dim:
// that the dS^T store, the transposed views and the ldmatrix.trans loads hand each MMA register the
// element it expects, and that atomic_add_rows' column pairs and row bounds hold.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cuda/portable/bwd_traits.cuh"

namespace {

using namespace cute;

template <int D>
void check_fused_dq_layouts() {
  using T = flashsigmoid::cuda::portable::BwdTraits<D, cutlass::bfloat16_t>;
  constexpr int BK = T::kBlockKeys, BQ = T::kBlockQA, kChunk = T::kDqChunk;
  SCOPED_TRACE("D " + std::to_string(D));

  // sDs (query, key) and sDsT (key, query) name the same element; sDsT is a bijection onto the tile.
  typename T::SmemLayoutDs ds;
  typename T::SmemLayoutDsT dst;
  std::vector<int> seen(BK * BQ, 0);
  int bad = 0;
  for (int q = 0; q < BQ; ++q) {
    for (int k = 0; k < BK; ++k) {
      bad += ds(q, k) != dst(k, q);
      const int o = dst(k, q);
      bad += o < 0 || o >= BK * BQ || seen[o]++ != 0;
    }
  }
  EXPECT_EQ(bad, 0) << "sDs / sDsT views";
  typename T::SmemLayoutKeysT kt;
  typename T::SmemLayoutKeys kk;
  bad = 0;
  for (int d = 0; d < D; ++d) {
    for (int k = 0; k < BK; ++k) bad += kt(d, k) != kk(k, d);
  }
  EXPECT_EQ(bad, 0) << "sKt view";

  typename T::TiledMma mma_s;
  typename T::TiledMmaDq mma;
  typename T::SmemCopyDs r2s;
  typename T::SmemCopyDqA lda;
  typename T::SmemCopyDqB ldb;
  using TileS = Shape<Int<BK>, Int<BQ>>;
  using TileDq = Shape<Int<BQ>, Int<kChunk>>;
  std::vector<int> stored(BK * BQ, 0), added(BQ * kChunk, 0);
  int bad_store = 0, bad_a = 0, bad_b = 0, bad_pairs = 0;
  for (int tid = 0; tid < T::kNThreads; ++tid) {
    // The dS^T store: the register holding accumulator coordinate X is written to sDsT at X.
    auto st = r2s.get_thread_slice(tid);
    auto from = st.retile_S(mma_s.get_thread_slice(tid).partition_C(make_identity_tensor(TileS{})));
    auto to = st.partition_D(make_identity_tensor(TileS{}));
    bad_store += size(from) != size(to);
    for (int i = 0; i < size(to); ++i) {
      bad_store += !(from(i) == to(i));
      stored[get<0>(to(i)) * BQ + get<1>(to(i))]++;
    }
    // ldmatrix.trans: the copy delivers coordinate X to the register where the MMA expects X.
    auto thr = mma.get_thread_slice(tid);
    auto a_want = lda.get_thread_slice(tid).retile_D(thr.partition_A(make_identity_tensor(Shape<Int<BQ>, Int<BK>>{})));
    auto a_got = lda.get_thread_slice(tid).partition_D(make_identity_tensor(Shape<Int<BQ>, Int<BK>>{}));
    bad_a += size(a_want) != size(a_got);
    for (int i = 0; i < size(a_got); ++i) bad_a += !(a_want(i) == a_got(i));
    auto b_want = ldb.get_thread_slice(tid).retile_D(thr.partition_B(make_identity_tensor(Shape<Int<kChunk>, Int<BK>>{})));
    auto b_got = ldb.get_thread_slice(tid).partition_D(make_identity_tensor(Shape<Int<kChunk>, Int<BK>>{}));
    bad_b += size(b_want) != size(b_got);
    for (int i = 0; i < size(b_got); ++i) bad_b += !(b_want(i) == b_got(i));
    // atomic_add_rows: elements 2i, 2i+1 are (r, c), (r, c + 1), inside the (BQ, chunk) tile.
    auto c = thr.partition_C(make_identity_tensor(TileDq{}));
    bad_pairs += size(c) != size(partition_fragment_C(mma, TileDq{}));
    for (int i = 0; i < size(c); ++i) {
      const int r = get<0>(c(i)), col = get<1>(c(i));
      if (r >= BQ || col >= kChunk) {
        ++bad_pairs;
        continue;
      }
      added[r * kChunk + col]++;
      if (i % 2 == 0) bad_pairs += !(get<0>(c(i + 1)) == r && get<1>(c(i + 1)) == col + 1);
    }
  }
  EXPECT_EQ(bad_store, 0) << "dS^T register -> shared store";
  EXPECT_EQ(bad_a, 0) << "dS (A operand) ldmatrix.trans";
  EXPECT_EQ(bad_b, 0) << "K^T (B operand) ldmatrix.trans";
  EXPECT_EQ(bad_pairs, 0) << "dQ accumulator pairs";
  bad = 0;
  for (int x : stored) bad += x != 1;
  for (int x : added) bad += x != 1;
  EXPECT_EQ(bad, 0) << "every dS^T element stored once, every dQ element added once";
}

TEST(BwdFusedDqLayouts, EveryHeadDim) {
  check_fused_dq_layouts<32>();
  check_fused_dq_layouts<64>();
  check_fused_dq_layouts<96>();
  check_fused_dq_layouts<128>();
  check_fused_dq_layouts<256>();
}

}  // namespace
