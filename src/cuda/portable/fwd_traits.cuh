// Tile shapes and shared-memory plan of the portable forward, per (head dim, dtype).
//
// A CTA owns kBlockM query rows of one (batch, head) and walks the visible key blocks of
// kBlockN rows. Shared memory: Q (kBlockM x D) + 2 stages of K + 2 stages of V (kBlockN x D each);
// the epilogue reuses Q's space for O. Warps are stacked along M (16 rows per warp per MMA tile),
// so with 4 warps and kBlockM = 128 each thread holds 32 x kBlockN / 32 scores and 32 x D / 32
// output accumulators in fp32 registers (FwdTile below picks the warps per head dim).
#pragma once

#include "cuda/common/mma_copy.cuh"

namespace flashsigmoid::cuda::portable {

// Tiles per head dim, chosen by measurement on the H200 (bench/NOTES.md, "Portable CUDA forward"; the
// alternatives measured slower): kBlockM = 128 query rows per CTA, warps stacked along M.
// - D <= 64: 128 x 128 tiles, 8 warps (16 rows each), register cap for 2 CTAs per SM (128 registers,
//   a few hundred bytes of spills, still faster than 1 CTA per SM).
// - D 96/128: 128 x 64 tiles, 4 warps (32 rows each, as FlashAttention-2): each warp reuses its
//   ldmatrix'd K/V fragments over twice the rows, which outweighs its spills.
// - D 256: 128 x 32 tiles, 8 warps, 1 CTA per SM (4 warps would hold 256 O registers a thread).
template <int D>
struct FwdTile {
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = D <= 64 ? 128 : (D == 256 ? 32 : 64);
  static constexpr int kNWarps = (D == 96 || D == 128) ? 4 : 8;
  static constexpr int kMinBlocks = D <= 64 ? 2 : 1;
};

template <int kHeadDim_, class Element_, int kBlockM_ = FwdTile<kHeadDim_>::kBlockM,
          int kBlockN_ = FwdTile<kHeadDim_>::kBlockN, int kNWarps_ = FwdTile<kHeadDim_>::kNWarps>
struct FwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr int kMinBlocks = FwdTile<kHeadDim_>::kMinBlocks;  // CTAs per SM (register cap)
  static constexpr int kStages = 2;  // K is prefetched two blocks ahead, V one block ahead

  static_assert(kHeadDim % 32 == 0, "head dim must be a multiple of 32");
  static_assert(kBlockM % (16 * kNWarps) == 0, "kBlockM must be a multiple of 16 * warps");
  static_assert(kBlockN % 16 == 0, "kBlockN must be a multiple of 16");

  using TiledMma = Sm80TiledMma<Element, kNWarps>;

  using SmemAtomLayout = typename SmemAtom<kHeadDim>::Layout;
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtomLayout{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutKV =
      decltype(tile_to_shape(SmemAtomLayout{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  // V seen as the (D, kBlockN) B operand of O += P V: the same bytes, transposed indexing.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutKV{}, make_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{},
                                  Stride<Int<kBlockN>, _1, Int<kBlockN * kHeadDim>>{})));
  using SmemLayoutO = SmemLayoutQ;

  // Shared -> registers: ldmatrix (transposed for V, whose rows are the GEMM's K dimension).
  using SmemCopyQK = decltype(make_tiled_copy_A(Copy_Atom<SM75_U32x4_LDSM_N, Element>{}, TiledMma{}));
  using SmemCopyK = decltype(make_tiled_copy_B(Copy_Atom<SM75_U32x4_LDSM_N, Element>{}, TiledMma{}));
  using SmemCopyVt = decltype(make_tiled_copy_B(Copy_Atom<SM75_U16x8_LDSM_T, Element>{}, TiledMma{}));
  // Registers -> shared for O: each thread holds pairs of neighbouring columns (32-bit stores).
  using SmemCopyO = decltype(make_tiled_copy_C(Copy_Atom<UniversalCopy<uint32_t>, Element>{}, TiledMma{}));

  using Gmem = GmemCopy<Element, kNThreads, kHeadDim>;
  using GmemLoad = typename Gmem::Load;
  using GmemStore = typename Gmem::Store;

  static constexpr int kSmemQ = kBlockM * kHeadDim * int(sizeof(Element));
  static constexpr int kSmemKV = kStages * kBlockN * kHeadDim * int(sizeof(Element));
  static constexpr int kSmemBytes = kSmemQ + 2 * kSmemKV;
};

}  // namespace flashsigmoid::cuda::portable
