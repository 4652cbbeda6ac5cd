// Validation of user input: the one place that turns TensorViews + Options into
// AttnParams / BwdParams, or throws flashsigmoid::Error saying what is wrong.
#pragma once

#include "common/params.hpp"

namespace flashsigmoid::detail {

AttnParams make_forward_params(const TensorView& q, const TensorView& k, const TensorView& v,
                               const TensorView& out, const Options& options);

BwdParams make_backward_params(const TensorView& q, const TensorView& k, const TensorView& v,
                               const TensorView& dout, const Gradients& grads, const Options& options);

KVCacheParams make_kvcache_params(const TensorView& q, const KVCache& cache, const TensorView& out,
                                  const Options& options, int num_splits);

std::string describe_shape(const TensorView& t);

}  // namespace flashsigmoid::detail
