// Float64 materialising reference of sigmoid attention (tests, CLI checks, benchmark).
//
// Written from SPEC.md alone, independently of src/common/score_transform.hpp, so that a
// bug in the shared score transform shows up as a mismatch. Every option of
// flashsigmoid::Options is honoured: dense and varlen, GQA/MQA, scale, the three bias
// modes, bottom-right causal, sliding window, ALiBi [Hq] or [B, Hq], global positions. Masked entries
// contribute exactly 0. Inputs are CPU TensorViews of any float dtype, read through
// their strides. The reference does not re-validate its input beyond what it needs to
// read it safely; feed it inputs that flashsigmoid::forward accepts. Scores are materialised
// per (sequence, head) in blocks of 256 query rows (memory 256 * Nk doubles per thread); the
// work is spread over all hardware threads.
#pragma once

#include <vector>

#include "flashsigmoid/flashsigmoid.hpp"

namespace flashsigmoid::reference {

// O as float64, contiguous, in q's shape.
std::vector<double> forward(const TensorView& q, const TensorView& k, const TensorView& v, const Options& o);

// dq/dk/dv contiguous in q/k/v's shapes; dbias [Hq] = sum over sequences, i, j of dS
// (always filled, whatever the bias mode); dbias_abs [Hq] = the sum of |dS|: the size of the terms
// dbias adds, against which its rounding error is measured (the terms cancel).
struct Grads {
  std::vector<double> dq, dk, dv, dbias, dbias_abs;
};
Grads backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout,
               const Options& o);

// "Plain" materialising attention as a framework would run it at low precision: fp32 math
// (fp32 accumulation), S materialised in fp32, every matrix that feeds a matmul as an operand
// (P before P·V and Pᵀ·dO; dS before dS·K and dSᵀ·Q) rounded to the input dtype, and each
// result rounded to the input dtype. For float32/float64 inputs nothing is rounded (all fp32
// math). dbias is the fp32 sum of the rounded dS. Values returned as double, contiguous.
// Work is spread over Options::num_threads threads (0 = all hardware threads).
std::vector<double> plain_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                                  const Options& o);
Grads plain_backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout,
                     const Options& o);

}  // namespace flashsigmoid::reference
