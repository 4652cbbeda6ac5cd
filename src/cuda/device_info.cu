#include "cuda/common/device_info.hpp"

#include <cuda_runtime.h>

#include <mutex>
#include <vector>

#include "cuda/common/check.hpp"

namespace flashsigmoid::cuda {

DeviceInfo device_info(int device_index) {
  static std::mutex mutex;
  static std::vector<DeviceInfo> cache;  // cc_major == 0: not asked yet
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (device_index >= 0 && std::size_t(device_index) < cache.size() && cache[device_index].cc_major != 0) {
      return cache[device_index];
    }
  }
  DeviceInfo info;
  int l2 = 0;
  check_cuda(cudaDeviceGetAttribute(&info.cc_major, cudaDevAttrComputeCapabilityMajor, device_index),
             "cudaDeviceGetAttribute(compute capability)");
  check_cuda(cudaDeviceGetAttribute(&info.cc_minor, cudaDevAttrComputeCapabilityMinor, device_index),
             "cudaDeviceGetAttribute(compute capability)");
  check_cuda(cudaDeviceGetAttribute(&info.sms, cudaDevAttrMultiProcessorCount, device_index),
             "cudaDeviceGetAttribute(multiprocessor count)");
  check_cuda(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device_index), "cudaDeviceGetAttribute(L2 cache size)");
  info.l2_bytes = l2;
  check_cuda(cudaDeviceGetAttribute(&info.smem_per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device_index),
             "cudaDeviceGetAttribute(shared memory per block)");
  std::lock_guard<std::mutex> lock(mutex);
  if (std::size_t(device_index) >= cache.size()) cache.resize(std::size_t(device_index) + 1);
  cache[device_index] = info;
  return info;
}

}  // namespace flashsigmoid::cuda
