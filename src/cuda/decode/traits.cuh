// Tile shapes and shared-memory plan of the decode / append attention kernel, per (head dim,
// dtype, warps along M).
//
// A CTA owns kBlockM rows of one (sequence, kv head): the rows are (query token, query head of
// the GQA group) pairs, so every query head of the group reads each K/V byte once. Its 4 warps
// are arranged kWarpsM along the rows by kWarpsN along the keys: with few rows (decode, M <= 16)
// the warps take different key slices of each kBlockN-key block and their partial O are summed
// once at the end; with more rows (append, large groups) they stack along M as in the forward.
// Shared memory: kStages stages of K and V (kBlockN x D each, cp.async), reused at the end for the
// fp32 cross-warp sum, and Q (kBlockM x D): inside V's last stage when Q moves to registers.
#pragma once

#include "cuda/common/mma_copy.cuh"

namespace flashsigmoid::cuda::decode {

template <int kHeadDim_, class Element_, int kWarpsM_>
struct DecodeTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kNWarps = 4;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr int kWarpsM = kWarpsM_;
  static constexpr int kWarpsN = kNWarps / kWarpsM;
  static constexpr int kBlockM = 16 * kWarpsM;
  static constexpr int kBlockN = 64;
  static constexpr int kBlockNWarp = kBlockN / kWarpsN;  // keys of a block that one warp multiplies
  // Bytes in flight per SM are what a memory-bound kernel needs (bench/NOTES.md): 16 KB stages at
  // D 64 x 4, 32 KB at D 128 x 3 (two CTAs per SM on sm_90), 64 KB at D 256 x 2 (fits sm_80's 163 KB).
  static constexpr int kStages = kHeadDim <= 64 ? 4 : (kHeadDim <= 128 ? 3 : 2);
  // Q's MMA fragments stay in registers for the whole key loop up to D 128; at D 256 they would
  // push the O accumulators (128 per thread) into spills, so Q is re-read from shared memory.
  static constexpr bool kQInRegisters = kHeadDim <= 128;

  static_assert(kHeadDim % 64 == 0, "the decode kernel is built for head dims 64, 128, 256");
  static_assert(kWarpsM == 1 || kWarpsM == 2 || kWarpsM == 4, "4 warps: 1, 2 or 4 along M");
  static_assert(kBlockNWarp % 16 == 0, "P feeds the second MMA in 16-key slices");

  using TiledMma = Sm80TiledMma<Element, kWarpsM>;

  using SmemAtomLayout = typename SmemAtom<kHeadDim>::Layout;
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtomLayout{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  // (key in the warp's slice, d, warp along N, stage).
  using SmemLayoutKV = decltype(tile_to_shape(
      SmemAtomLayout{}, Shape<Int<kBlockNWarp>, Int<kHeadDim>, Int<kWarpsN>, Int<kStages>>{}));
  // V as the (D, keys) B operand of O += P V: the same bytes, transposed indexing.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutKV{},
      make_layout(Shape<Int<kHeadDim>, Int<kBlockNWarp>, Int<kWarpsN>, Int<kStages>>{},
                  Stride<Int<kBlockNWarp>, _1, Int<kBlockNWarp * kHeadDim>, Int<kBlockN * kHeadDim>>{})));

  using SmemCopyQ = decltype(make_tiled_copy_A(Copy_Atom<SM75_U32x4_LDSM_N, Element>{}, TiledMma{}));
  using SmemCopyK = decltype(make_tiled_copy_B(Copy_Atom<SM75_U32x4_LDSM_N, Element>{}, TiledMma{}));
  using SmemCopyVt = decltype(make_tiled_copy_B(Copy_Atom<SM75_U16x8_LDSM_T, Element>{}, TiledMma{}));

  static constexpr int kAccStride = kHeadDim + 4;  // fp32 row pitch of the cross-warp sum (banks)
  static constexpr int kSmemQ = kBlockM * kHeadDim * int(sizeof(Element));
  static constexpr int kSmemKV = kStages * kBlockN * kHeadDim * int(sizeof(Element));  // K or V
  static constexpr int kSmemAcc = kWarpsN * kBlockM * kAccStride * int(sizeof(float));
  // Q held in registers is staged in V's last stage (the kernel reads it before that stage's first
  // load): D 128 then takes 96 KB, which fits the 99 KB per block of sm_86 / sm_89 / sm_120.
  static_assert(kBlockM <= kBlockN, "Q fits one stage");
  static constexpr int kSmemBytes =
      (kQInRegisters ? 0 : kSmemQ) + (2 * kSmemKV > kSmemAcc ? 2 * kSmemKV : kSmemAcc);
  static_assert(kSmemBytes <= 166912, "must fit sm_80's 163 KB of shared memory per block");
};

}  // namespace flashsigmoid::cuda::decode
