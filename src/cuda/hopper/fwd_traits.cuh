// Tile shapes, shared-memory plan, GEMM atoms, TMA and pipeline types of the Hopper (sm_90a)
// forward, per (head dim, dtype).
//
// CTA = 3 warpgroups (384 threads): warpgroup 0 is the producer (one thread issues every TMA
// load), warpgroups 1 and 2 are consumers, each owning 64 of the CTA's kBlockM = 128 query rows.
// Per key block a consumer computes S = Q K^T with an SS wgmma (64 x kBlockN per warpgroup),
// turns S into P = sigmoid(...) in registers, and accumulates O += P V with an RS wgmma (P is
// the register A operand). Shared memory: Q (once), kStages of K and kStages of V, each a
// 128-byte-swizzled K-major tile as both TMA and wgmma want it; the epilogue reuses Q's space
// for O.
#pragma once

#include <cute/tensor.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/container/array_aligned.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "common/params.hpp"
#include "cuda/hopper/tile_scheduler.cuh"

namespace flashsigmoid::cuda::hopper {

using namespace cute;

// Default tiles per head dim (bench/NOTES.md). Per consumer thread S is kBlockN / 2 fp32 registers,
// P half that, O D / 2. D 64 / 128: kBlockN 128; D 256: kBlockN 64 (O alone is 128 registers).
// Shared memory: D 64: Q 16 KB + 3 x (K 16 KB + V 16 KB) = 112 KB; D 128: Q 32 KB + 2 x 64 KB = 160 KB;
// D 256: Q 64 KB + 2 x 64 KB = 192 KB.
template <int D>
struct FwdTile {
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = D <= 128 ? 128 : 64;
  static constexpr int kStages = D <= 64 ? 3 : 2;
};

template <int kHeadDim_, class Element_, int kBlockN_ = FwdTile<kHeadDim_>::kBlockN,
          int kStages_ = FwdTile<kHeadDim_>::kStages>
struct FwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = FwdTile<kHeadDim_>::kBlockM;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;

  static constexpr int kNConsumerWarpGroups = kBlockM / 64;
  static constexpr int kNConsumerThreads = 128 * kNConsumerWarpGroups;
  static constexpr int kNThreads = 128 + kNConsumerThreads;
  // setmaxnreg budgets. __launch_bounds__(384, 1) caps every thread at 168 registers at entry
  // (65536 / 384, rounded down to 8): 384 x 168 = 64512 = 128 x 24 + 256 x 240, so the producer's
  // release exactly covers the consumers' increase (asking for more would stall setmaxnreg.inc).
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  static_assert(kNThreads == 384, "the register budgets above assume 1 producer + 2 consumer warpgroups");

  static_assert(kHeadDim % 64 == 0, "the 128-byte swizzle atom spans 64 columns of 16-bit elements");
  static_assert(kBlockN % 64 == 0 && kBlockN <= 256, "kBlockN: a multiple of 64, at most 256 (one wgmma N)");
  static_assert(sizeof(Element) == 2, "fp16 / bf16 only");

  // ---- GEMMs: the warpgroups stacked along M, one 64 x N x 16 wgmma atom each ----
  using AtomLayout = Layout<Shape<Int<kNConsumerWarpGroups>, _1, _1>>;
  // S = Q K^T: A = Q, B = K, both K-major (head dim contiguous) in shared memory.
  using TiledMmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<Int<kBlockM>, Int<kBlockN>, Int<kHeadDim>>>(),
      AtomLayout{}));
  // O += P V: A = P from registers (K-major by construction), B = V^T: V's rows are the GEMM's K
  // dimension and its head dim (the GEMM's N) is contiguous, i.e. MN-major.
  using TiledMmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<Int<kBlockM>, Int<kHeadDim>, Int<kBlockN>>,
                           GMMA::Major::K, GMMA::Major::MN>(),
      AtomLayout{}));

  // ---- shared memory ----
  using SmemAtom = GMMA::Layout_K_SW128_Atom<Element>;  // 8 rows x 64 columns, 128-byte swizzle
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutK = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutV = SmemLayoutK;
  // The same bytes as V, indexed (d, n, stage): the MN-major B operand of O += P V.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutV{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{}, Step<_2, _1, _3>{})));
  using SmemLayoutO = SmemLayoutQ;

  // ---- TMA: global tensors seen as (rows, D, heads, batch), D contiguous, other strides free ----
  using ShapeQKV = Shape<int32_t, int32_t, int32_t, int32_t>;
  using StrideQKV = Stride<int64_t, _1, int64_t, int64_t>;
  using GmemTensor =
      decltype(make_tensor(make_gmem_ptr(static_cast<const Element*>(nullptr)), ShapeQKV{}, StrideQKV{}));
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayoutQ{},
                                      Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  using TmaKV = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, take<0, 2>(SmemLayoutK{}),
                                       Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));
  // Bytes one TMA tile delivers (rows outside the tensor are zero-filled and still counted).
  static constexpr uint32_t kTmaBytesQ = kBlockM * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesKV = kBlockN * kHeadDim * sizeof(Element);

  // ---- pipelines: K and V separately, so a K stage is refilled as soon as S is computed ----
  using PipelineKV = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename PipelineKV::PipelineState;

  // O gets its own buffer where it fits (D 64 / 128), so the next tile's Q can land during this
  // tile's epilogue; at D 256 the epilogue reuses Q's space and the next Q waits for it.
  static constexpr int kBytesQ = int(cosize_v<SmemLayoutQ>) * int(sizeof(Element));
  static constexpr int kBytesKV = 2 * int(cosize_v<SmemLayoutK>) * int(sizeof(Element));
  static constexpr bool kOwnO = 2 * kBytesQ + kBytesKV + 2048 <= 227 * 1024;

  struct SharedStorage {
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> q;  // Q (and O in the epilogue unless kOwnO)
    cute::array_aligned<Element, kOwnO ? cosize_v<SmemLayoutO> : 1, 1024> o;
    cute::array_aligned<Element, cosize_v<SmemLayoutK>, 1024> k;
    cute::array_aligned<Element, cosize_v<SmemLayoutV>, 1024> v;
    typename PipelineKV::SharedStorage pipe_k;
    typename PipelineKV::SharedStorage pipe_v;
    cutlass::arch::ClusterTransactionBarrier barrier_q;  // Q of the current tile has landed
    cutlass::arch::ClusterBarrier barrier_q_empty;       // the consumers are done with Q's space
    CUTE_DEVICE Element* o_tile() { return kOwnO ? o.data() : q.data(); }
  };
  // + 1024: the kernel aligns the dynamic shared-memory base up to 1024 bytes (the swizzle's period).
  static constexpr int kSmemBytes = int(sizeof(SharedStorage)) + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "over the H100/H200 shared-memory limit per block");
};

// Kernel parameters: the resolved problem plus the three TMA descriptors (built on the host; passed
// by value as a __grid_constant__ parameter, as TMA wants).
template <class Traits>
struct FwdParams {
  detail::AttnParams p;
  TileScheduler sched;
  typename Traits::ShapeQKV shape_q;
  typename Traits::ShapeQKV shape_k;
  typename Traits::TmaQ tma_q;
  typename Traits::TmaKV tma_k;
  typename Traits::TmaKV tma_v;
};

}  // namespace flashsigmoid::cuda::hopper
