// Run-time choice of the CPU kernels' x86-64 level (portable builds; see src/cpu/isa.hpp).
#pragma once

#include <string>
#include <vector>

namespace flashsigmoid::detail {

// The levels this build carries, lowest first: "x86-64", "x86-64-v3", "x86-64-v4", "x86-64-v4-bf16"
// (AVX512-BF16), "x86-64-v4-amx" (AMX-BF16 tiles, with the OS permission granted).
std::vector<std::string> cpu_isa_levels();
// Whether this CPU (and OS) runs `level`.
bool cpu_isa_supported(const std::string& level);
// The level the CPU kernels run at: the highest the CPU (and, for AMX, the OS) supports, or the one
// named by the environment variable FLASHSIGMOID_CPU_ISA (read once, at the first call; an unknown
// name or one this CPU cannot run is an Error).
std::string cpu_isa();

}  // namespace flashsigmoid::detail
