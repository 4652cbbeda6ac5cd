// Public entry points: validate once, then hand the resolved parameters to a backend.
#include "flashsigmoid/flashsigmoid.hpp"

#include "backends.hpp"
#include "common/checked_math.hpp"
#include "validate.hpp"

namespace flashsigmoid {

const char* to_string(DType dtype) {
  switch (dtype) {
    case DType::float32: return "float32";
    case DType::float16: return "float16";
    case DType::bfloat16: return "bfloat16";
    case DType::float64: return "float64";
    case DType::int32: return "int32";
  }
  return "unknown dtype";
}

const char* to_string(DeviceType type) { return type == DeviceType::cpu ? "cpu" : "cuda"; }

std::size_t element_size(DType dtype) {
  switch (dtype) {
    case DType::float16:
    case DType::bfloat16: return 2;
    case DType::float32:
    case DType::int32: return 4;
    case DType::float64: return 8;
  }
  return 0;
}

std::int64_t TensorView::numel() const {
  for (int d = 0; d < rank; ++d) {
    if (shape[d] == 0) return 0;  // before the product, which may overflow on the other sizes
  }
  std::int64_t n = 1;
  for (int d = 0; d < rank; ++d) n = detail::checked_mul(n, shape[d], "the element count of a tensor");
  return rank > 0 ? n : 0;
}

TensorView TensorView::contiguous(void* data, DType dtype, std::initializer_list<std::int64_t> shape,
                                  Device device) {
  if (shape.size() == 0 || shape.size() > static_cast<std::size_t>(kMaxRank)) {
    throw Error("flashsigmoid: TensorView::contiguous takes 1 to 4 dimensions, got " +
                std::to_string(shape.size()));
  }
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.rank = static_cast<int>(shape.size());
  int d = 0;
  for (std::int64_t s : shape) t.shape[d++] = s;
  std::int64_t stride = 1;
  for (d = t.rank - 1; d >= 0; --d) {
    t.stride[d] = stride;
    stride *= t.shape[d];
  }
  return t;
}

bool cuda_available() { return detail::cuda_backend_built() && detail::cuda_device_present(); }

std::vector<int> cuda_head_dims() { return detail::cuda_built_head_dims(); }

void forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
             const Options& options) {
  const detail::AttnParams p = detail::make_forward_params(q, k, v, out, options);
  if (p.device.type == DeviceType::cpu) {
    detail::cpu_forward(p);
  } else {
    detail::cuda_forward(p);
  }
}

void backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout,
              const Gradients& grads, const Options& options) {
  const detail::BwdParams p = detail::make_backward_params(q, k, v, dout, grads, options);
  if (p.device.type == DeviceType::cpu) {
    detail::cpu_backward(p);
  } else {
    detail::cuda_backward(p);
  }
}

void forward_with_kvcache(const TensorView& q, const KVCache& cache, const TensorView& out, const Options& options,
                          int num_splits) {
  const detail::KVCacheParams p = detail::make_kvcache_params(q, cache, out, options, num_splits);
  if (p.device.type == DeviceType::cpu) {
    detail::cpu_forward_kvcache(p);
  } else {
    detail::cuda_forward_kvcache(p);
  }
}

}  // namespace flashsigmoid
