// flashsigmoid: command-line tool for the flashsigmoid sigmoid-attention library.
//   flashsigmoid run    benchmark forward + backward on random inputs, checked against float64
//   flashsigmoid check  correctness sweep over options against the float64 reference
#include <exception>
#include <iostream>
#include <string>

#include "args.hpp"
#include "commands.hpp"
#include "flashsigmoid/flashsigmoid.hpp"

namespace {

const char* kOverview =
    "usage: flashsigmoid <command> [options]\n"
    "\n"
    "Sigmoid self-attention, O = sigmoid(scale * Q K^T + b + alibi) V, on the CPU or a CUDA GPU.\n"
    "\n"
    "commands:\n"
    "  run     time forward and backward on random inputs and check a sample against the\n"
    "          float64 reference (flashsigmoid run --help)\n"
    "  check   correctness sweep over dtypes, head dims, masks, ALiBi, GQA, varlen and bias\n"
    "          modes against the float64 reference (flashsigmoid check --help)\n"
    "  help    show this help, or `flashsigmoid help <command>`\n"
    "  --version  print the version\n"
    "\n"
    "exit status: 0 success, 1 a check failed or the library reported an error, 2 bad usage\n";

}  // namespace

int main(int argc, char** argv) {
  using namespace flashsigmoid::cli;
  const std::string cmd = argc > 1 ? argv[1] : "";
  try {
    if (cmd == "--version" || cmd == "version") {
      std::cout << "flashsigmoid " << FLASHSIGMOID_VERSION << "\n";
      return 0;
    }
    if (cmd == "run") return run_command(argc, argv, 2);
    if (cmd == "check") return check_command(argc, argv, 2);
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
      const std::string topic = argc > 2 ? argv[2] : "";
      if (cmd == "help" && topic == "run") {
        std::cout << run_help();
      } else if (cmd == "help" && topic == "check") {
        std::cout << check_help();
      } else if (cmd == "help" && !topic.empty()) {
        throw UsageError("help: unknown command '" + topic + "' (commands: run, check)");
      } else {
        std::cout << kOverview << "\n" << run_help() << "\n" << check_help();
      }
      return 0;
    }
    if (cmd.empty()) throw UsageError("missing command (run or check)");
    throw UsageError("unknown command '" + cmd + "' (commands: run, check)");
  } catch (const UsageError& e) {
    std::cerr << "flashsigmoid: error: " << e.what() << "\n"
              << "Try 'flashsigmoid " << (cmd == "run" || cmd == "check" ? cmd + " " : std::string())
              << "--help'.\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "flashsigmoid: error: " << e.what() << "\n";
    return 1;
  }
}
