// Tile shapes and shared-memory plan of the portable forward, per (head dim, dtype).
//
// A CTA owns kBlockM query rows of one (batch, head) and walks the visible key blocks of
// kBlockN rows. Shared memory: Q (kBlockM x D) + 2 stages of K + 2 stages of V (kBlockN x D each);
// the epilogue reuses Q's space for O. Warps are stacked along M (16 rows per warp per MMA tile),
// so with 4 warps and kBlockM = 128 each thread holds 32 x kBlockN / 32 scores and 32 x D / 32
// output accumulators in fp32 registers (FwdTile below picks 8 warps: 16 rows each).
#pragma once

#include "cuda/common/mma_copy.cuh"

namespace flashsigmoid::cuda::portable {

// Default tiles per head dim. 8 warps stacked along M (16 query rows each): with 4 warps
// (FlashAttention-2's sm80 choice) ptxas spilled at D 64 (128 x 128) and D 128 (128 x 64), since
// each thread would hold 32 rows of S and O. Expected per thread: D <= 64: 128 x 128, S 64 + O 32
// fp32 regs (235 regs, no spill); D 96/128: 128 x 64, S 32 + O 64 (226 regs, no spill); D 256:
// 128 x 32, S 16 + O 128, 128 KB of shared memory (fits A100's 163 KB). One 8-warp CTA per SM at
// these register counts. Shared memory: Q + 2 stages of K and V, e.g. 96 KB at D 128.
// To be tuned on the H200: FLASHSIGMOID_FWD_WARPS / FLASHSIGMOID_FWD_MINBLOCKS override the warp
// count and the CTAs-per-SM register cap (e.g. -DCMAKE_CUDA_FLAGS=-DFLASHSIGMOID_FWD_MINBLOCKS=2:
// D 128 then fits 128 regs with ~170 B of spills).
template <int D>
struct FwdTile {
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = D <= 64 ? 128 : (D == 256 ? 32 : 64);
#ifdef FLASHSIGMOID_FWD_WARPS
  static constexpr int kNWarps = FLASHSIGMOID_FWD_WARPS;
#else
  static constexpr int kNWarps = 8;
#endif
#ifdef FLASHSIGMOID_FWD_MINBLOCKS
  static constexpr int kMinBlocks = FLASHSIGMOID_FWD_MINBLOCKS;
#else
  static constexpr int kMinBlocks = 1;
#endif
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
