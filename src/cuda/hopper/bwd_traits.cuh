// Tile shapes, shared-memory plan, GEMM atoms, TMA and pipeline types of the Hopper (sm_90a)
// backward, per (head dim, dtype).
//
// CTA = one key block (kBlockN = 128 keys) of one (kv head, batch); 3 warpgroups (384 threads):
// warpgroup 0 is the producer (one thread issues every TMA load), warpgroups 1 and 2 are consumers,
// each owning 64 of the 128 keys (the wgmma M). The CTA walks the query heads of its GQA group and,
// per head, the query blocks (kBlockM rows: 128 at D 64, 64 at D 128) that the masks leave visible. Per
// step a consumer warpgroup computes, for its 64 keys:
//   S^T = K Q^T, dP^T = V dO^T          (SS wgmma, 64 x kBlockM fp32 each)
//   P^T = sigmoid(transform(S^T)), dS^T = dP^T P^T (1 - P^T)   (registers)
//   dV += P^T dO, dK += dS^T Q          (RS wgmma: P^T, dS^T in registers as the A operand)
// and both warpgroups together dQ(kBlockM x D) = dS K (SS wgmma on the dS^T tile they wrote to shared
// memory; warpgroup w computes columns [w D/2, (w + 1) D/2)). Each warpgroup stages its dQ part in
// shared memory (fp32) and one of its threads adds it to the fp32 workspace with a TMA reduce-add
// (the workspace of the portable fused mode; dq_convert_kernel scales and converts it).
//
// Shared memory: K, V (once), kStages x (Q, dO), 2 x dS^T (double-buffered so that one named
// barrier per step suffices: bwd_kernel.cuh), the fp32 dQ staging tiles. D 64 (kBlockM 128): 16 + 16 +
// 2 x (16 + 16) + 2 x 32 + 32 = 192 KB; D 128: 32 + 32 + 2 x (16 + 16) + 2 x 16 + 32 = 192 KB.
#pragma once

#include <type_traits>

#include <cute/tensor.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/container/array_aligned.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "common/params.hpp"

namespace flashsigmoid::cuda::hopper {

using namespace cute;

template <int kHeadDim_, class Element_>
struct BwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockN = 128;  // keys per CTA (2 consumer warpgroups x wgmma M 64)
  // Queries per step. D 64: 128, so that the S^T / dP^T GEMMs have N 128 and dK / dV K 128 (the
  // per-step barriers and wgmma latency amortised over twice the work: +7 % at N >= 4k on the H200,
  // despite 212 B of spill); D 128: 64 (128 would not fit the registers).
  static constexpr int kBlockM = kHeadDim_ == 64 ? 128 : 64;
  static constexpr int kStages = 2;    // Q / dO pipeline depth

  static constexpr int kNConsumerWarpGroups = kBlockN / 64;
  static constexpr int kNConsumerThreads = 128 * kNConsumerWarpGroups;
  static constexpr int kNThreads = 128 + kNConsumerThreads;
  // As the forward (fwd_traits.cuh): 384 x 168 = 128 x 24 + 256 x 240.
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  static_assert(kNThreads == 384, "the register budgets above assume 1 producer + 2 consumer warpgroups");
  static_assert(kHeadDim == 64 || kHeadDim == 128, "the Hopper backward covers head dims 64 and 128");
  static_assert(sizeof(Element) == 2, "fp16 / bf16 only");

