// Test helpers: mirror a testing::HostTensor (view, layout padding and guard band, byte for
// byte) on the GPU, and read it back, so the host-side poison / canary checks apply unchanged.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "flashsigmoid/flashsigmoid.hpp"
#include "reference/testing.hpp"

namespace fs_gpu {

inline bool has_device() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define FS_SKIP_WITHOUT_GPU()                                  \
  do {                                                         \
    if (!::fs_gpu::has_device()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

#define FS_CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr << ": " << cudaGetErrorString(cudaGetLastError())

class DeviceTensor {
 public:
  DeviceTensor() = default;
  explicit DeviceTensor(const flashsigmoid::testing::HostTensor& h) : host_(&h) {
    const auto& bytes = h.bytes();
    size_ = bytes.size();
    if (cudaMalloc(&base_, size_ == 0 ? 1 : size_) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
    if (size_ > 0) cudaMemcpy(base_, bytes.data(), size_, cudaMemcpyHostToDevice);
    view_ = h.view();
    offset_ = static_cast<const unsigned char*>(h.view().data) - bytes.data();
    view_.data = static_cast<unsigned char*>(base_) + offset_;
    view_.device = {flashsigmoid::DeviceType::cuda, 0};
  }
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  DeviceTensor(DeviceTensor&& o) noexcept { *this = std::move(o); }
  DeviceTensor& operator=(DeviceTensor&& o) noexcept {
    std::swap(base_, o.base_);
    std::swap(size_, o.size_);
    std::swap(offset_, o.offset_);
    std::swap(view_, o.view_);
    std::swap(host_, o.host_);
    return *this;
  }
  ~DeviceTensor() {
    if (base_ != nullptr) cudaFree(base_);
  }

  const flashsigmoid::TensorView& view() const { return view_; }
  operator flashsigmoid::TensorView() const { return view_; }

  // All bytes (view, padding, guard) back on the host.
  std::vector<unsigned char> download() const {
    std::vector<unsigned char> b(size_);
    if (size_ > 0) cudaMemcpy(b.data(), base_, size_, cudaMemcpyDeviceToHost);
    return b;
  }
  // The downloaded bytes read as a host view with the device view's shape and strides.
  flashsigmoid::TensorView host_view(std::vector<unsigned char>& bytes) const {
    flashsigmoid::TensorView t = view_;
    t.data = bytes.data() + offset_;
    t.device = {};
    return t;
  }
  // True when no byte outside the view (guard band, layout gaps) differs from the host original.
  bool guard_intact(const std::vector<unsigned char>& bytes) const {
    std::vector<unsigned char> in_view(size_, 0);
    const std::size_t es = flashsigmoid::element_size(view_.dtype);
    for (std::int64_t n = 0; n < view_.numel(); ++n) {
      const std::size_t b = offset_ + flashsigmoid::testing::logical_to_offset(view_, n) * es;
      for (std::size_t i = 0; i < es; ++i) in_view[b + i] = 1;
    }
    const auto& orig = host_->bytes();
    for (std::size_t i = 0; i < size_; ++i) {
      if (!in_view[i] && bytes[i] != orig[i]) return false;
    }
    return true;
  }

 private:
  void* base_ = nullptr;
  std::size_t size_ = 0;
  std::ptrdiff_t offset_ = 0;
  flashsigmoid::TensorView view_{};
  const flashsigmoid::testing::HostTensor* host_ = nullptr;
};

}  // namespace fs_gpu
