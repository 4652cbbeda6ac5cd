#include "backends.hpp"
namespace flashsigmoid::detail {
void cpu_forward(const AttnParams&) { throw Error("todo"); }
}
