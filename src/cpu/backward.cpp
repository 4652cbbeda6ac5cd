#include "backends.hpp"
namespace flashsigmoid::detail {
void cpu_backward(const BwdParams&) { throw Error("todo"); }
}
