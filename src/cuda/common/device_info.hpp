// Facts about a CUDA device that the dispatcher and the launchers need on every call (compute
// capability, SM count, L2 size), queried once per device and then read from a cache.
#pragma once

#include <cstdint>

namespace flashsigmoid::cuda {

struct DeviceInfo {
  int cc_major = 0;
  int cc_minor = 0;
  int sms = 0;                  // multiprocessors
  std::int64_t l2_bytes = 0;    // L2 cache size
  int smem_per_block = 0;       // the most dynamic shared memory a block may opt in to, bytes
  bool is_sm90() const { return cc_major == 9 && cc_minor == 0; }
};

// Thread-safe; throws flashsigmoid::Error when the driver cannot be asked. Defined in device_info.cu.
DeviceInfo device_info(int device_index);

}  // namespace flashsigmoid::cuda
