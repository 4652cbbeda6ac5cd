// Stand-in for the CUDA backend in builds without CUDA: CUDA tensors get a clear error.
#include "backends.hpp"

namespace flashsigmoid::detail {

bool cuda_backend_built() { return false; }
bool cuda_device_present() { return false; }
std::vector<int> cuda_built_head_dims() { return {}; }

void cuda_forward(const AttnParams&) {
  throw Error("flashsigmoid: got CUDA tensors, but this build has no CUDA backend; rebuild with nvcc "
              "available (-DFLASHSIGMOID_CUDA=ON) or pass cpu tensors");
}
void cuda_backward(const BwdParams& p) { cuda_forward(p); }
void cuda_forward_kvcache(const KVCacheParams& p) { cuda_forward(p); }

}  // namespace flashsigmoid::detail
