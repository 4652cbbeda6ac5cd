#include "memory.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <thread>

#ifdef FLASHSIGMOID_CLI_CUDA
#include <cuda_runtime.h>
#endif

namespace flashsigmoid::cli {

Buffer::Buffer(Device device, std::size_t bytes) : device_(device), bytes_(bytes) {
  const std::size_t n = bytes == 0 ? 1 : bytes;
  if (device.type == DeviceType::cpu) {
    data_ = std::malloc(n);
    if (data_ == nullptr) {
      throw Error("out of host memory: could not allocate " + describe_bytes(static_cast<std::int64_t>(bytes)));
    }
    return;
  }
#ifdef FLASHSIGMOID_CLI_CUDA
  if (cudaSetDevice(device.index) != cudaSuccess || cudaMalloc(&data_, n) != cudaSuccess) {
    throw Error("cudaMalloc of " + describe_bytes(static_cast<std::int64_t>(bytes)) + " failed: " +
                cudaGetErrorString(cudaGetLastError()));
  }
#else
  throw Error("this flashsigmoid build has no CUDA support");
#endif
}

Buffer::~Buffer() { release(); }

Buffer::Buffer(Buffer&& o) noexcept : device_(o.device_), data_(o.data_), bytes_(o.bytes_) {
  o.data_ = nullptr;
  o.bytes_ = 0;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    release();
    device_ = o.device_;
    data_ = o.data_;
    bytes_ = o.bytes_;
    o.data_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void Buffer::release() {
  if (data_ == nullptr) return;
  if (device_.type == DeviceType::cpu) {
    std::free(data_);
  } else {
#ifdef FLASHSIGMOID_CLI_CUDA
    cudaFree(data_);
#endif
  }
  data_ = nullptr;
}

void Buffer::upload(const void* host, std::size_t bytes) {
  if (bytes == 0) return;
  if (device_.type == DeviceType::cpu) {
    std::memcpy(data_, host, bytes);
    return;
  }
#ifdef FLASHSIGMOID_CLI_CUDA
  if (cudaMemcpy(data_, host, bytes, cudaMemcpyHostToDevice) != cudaSuccess) {
    throw Error(std::string("cudaMemcpy to device failed: ") + cudaGetErrorString(cudaGetLastError()));
  }
#endif
}

void Buffer::download(void* host, std::size_t bytes) const {
  if (bytes == 0) return;
  if (device_.type == DeviceType::cpu) {
    std::memcpy(host, data_, bytes);
    return;
  }
#ifdef FLASHSIGMOID_CLI_CUDA
  if (cudaMemcpy(host, data_, bytes, cudaMemcpyDeviceToHost) != cudaSuccess) {
    throw Error(std::string("cudaMemcpy to host failed: ") + cudaGetErrorString(cudaGetLastError()));
  }
#endif
}

void Buffer::poison() {
  if (device_.type == DeviceType::cpu) {
    std::memset(data_, 0xFF, bytes_);
    return;
  }
#ifdef FLASHSIGMOID_CLI_CUDA
  if (cudaMemset(data_, 0xFF, bytes_) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess) {
    throw Error(std::string("cudaMemset failed: ") + cudaGetErrorString(cudaGetLastError()));
  }
#endif
}

std::string describe_bytes(std::int64_t bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%lld bytes (%.3g GiB)", static_cast<long long>(bytes), double(bytes) / double(1 << 30));
  return buf;
}

void synchronize(Device device) {
  if (device.type == DeviceType::cpu) return;
#ifdef FLASHSIGMOID_CLI_CUDA
  if (cudaDeviceSynchronize() != cudaSuccess) {
    throw Error(std::string("CUDA error: ") + cudaGetErrorString(cudaGetLastError()));
  }
#endif
}

std::string device_name(Device device, int threads) {
  if (device.type == DeviceType::cpu) {
    const unsigned n = threads > 0 ? static_cast<unsigned>(threads) : std::thread::hardware_concurrency();
    return "cpu (" + std::to_string(n) + " threads)";
  }
#ifdef FLASHSIGMOID_CLI_CUDA
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device.index) == cudaSuccess) {
    return "cuda:" + std::to_string(device.index) + " " + prop.name;
  }
#endif
  return "cuda:" + std::to_string(device.index);
}

}  // namespace flashsigmoid::cli