  // ---- GEMMs ----
  using AtomLayoutM = Layout<Shape<Int<kNConsumerWarpGroups>, _1, _1>>;  // warpgroups stacked along M (keys)
  // S^T = K Q^T and dP^T = V dO^T: A = K / V (keys x D), B = Q / dO (queries x D), both K-major.
  using TiledMmaSdP = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<Int<kBlockN>, Int<kBlockM>, Int<kHeadDim>>>(),
      AtomLayoutM{}));
  // dV += P^T dO and dK += dS^T Q: A from registers (K-major by construction), B = dO / Q seen as
  // (D, queries): D is contiguous, so MN-major (as the forward's V in O += P V).
  using TiledMmaDKV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kBlockM>>,
                           GMMA::Major::K, GMMA::Major::MN>(),
      AtomLayoutM{}));
  // dQ = dS K (queries x D, GEMM K = the 128 keys): A = dS seen as (queries, keys) from the dS^T
  // tile whose queries are contiguous: MN-major; B = K seen as (D, keys): MN-major. The two
  // warpgroups split D (wgmma N = D / 2 each).
  static constexpr int kDqCols = kHeadDim / kNConsumerWarpGroups;  // dQ columns per warpgroup
  using MmaDQOp = decltype(GMMA::ss_op_selector<Element, Element, float, Shape<Int<kBlockM>, Int<kDqCols>, Int<kBlockN>>,
                                                GMMA::Major::MN, GMMA::Major::MN>());
  using TiledMmaDQ = decltype(make_tiled_mma(MmaDQOp{}, Layout<Shape<_1, Int<kNConsumerWarpGroups>, _1>>{}));
  // One warpgroup's part of the dQ GEMM on its own (64 x D / 2): its thread partition of the C tile
  // is that warpgroup's registers of TiledMmaDQ, relative to the warpgroup's first column.
  using TiledMmaDQPart = decltype(make_tiled_mma(MmaDQOp{}));

  // ---- shared memory ----
  // K's swizzle atom spans exactly D / 2 columns, so that each warpgroup's half of D in the dQ GEMM
  // (B = K, MN-major) starts on an atom boundary: 128-byte swizzle at D 128, 64-byte at D 64.
  using SmemAtomK = std::conditional_t<kHeadDim / 2 * sizeof(Element) == 128, GMMA::Layout_K_SW128_Atom<Element>,
                                       GMMA::Layout_K_SW64_Atom<Element>>;
  using SmemAtom = GMMA::Layout_K_SW128_Atom<Element>;  // 8 rows x 64 columns, 128-byte swizzle
  using SmemLayoutK = decltype(tile_to_shape(SmemAtomK{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  using SmemLayoutV = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  // (D, keys) view of K: the B operand of dQ = dS K.
  using SmemLayoutKt = decltype(composition(SmemLayoutK{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{},
                                                                               Step<_2, _1>{})));
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutDo = SmemLayoutQ;
  // (D, queries, stage) view of Q / dO: the B operand of dK += dS^T Q and dV += P^T dO.
  using SmemLayoutQt = decltype(composition(
      SmemLayoutQ{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockM>, Int<kStages>>{}, Step<_2, _1, _3>{})));
  // dS^T (keys, queries, buffer), queries contiguous (64 of them = one 128-byte swizzle row), and its
  // (queries, keys, buffer) view: the MN-major A operand of dQ = dS K.
  using SmemLayoutDsT = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<kBlockM>, _2>{}));
  // Registers -> swizzled shared memory by stmatrix (8 x 8 blocks of 16-bit values, rows contiguous).
  using R2SAtom = Copy_Atom<SM90_U32x4_STSM_N, Element>;
  using SmemLayoutDs = decltype(composition(
      SmemLayoutDsT{}, make_ordered_layout(Shape<Int<kBlockM>, Int<kBlockN>, _2>{}, Step<_2, _1, _3>{})));

  // One warpgroup's fp32 dQ part (queries, D / 2), staged for the TMA reduce-add: 128-byte swizzle
  // (8 rows x 32 floats per atom), so that the accumulator's column pairs of 8 rows fall in distinct banks.
  using SmemLayoutDq = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<float>{}, Shape<Int<kBlockM>, Int<kDqCols>>{}));
  // The same map as plain (row, column) -> float offset, for stores with 32-bit shared addresses
  // (bwd_kernel.cuh's store_pairs_shared).
  using SmemOffsetsDq = decltype(as_position_independent_swizzle_layout(SmemLayoutDq{}));
  // store_pairs_shared stores accumulator elements 2i, 2i+1 as columns c, c+1 of one row: a wgmma
  // accumulator's first value mode is 2 wide and steps one column (64 in its m + 64 n index).
  using DqCLayout = typename TiledMmaDQ::Atom::Traits::CLayout;
  static_assert(size<1, 0>(DqCLayout{}) == 2 && stride<1, 0>(DqCLayout{}) == 64, "C value pairs must be columns");

  // ---- TMA: global tensors seen as (rows, D, heads, batch), D contiguous (as the forward) ----
  using ShapeQKV = Shape<int32_t, int32_t, int32_t, int32_t>;
  using StrideQKV = Stride<int64_t, _1, int64_t, int64_t>;
  using GmemTensor =
      decltype(make_tensor(make_gmem_ptr(static_cast<const Element*>(nullptr)), ShapeQKV{}, StrideQKV{}));
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, take<0, 2>(SmemLayoutQ{}),
                                      Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  using TmaK = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayoutK{},
                                      Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));
  using TmaV = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayoutV{},
                                      Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));
  // The fp32 dQ workspace (rows, D, heads, batch), same shape as Q: one warpgroup's (kBlockM, D / 2)
  // part added per TMA reduce-add; rows past the tensor's end are clipped, and the rows of a varlen
  // block past its sequence's end are exact zeros (bwd_kernel.cuh's drop_queries_from).
  using GmemTensorDq = decltype(make_tensor(make_gmem_ptr(static_cast<float*>(nullptr)), ShapeQKV{}, StrideQKV{}));
  using TmaDq = decltype(make_tma_copy(SM90_TMA_REDUCE_ADD{}, GmemTensorDq{}, SmemLayoutDq{},
                                       Shape<Int<kBlockM>, Int<kDqCols>>{}, _1{}));
  // Bytes one TMA tile delivers (rows outside the tensor are zero-filled and still counted).
  static constexpr uint32_t kTmaBytesQ = kBlockM * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesKV = kBlockN * kHeadDim * sizeof(Element);

  // One pipeline for Q and dO together: both are read until the step's last GEMM.
  using PipelineQdO = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename PipelineQdO::PipelineState;

  struct SharedStorage {
    cute::array_aligned<Element, cosize_v<SmemLayoutK>, 1024> k;  // K (and dK in the epilogue)
    cute::array_aligned<Element, cosize_v<SmemLayoutV>, 1024> v;  // V (and dV in the epilogue)
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cosize_v<SmemLayoutDo>, 1024> dout;
    cute::array_aligned<Element, cosize_v<SmemLayoutDsT>, 1024> ds;
    cute::array_aligned<float, kNConsumerWarpGroups * cosize_v<SmemLayoutDq>, 1024> dq;  // per warpgroup
    typename PipelineQdO::SharedStorage pipe_qdo;
    cutlass::arch::ClusterTransactionBarrier barrier_kv;  // K and V have landed
    float warp_sums[kNConsumerThreads / 32];              // d(bias): one sum per consumer warp
  };
  // + 1024: the kernel aligns the dynamic shared-memory base up to 1024 bytes (the swizzle's period).
  static constexpr int kSmemBytes = int(sizeof(SharedStorage)) + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "over the H100/H200 shared-memory limit per block");
};

// Kernel parameters: the resolved problem, the four TMA descriptors (built on the host, passed as a
// __grid_constant__ parameter, as TMA wants) and the fp32 workspaces.
template <class Traits>
struct BwdKernelParams {
  detail::BwdParams p;
  typename Traits::ShapeQKV shape_q;
  typename Traits::ShapeQKV shape_k;
  typename Traits::TmaQ tma_q;
  typename Traits::TmaQ tma_do;
  typename Traits::TmaK tma_k;
  typename Traits::TmaV tma_v;
  typename Traits::TmaDq tma_dq;  // reduce-add into the zeroed fp32 workspace [rows_q, Hq, D]
                                  // (dq_accum_strides): unscaled dS K
  float* dbias_part;  // null, or [B, Hq, key blocks] per-key-block sums of dS
  // Deterministic mode (Options::deterministic), else null: per (batch, query head, query block,
  // consumer warpgroup), how many key blocks have added their dQ part so far (zeroed); m_blocks query
  // blocks per sequence (of the longest one, varlen).
  int* dq_order;
  int m_blocks;
};

}  // namespace flashsigmoid::cuda::hopper
