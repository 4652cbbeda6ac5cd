// Tile shapes and shared-memory plan of the portable backward, per (head dim, dtype).
//
// Two kernels, each owning what it writes (deterministic, no atomics):
//   dK/dV kernel: a CTA holds kBlockKeys rows of K and V of one (batch, kv head) in shared memory and
//     walks the query heads of its GQA group and the query blocks (kBlockQA rows) that see it. It
//     computes the transposed tiles S^T = K Q^T and dP^T = V dO^T, so that P^T and dS^T come out of
//     the MMA accumulators already in the layout of the A operand of dV += P^T dO and dK += dS^T Q:
//     no shared-memory round trip for P or dS.
//   dQ kernel: a CTA holds kBlockQ rows of Q and dO of one (batch, q head) and walks the visible key
//     blocks (kBlockKB rows, double-buffered): S = Q K^T, dP = dO V^T, dQ += dS K, plus its block's
//     share of d(bias).
// Warps are stacked along M (16 rows per warp), 4 warps. Each thread of the dK/dV kernel holds
// 16 x D x 2 / 32 = D fp32 accumulators; at D 256 that is too many, so there the kernel runs twice
// (dV, then dK: kSplitDkDv).
#pragma once

#include "cuda/common/mma_copy.cuh"

namespace flashsigmoid::cuda::portable {

// FLASHSIGMOID_BWD_WARPS (tuning builds, scripts/gpu_variants.sh) overrides the warps per CTA.
template <int D>
struct BwdTile {
#if defined(FLASHSIGMOID_BWD_WARPS)
  static constexpr int kNWarps = FLASHSIGMOID_BWD_WARPS;
#else
  static constexpr int kNWarps = 4;
#endif
  static constexpr int kBlockKeys = 16 * kNWarps;         // dK/dV kernel: key rows per CTA
  static constexpr int kBlockQA = D <= 64 ? 64 : 32;     // dK/dV kernel: query rows per step
  static constexpr int kBlockQ = 16 * kNWarps;            // dQ kernel: query rows per CTA
  static constexpr int kBlockKB = D <= 128 ? 64 : 32;    // dQ kernel: key rows per step
  static constexpr bool kSplitDkDv = D > 128;
};

// What store_output (fwd_epilogue.cuh) needs to write one (kRows, D) fp32 accumulator tile.
template <class Element_, int kRows, int kHeadDim_, class TiledMma, int kNThreads, class SmemLayout>
struct BwdStoreTraits {
  using Element = Element_;
  static constexpr int kBlockM = kRows;
  static constexpr int kHeadDim = kHeadDim_;
  using SmemLayoutO = SmemLayout;
  using SmemCopyO = decltype(make_tiled_copy_C(Copy_Atom<UniversalCopy<uint32_t>, Element>{}, TiledMma{}));
  using GmemStore = typename GmemCopy<Element, kNThreads, kHeadDim>::Store;
};

template <int kHeadDim_, class Element_>
struct BwdTraits {
  using Element = Element_;
  using Tile = BwdTile<kHeadDim_>;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kNWarps = Tile::kNWarps;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr int kBlockKeys = Tile::kBlockKeys;
  static constexpr int kBlockQA = Tile::kBlockQA;
  static constexpr int kBlockQ = Tile::kBlockQ;
  static constexpr int kBlockKB = Tile::kBlockKB;
  static constexpr bool kSplitDkDv = Tile::kSplitDkDv;
  static constexpr int kStages = 2;

  static_assert(kHeadDim % 32 == 0, "head dim must be a multiple of 32");
  static_assert(kBlockKeys == 16 * kNWarps && kBlockQ == 16 * kNWarps, "one 16-row MMA tile per warp");
  static_assert(kBlockQA % 16 == 0 && kBlockKB % 16 == 0, "inner tiles must be multiples of 16");

  using TiledMma = Sm80TiledMma<Element, kNWarps>;
  using SmemAtomLayout = typename SmemAtom<kHeadDim>::Layout;

  // (rows, D) single tile and (rows, D, stages) double-buffered tile, plus the transposed
  // (D, rows, stages) view of the latter for the B operand of the GEMMs whose K dim is "rows".
  template <int kRows>
  using Single = decltype(tile_to_shape(SmemAtomLayout{}, Shape<Int<kRows>, Int<kHeadDim>>{}));
  template <int kRows>
  using Staged = decltype(tile_to_shape(SmemAtomLayout{}, Shape<Int<kRows>, Int<kHeadDim>, Int<kStages>>{}));
  template <int kRows>
  using StagedT = decltype(composition(Staged<kRows>{},
                                       make_layout(Shape<Int<kHeadDim>, Int<kRows>, Int<kStages>>{},
                                                   Stride<Int<kRows>, _1, Int<kRows * kHeadDim>>{})));

  // dK/dV kernel: K, V (kBlockKeys, D); Q, dO (kBlockQA, D, 2) and their transposes.
  using SmemLayoutKeys = Single<kBlockKeys>;
  using SmemLayoutQA = Staged<kBlockQA>;
  using SmemLayoutQAt = StagedT<kBlockQA>;
  // dQ kernel: Q, dO (kBlockQ, D); K, V (kBlockKB, D, 2); K^T.
  using SmemLayoutQ = Single<kBlockQ>;
  using SmemLayoutKB = Staged<kBlockKB>;
  using SmemLayoutKBt = StagedT<kBlockKB>;

  using SmemCopyA = decltype(make_tiled_copy_A(Copy_Atom<SM75_U32x4_LDSM_N, Element>{}, TiledMma{}));
  using SmemCopyB = decltype(make_tiled_copy_B(Copy_Atom<SM75_U32x4_LDSM_N, Element>{}, TiledMma{}));
  using SmemCopyBt = decltype(make_tiled_copy_B(Copy_Atom<SM75_U16x8_LDSM_T, Element>{}, TiledMma{}));

  using GmemLoad = typename GmemCopy<Element, kNThreads, kHeadDim>::Load;
  using StoreKeys = BwdStoreTraits<Element, kBlockKeys, kHeadDim, TiledMma, kNThreads, SmemLayoutKeys>;
  using StoreQ = BwdStoreTraits<Element, kBlockQ, kHeadDim, TiledMma, kNThreads, SmemLayoutQ>;

  static constexpr int kSmemDkDv =
      int(sizeof(Element)) * (2 * kBlockKeys * kHeadDim + 2 * kStages * kBlockQA * kHeadDim);
  static constexpr int kSmemDq = int(sizeof(Element)) * (2 * kBlockQ * kHeadDim + 2 * kStages * kBlockKB * kHeadDim);
};

}  // namespace flashsigmoid::cuda::portable
