// Host/device memory for the CLI. CUDA calls live behind
// FLASHSIGMOID_CLI_CUDA (set when the library is built with CUDA).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "flashsigmoid/flashsigmoid.hpp"

namespace flashsigmoid::cli {

// An owning buffer on the host or on a CUDA device; freed on destruction.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Device device, std::size_t bytes);
  ~Buffer();
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

  void upload(const void* host, std::size_t bytes);  // host -> this
  void download(void* host, std::size_t bytes) const;  // this -> host
  void poison();                                       // all bytes 0xFF: NaN in fp32/fp16/bf16

 private:
  void release();
  Device device_{};
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

// "N bytes (x GiB)", for allocation errors.
std::string describe_bytes(std::int64_t bytes);

// Waits for all device work (no-op on the CPU).
void synchronize(Device device);
// Device name for the report, e.g. "cpu (2 threads)" or "cuda:0 NVIDIA H200".
std::string device_name(Device device, int threads);

}  // namespace flashsigmoid::cli
