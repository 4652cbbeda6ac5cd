// flashsigmoid check: a correctness sweep against the float64 reference.
#include <chrono>
#include <cstdio>
#include <exception>
#include <iostream>
#include <random>

#include "args.hpp"
#include "commands.hpp"
#include "problem.hpp"

namespace flashsigmoid::cli {
namespace {

ArgParser make_check_parser() {
  ArgParser p("flashsigmoid check [options]",
              "Runs forward and backward over a sweep of options (dtypes, head dims, causal, sliding\n"
              "window, ALiBi [H] and [B,H], GQA/MQA, varlen, bias default/constant/per-head, strided\n"
              "tensors) on fresh random inputs with NaN-poisoned outputs, and compares out, dq, dk, dv\n"
              "(and dbias) with the float64 reference. Bounds (SPEC.md), relative L2 per tensor: f32\n"
              "1e-5, f16 2e-3, bf16 1e-2, and for f16/bf16 at most 2x the error of the plain fp32\n"
              "implementation on the same inputs (outputs rounded to the dtype; floor 1e-5).\n"
              "Prints one line per case and a final 'N passed, M failed'; exit status 1 on any failure.");
  p.flag("--quick", "a smaller sweep (a few seconds on a CPU)");
  p.flag("--no-backward", "check the forward only");
  p.option("--device", "auto|cpu|cuda", "where to run (f32 cases run on the CPU only)", "auto");
  p.option("--threads", "T", "CPU worker threads (0 = all)", "0");
  p.option("--filter", "TEXT", "run only the cases whose description contains TEXT", "all");
  p.option("--seed", "S", "random seed for the inputs", "random");
  return p;
}

std::vector<Config> make_cases(bool quick, bool cpu) {
  std::vector<DType> dtypes = {DType::bfloat16, DType::float16};
  if (cpu) dtypes.insert(dtypes.begin(), DType::float32);
  const std::int64_t n = quick ? 128 : 200;  // full: not a multiple of any tile size
  std::vector<Config> out;
  for (DType dt : dtypes) {
    Config base;
    base.dtype = dt;
    base.batch = 2;
    base.seqlen_q = base.seqlen_k = n;
    base.heads_q = base.heads_kv = 4;
    base.head_dim = 64;
    auto add = [&](auto&& edit) {
      Config c = base;
      edit(c);
      out.push_back(c);
    };
    const std::vector<std::int64_t> dims = quick ? std::vector<std::int64_t>{64, 128}
                                                 : std::vector<std::int64_t>{32, 64, 96, 128, 256};
    for (std::int64_t d : dims) {
      add([&](Config& c) { c.head_dim = d; });
      if (!quick) add([&](Config& c) { c.head_dim = d; c.causal = true; });
    }
    if (quick) add([](Config& c) { c.causal = true; });
    add([&](Config& c) { c.causal = true; c.seqlen_q = n - 32; c.seqlen_k = n + 32; });  // bottom-right
    add([](Config& c) { c.window_left = 32; c.window_right = 16; });
    add([](Config& c) { c.causal = true; c.window_left = 48; });
    add([](Config& c) { c.causal = true; c.alibi = AlibiMode::per_head; });
    add([](Config& c) { c.alibi = AlibiMode::per_batch_head; });
    add([](Config& c) { c.heads_q = 8; c.heads_kv = 2; });  // GQA
    add([](Config& c) { c.heads_kv = 1; c.causal = true; });  // MQA
    add([](Config& c) { c.varlen_q = c.varlen_k = {37, 128, 1}; c.causal = true; });
    add([](Config& c) { c.varlen_q = {64, 20, 5}; c.varlen_k = {100, 50, 64}; });
    add([](Config& c) { c.bias_mode = BiasMode::scalar; c.bias_value = -3.5f; });
    add([](Config& c) { c.bias_mode = BiasMode::per_head; });
    add([](Config& c) { c.row_padding = 8; c.causal = true; });
    if (!quick) {
      add([&](Config& c) { c.causal = true; c.seqlen_q = n + 40; c.seqlen_k = n - 40; });  // rows fully masked
      add([](Config& c) { c.window_left = 0; c.window_right = 0; });
      add([&](Config& c) { c.window_left = -1; c.window_right = 8; c.seqlen_q = n - 50; });
      add([](Config& c) { c.seqlen_q = 1; c.seqlen_k = 300; c.causal = true; });  // decode
      add([](Config& c) { c.varlen_q = {0, 77, 130}; c.varlen_k = {10, 0, 130}; });  // empty sequences
      add([](Config& c) {
        c.varlen_q = c.varlen_k = {90, 150};
        c.heads_q = 8;
        c.heads_kv = 2;
        c.causal = true;
        c.alibi = AlibiMode::per_batch_head;
        c.bias_mode = BiasMode::per_head;
      });
      add([](Config& c) { c.head_dim = 128; c.window_left = 20; c.window_right = 20; c.alibi = AlibiMode::per_head;
                          c.bias_mode = BiasMode::per_head; c.row_padding = 24; });
    }
  }
  return out;
}

std::string error_summary(const std::vector<TensorCheck>& checks) {
  std::string s;
  char buf[96];
  for (const TensorCheck& c : checks) {
    std::snprintf(buf, sizeof buf, "%s%s %.1e%s", s.empty() ? "" : ", ", c.name.c_str(), c.error,
                  c.pass ? "" : " (FAIL)");
    s += buf;
  }
  return s;
}

}  // namespace

std::string check_help() { return make_check_parser().help(); }

int check_command(int argc, char** argv, int first) {
  ArgParser args = make_check_parser();
  args.parse(argc, argv, first);
  if (args.help_requested()) {
    std::cout << args.help();
    return 0;
  }
  const Device device = resolve_device(args.value("--device").value_or("auto"));
  const auto threads_text = args.value("--threads");
  const int threads = threads_text ? static_cast<int>(parse_int("--threads", *threads_text, 0)) : 0;
  const std::string filter = args.value("--filter").value_or("");
  const bool with_backward = !args.has("--no-backward");
  const std::uint64_t seed =
      args.value("--seed") ? static_cast<std::uint64_t>(parse_int("--seed", *args.value("--seed"), 0))
                           : std::random_device{}();

  std::vector<Config> cases;
  for (Config cfg : make_cases(args.has("--quick"), device.type == DeviceType::cpu)) {
    cfg.threads = threads;
    if (filter.empty() || cfg.describe().find(filter) != std::string::npos) cases.push_back(cfg);
  }
  if (cases.empty()) throw UsageError("--filter: no case matches '" + filter + "'");

  std::printf("flashsigmoid check on %s, seed %llu\n", device_name(device, threads).c_str(),
              static_cast<unsigned long long>(seed));
  int passed = 0, failed = 0;
  std::uint64_t case_seed = seed;
  const auto start = std::chrono::steady_clock::now();
  for (const Config& cfg : cases) {
    const std::string name = cfg.describe();
    ++case_seed;
    bool ok = false;
    std::string detail;
    try {
      Problem p(cfg, device, case_seed);
      p.poison_outputs();
      p.forward();
      if (with_backward) p.backward();
      synchronize(device);
      const std::vector<TensorCheck> checks = p.check(with_backward);
      ok = true;
      for (const TensorCheck& c : checks) ok = ok && c.pass;
      detail = error_summary(checks);
    } catch (const std::exception& e) {
      detail = std::string("error: ") + e.what();
    }
    (ok ? passed : failed) += 1;
    std::printf("%s  %-62s  %s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.c_str());
    std::fflush(stdout);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "(%.1f s)\n", secs);
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

}  // namespace flashsigmoid::cli
