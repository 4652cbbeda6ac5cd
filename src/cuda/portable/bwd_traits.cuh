// Tile shapes and shared-memory plan of the portable backward, per (head dim, dtype).
//
// Deterministic mode (Options::deterministic, and always at head dims with kSplitDkDv): two
// kernels, each owning what it writes (no atomics):
//   dK/dV kernel: a CTA holds kBlockKeys rows of K and V of one (batch, kv head) in shared memory and
//     walks the query heads of its GQA group and the query blocks (kBlockQA rows) that see it. It
//     computes the transposed tiles S^T = K Q^T and dP^T = V dO^T, so that P^T and dS^T come out of
//     the MMA accumulators already in the layout of the A operand of dV += P^T dO and dK += dS^T Q:
//     no shared-memory round trip for P or dS.
//   dQ kernel: a CTA holds kBlockQ rows of Q and dO of one (batch, q head) and walks the visible key
//     blocks (kBlockKB rows, double-buffered): S = Q K^T, dP = dO V^T, dQ += dS K, plus its block's
//     share of d(bias).
// Default (non-deterministic) mode: the dK/dV kernel also computes dQ (5 GEMMs per tile pair
// instead of 7, as FlashAttention-2): it stores dS^T to a small shared tile (kSmemDs) and adds
// dS K per query step to an fp32 dQ workspace with atomics (TiledMmaDq, kDqChunk columns of D at
// a time to bound registers); the dQ kernel is not launched.
// Warps are stacked along M (16 rows per warp), 4 warps. Each thread of the dK/dV kernel holds
// 16 x D x 2 / 32 = D fp32 accumulators; at D 256 that is too many, so there the kernel runs twice
// (dV, then dK: kSplitDkDv).
#pragma once

#include "cuda/common/mma_copy.cuh"

namespace flashsigmoid::cuda::portable {

// 4 warps per CTA: 8 measured slower on the H200 (bench/results/h200-kernels-2026-11-28.md).
template <int D>
struct BwdTile {
  static constexpr int kNWarps = 4;
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

  // Fused dQ (dK/dV kernel, non-deterministic mode): dS^T is stored as the (kBlockKeys, kBlockQA)
  // accumulator tile it is, and read back through transposed views as the A operand (queries,
  // keys) of dQ += dS K, with K^T (D, keys) as the B operand: both with ldmatrix.trans.
  using SmemLayoutDsT = decltype(tile_to_shape(typename SmemAtom<kBlockQA>::Layout{},
                                               Shape<Int<kBlockKeys>, Int<kBlockQA>>{}));
  using SmemLayoutDs = decltype(composition(SmemLayoutDsT{}, make_layout(Shape<Int<kBlockQA>, Int<kBlockKeys>>{},
                                                                         Stride<Int<kBlockKeys>, _1>{})));
  using SmemLayoutKeysT = decltype(composition(SmemLayoutKeys{}, make_layout(Shape<Int<kHeadDim>, Int<kBlockKeys>>{},
                                                                             Stride<Int<kBlockKeys>, _1>{})));
  // The dQ tile (kBlockQA, D) has fewer rows than the warps stack (kBlockQA 32 at D 128): warps
  // cover its rows 16 at a time and split the columns between the rest (FlashAttention-2's dQ MMA).
  static constexpr int kDqWarpsM = kBlockQA / 16 < kNWarps ? kBlockQA / 16 : kNWarps;
  static constexpr int kDqWarpsN = kNWarps / kDqWarpsM;
  using TiledMmaDq = TiledMMA<MMA_Atom<Sm80MmaAtom<Element>>, Layout<Shape<Int<kDqWarpsM>, Int<kDqWarpsN>, _1>>,
                              cute::Tile<Int<16 * kDqWarpsM>, Int<16 * kDqWarpsN>, _16>>;
  // Columns of D per dQ accumulator (added to global memory, then reused): 64 keeps it at 16 (D 128)
  // or 32 (D 64) fp32 per thread next to the dK, dV accumulators.
  static constexpr int kDqChunk = kHeadDim % 64 == 0 ? 64 : kHeadDim;
  // atomic_add_rows (bwd_kernel.cuh) adds C-fragment elements 2i, 2i+1 as columns c, c+1 of one row:
  // the 16x8 accumulator's first value mode is 2 wide and steps one column (16 in its m + 16 n index).
  using MmaCLayout = typename MMA_Traits<Sm80MmaAtom<Element>>::CLayout;
  static_assert(size<1, 0>(MmaCLayout{}) == 2 && stride<1, 0>(MmaCLayout{}) == 16, "C value pairs must be columns");
  static_assert(kNWarps % kDqWarpsM == 0 && kBlockQA % (16 * kDqWarpsM) == 0, "dQ warps must tile the query step");
  static_assert(kHeadDim % kDqChunk == 0 && kDqChunk % (16 * kDqWarpsN) == 0, "dQ chunks must tile D");

  using SmemCopyA = decltype(make_tiled_copy_A(Copy_Atom<SM75_U32x4_LDSM_N, Element>{}, TiledMma{}));
  using SmemCopyB = decltype(make_tiled_copy_B(Copy_Atom<SM75_U32x4_LDSM_N, Element>{}, TiledMma{}));
  using SmemCopyBt = decltype(make_tiled_copy_B(Copy_Atom<SM75_U16x8_LDSM_T, Element>{}, TiledMma{}));
  using SmemCopyDs = decltype(make_tiled_copy_C(Copy_Atom<UniversalCopy<uint32_t>, Element>{}, TiledMma{}));
  using SmemCopyDqA = decltype(make_tiled_copy_A(Copy_Atom<SM75_U16x8_LDSM_T, Element>{}, TiledMmaDq{}));
  using SmemCopyDqB = decltype(make_tiled_copy_B(Copy_Atom<SM75_U16x8_LDSM_T, Element>{}, TiledMmaDq{}));

  using GmemLoad = typename GmemCopy<Element, kNThreads, kHeadDim>::Load;
  using StoreKeys = BwdStoreTraits<Element, kBlockKeys, kHeadDim, TiledMma, kNThreads, SmemLayoutKeys>;
  using StoreQ = BwdStoreTraits<Element, kBlockQ, kHeadDim, TiledMma, kNThreads, SmemLayoutQ>;

  static constexpr int kSmemDkDv =
      int(sizeof(Element)) * (2 * kBlockKeys * kHeadDim + 2 * kStages * kBlockQA * kHeadDim);
  static constexpr int kSmemDs = int(sizeof(Element)) * kBlockKeys * kBlockQA;  // fused dQ: the dS^T tile
  static constexpr int kSmemDq = int(sizeof(Element)) * (2 * kBlockQ * kHeadDim + 2 * kStages * kBlockKB * kHeadDim);
};

}  // namespace flashsigmoid::cuda::portable
