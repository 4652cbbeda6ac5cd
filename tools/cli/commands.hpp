// The flashsigmoid tool's subcommands. Each returns the process exit status: 0 success,
// 1 a failed check (a library error propagates as an exception: exit 1 in main), and throws
// UsageError (exit 2) for a bad command line.
#pragma once

#include <string>

#include "flashsigmoid/flashsigmoid.hpp"

namespace flashsigmoid::cli {

int run_command(int argc, char** argv, int first);
int check_command(int argc, char** argv, int first);

std::string run_help();
std::string check_help();

// --device auto|cpu|cuda -> a device; auto is CUDA when flashsigmoid::cuda_available().
// Throws UsageError for cuda on a build or machine without it.
Device resolve_device(const std::string& text);

}  // namespace flashsigmoid::cli
