// Every named barrier of the Hopper kernels, in one list so that two uses that can be live in one CTA
// never share an id. Values are CUTLASS user ids (cutlass::arch::NamedBarrier::sync adds its reserved
// count); the hardware has 16 in all.
#pragma once

namespace flashsigmoid::cuda::hopper {

enum NamedBarrierId : int {
  kBarStoreOutput = 1,  // + consumer warpgroup (1, 2): its rows of an output tile are staged (store_output:
                        // the forward's O, the backward's dK and dV)
  kBarDsReady = 3,      // backward: both warpgroups' dS^T of this step are in shared memory
  kBarEpilogue = 4,     // backward: every dQ GEMM (which reads all of K) is done
  kBarDbias = 5,        // backward: the warps' d(bias) sums are in shared memory
  kBarDqStaged = 6,     // backward, + consumer warpgroup (6, 7): its dQ part is in its staging tile
  kBarCount = 8
};
static_assert(kBarCount <= 16 - 1, "CUTLASS reserves one hardware barrier id");

}  // namespace flashsigmoid::cuda::hopper
