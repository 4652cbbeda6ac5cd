// The CTA's dynamic shared memory viewed as a kernel's SharedStorage, 1024-byte aligned: the 128-byte
// swizzle repeats every 1024 bytes, and TMA and wgmma need their tiles aligned to it (kSmemBytes
// reserves the 1024 bytes this may skip).
#pragma once

#include <cstdint>

namespace flashsigmoid::cuda::hopper {

// The offset is added to the __shared__ array itself rather than through an integer round trip
// (uintptr_t -> pointer), which would hide the address space from the compiler: every plain access
// to the tiles (the dS tile, the epilogues' stores and loads) then compiled to generic ST/LD with
// 64-bit addresses instead of STS/LDS with 32-bit ones.
template <class SharedStorage>
__device__ __forceinline__ SharedStorage& shared_storage() {
  extern __shared__ unsigned char smem_raw[];
  const unsigned misalignment = unsigned(reinterpret_cast<std::uintptr_t>(smem_raw)) & 1023u;
  return *reinterpret_cast<SharedStorage*>(smem_raw + ((1024u - misalignment) & 1023u));
}

}  // namespace flashsigmoid::cuda::hopper
