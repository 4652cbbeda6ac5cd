// main of the GPU tests: GoogleTest's flags, plus which kernel family the forward and backward
// dispatch may pick for the whole run (scripts/gpu_check.sh runs the suite once per choice):
//   --forward-kernel=auto|portable   --backward-kernel=auto|portable   (default auto)
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "cuda/kernel_choice.hpp"

namespace {

// Parses "auto" / "portable" into `family`; false for any other value.
bool parse_family(const std::string& value, flashsigmoid::cuda::KernelFamily& family) {
  if (value == "auto") family = flashsigmoid::cuda::KernelFamily::automatic;
  else if (value == "portable") family = flashsigmoid::cuda::KernelFamily::portable;
  else return false;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);  // removes the flags it knows
  flashsigmoid::cuda::KernelChoice& choice = flashsigmoid::cuda::kernel_choice();
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto eq = arg.find('=');
    const std::string flag = arg.substr(0, eq);
    const std::string value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    bool ok = false;
    if (flag == "--forward-kernel") ok = parse_family(value, choice.forward);
    else if (flag == "--backward-kernel") ok = parse_family(value, choice.backward);
    if (!ok) {
      std::fprintf(stderr, "unknown argument %s; accepted: --forward-kernel=auto|portable, "
                           "--backward-kernel=auto|portable and GoogleTest's flags\n", arg.c_str());
      return 2;
    }
  }
  return RUN_ALL_TESTS();
}
