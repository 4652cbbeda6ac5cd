// flashsigmoid run: time forward + backward on random inputs, then check a sample.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <optional>
#include <random>
#include <tuple>

#include "args.hpp"
#include "commands.hpp"
#include "json_writer.hpp"
#include "problem.hpp"

namespace flashsigmoid::cli {
namespace {

// Largest reference check run in-process: 4*Nq*Nk*D*(query heads) of the slice. Above it the
// check runs on a smaller problem with the same options (the float64 reference is slow).
constexpr double kMaxCheckFlops = 1.2e9;

ArgParser make_run_parser() {
  ArgParser p("flashsigmoid run [options]",
              "Times flashsigmoid::forward and ::backward on random inputs of the given shape on the best\n"
              "device (CUDA when available, else CPU) and prints time per call and TFLOP/s (forward\n"
              "4*B*Hq*Nq*Nk*D, halved for causal when Nq == Nk, windows not discounted; backward 2.5x).\n"
              "Then checks batch 0, kv head 0 and its query heads (all batches with --bias per-head; a\n"
              "smaller problem with the same options when that is too large) against the float64\n"
              "reference: relative L2 error per output within SPEC.md's bounds, PASS or FAIL (exit 1).\n"
              "Defaults: CPU  B=1 N=1024 H=8 D=64 f32, 5 iterations;\n"
"          CUDA B=4 N=4096 H=16 D=128 bf16, 20 iterations.");
  p.option("--batch", "B", "batch size", "1; CUDA 4");
  p.option("--seqlen", "N", "query sequence length Nq", "1024; CUDA 4096");
  p.option("--seqlen-k", "NK", "key/value sequence length Nk", "N");
  p.option("--heads", "H", "query heads Hq", "8; CUDA 16");
  p.option("--kv-heads", "HKV", "key/value heads (GQA/MQA: must divide H)", "H");
  p.option("--head-dim", "D", "head dimension: 32, 64, 96, 128 or 256", "64; CUDA 128");
  p.option("--dtype", "f32|f16|bf16", "input/output dtype (f32 is CPU-only)", "f32; CUDA bf16");
  p.flag("--causal", "causal mask, bottom-right aligned when Nq != Nk");
  p.option("--window", "L,R", "sliding window (left, right); -1 = unbounded", "none");
  p.flag("--alibi", "add ALiBi with slopes 2^(-8(h+1)/H), shape [H]");
  p.option("--bias", "default|<float>|per-head",
           "b: -log(Nk), a constant, or a learnable [H] tensor (+dbias)", "default");
  p.option("--device", "auto|cpu|cuda", "where to run", "auto");
  p.option("--threads", "T", "CPU worker threads (0 = all)", "0");
  p.option("--iters", "I", "timed calls of forward and of backward, after a warm-up", "5; CUDA 20");
  p.option("--seed", "S", "random seed for the inputs", "random");
  p.flag("--no-backward", "time the forward only");
  p.flag("--no-check", "skip the check against the float64 reference");
  p.flag("--json", "print one JSON object (shape, options, device, timings, TFLOP/s, check) instead of text");
  return p;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

DType parse_dtype(const std::string& flag, const std::string& text) {
  const std::string d = parse_choice(flag, text, {"f32", "f16", "bf16"});
  return d == "f32" ? DType::float32 : d == "f16" ? DType::float16 : DType::bfloat16;
}

void print_checks(const std::vector<TensorCheck>& checks) {
  for (const TensorCheck& c : checks) {
    std::printf("  %-6s rel L2 %.3e  bound %.1e", c.name.c_str(), c.error, c.bound);
    if (c.plain_error >= 0) std::printf("  (plain fp32 implementation: %.3e)", c.plain_error);
    std::printf("  %s\n", c.pass ? "PASS" : "FAIL");
  }
}

const char* dtype_name(DType d) { return d == DType::float32 ? "f32" : d == DType::float16 ? "f16" : "bf16"; }

// Median and minimum of the timed calls, and the rate.
struct Timing {
  double median_s = 0.0, min_s = 0.0, tflops = 0.0;
};

Timing summarize(const std::vector<double>& seconds, double flops) {
  Timing t;
  t.median_s = median(seconds);
  t.min_s = *std::min_element(seconds.begin(), seconds.end());
  t.tflops = flops / t.median_s / 1e12;
  return t;
}

// `flashsigmoid run --json`: everything the text report says, as one object.
struct RunReport {
  Config cfg;
  std::string device;
  bool gpu = false;
  std::uint64_t seed = 0;
  std::int64_t iters = 0;
  Timing forward;
  std::optional<Timing> backward;
  bool checked = false;
  std::string check_problem;  // the problem the check ran on
  std::vector<TensorCheck> checks;
  bool pass = true;
};

std::string to_json(const RunReport& r) {
  const Config& c = r.cfg;
  JsonWriter j;
  j.begin_object();
  j.key("version").value(FLASHSIGMOID_VERSION);
  j.key("device").value(r.device).key("device_type").value(r.gpu ? "cuda" : "cpu");
  j.key("dtype").value(dtype_name(c.dtype));
  j.key("shape").begin_object();
  j.key("batch").value(c.batch).key("seqlen_q").value(c.seqlen_q).key("seqlen_k").value(c.seqlen_k);
  j.key("heads_q").value(c.heads_q).key("heads_kv").value(c.heads_kv).key("head_dim").value(c.head_dim);
  j.end_object();
  j.key("options").begin_object();
  j.key("causal").value(c.causal);
  j.key("window").begin_array().value(c.window_left).value(c.window_right).end_array();
  j.key("alibi").value(c.alibi != AlibiMode::none);
  j.key("bias");
  if (c.bias_mode == BiasMode::scalar) {
    j.value(double(c.bias_value));
  } else {
    j.value(c.bias_mode == BiasMode::per_head ? "per-head" : "default");
  }
  j.key("threads").value(c.threads);
  j.end_object();
  j.key("seed").value(r.seed).key("iters").value(r.iters);
  j.key("forward_flops").value(c.forward_flops());
  auto timing = [&](const char* name, const std::optional<Timing>& t) {
    j.key(name);
    if (!t) {
      j.null();
      return;
    }
    j.begin_object();
    j.key("median_ms").value(1e3 * t->median_s).key("min_ms").value(1e3 * t->min_s);
    j.key("tflops").value(t->tflops);
    j.end_object();
  };
  timing("forward", r.forward);
  timing("backward", r.backward);
  j.key("check");
  if (!r.checked) {
    j.null();
  } else {
    j.begin_object();
    j.key("pass").value(r.pass).key("problem").value(r.check_problem);
    j.key("tensors").begin_array();
    for (const TensorCheck& t : r.checks) {
      j.begin_object();
      j.key("name").value(t.name).key("rel_l2").value(t.error).key("bound").value(t.bound);
      j.key("plain_rel_l2");
      if (t.plain_error >= 0) {
        j.value(t.plain_error);
      } else {
        j.null();
      }
      j.key("pass").value(t.pass);
      j.end_object();
    }
    j.end_array();
    j.end_object();
  }
  j.end_object();
  return j.str();
}

}  // namespace

std::string run_help() { return make_run_parser().help(); }

Device resolve_device(const std::string& text) {
  const std::string d = parse_choice("--device", text, {"auto", "cpu", "cuda"});
  if (d == "cpu") return Device{DeviceType::cpu, 0};
  if (d == "auto") return cuda_available() ? Device{DeviceType::cuda, 0} : Device{DeviceType::cpu, 0};
  if (!cuda_available()) {
#ifdef FLASHSIGMOID_CLI_CUDA
    throw UsageError("--device cuda: no CUDA device is visible");
#else
    throw UsageError("--device cuda: this build has no CUDA backend (rebuild with nvcc, -DFLASHSIGMOID_CUDA=ON)");
#endif
  }
  return Device{DeviceType::cuda, 0};
}

int run_command(int argc, char** argv, int first) {
  ArgParser args = make_run_parser();
  args.parse(argc, argv, first);
  if (args.help_requested()) {
    std::cout << args.help();
    return 0;
  }
  const Device device = resolve_device(args.value("--device").value_or("auto"));
  const bool gpu = device.type == DeviceType::cuda;
  auto get_int = [&](const char* flag, std::int64_t fallback, std::int64_t min_value) {
    const auto v = args.value(flag);
    return v ? parse_int(flag, *v, min_value) : fallback;
  };

  Config cfg;
  cfg.batch = get_int("--batch", gpu ? 4 : 1, 1);
  cfg.seqlen_q = get_int("--seqlen", gpu ? 4096 : 1024, 1);
  cfg.seqlen_k = get_int("--seqlen-k", cfg.seqlen_q, 1);
  cfg.heads_q = get_int("--heads", gpu ? 16 : 8, 1);
  cfg.heads_kv = get_int("--kv-heads", cfg.heads_q, 1);
  cfg.head_dim = get_int("--head-dim", gpu ? 128 : 64, 1);
  cfg.dtype = gpu ? DType::bfloat16 : DType::float32;
  if (const auto v = args.value("--dtype")) cfg.dtype = parse_dtype("--dtype", *v);
  cfg.causal = args.has("--causal");
  if (const auto v = args.value("--window")) {
    std::tie(cfg.window_left, cfg.window_right) = parse_int_pair("--window", *v);
  }
  if (args.has("--alibi")) cfg.alibi = AlibiMode::per_head;
  if (const auto v = args.value("--bias")) {
    if (*v == "per-head") {
      cfg.bias_mode = BiasMode::per_head;
    } else if (*v != "default") {
      cfg.bias_mode = BiasMode::scalar;
      try {
        cfg.bias_value = parse_float("--bias", *v);
      } catch (const UsageError&) {
        throw UsageError("--bias: expected default, per-head or a number, got '" + *v + "'");
      }
    }
  }
  cfg.threads = static_cast<int>(get_int("--threads", 0, 0));
  const std::int64_t iters = get_int("--iters", gpu ? 20 : 5, 1);
  const std::uint64_t seed =
      args.value("--seed") ? static_cast<std::uint64_t>(parse_int("--seed", *args.value("--seed"), 0))
                           : std::random_device{}();
  const bool with_backward = !args.has("--no-backward");
  const bool with_check = !args.has("--no-check");
  const bool json = args.has("--json");

  if (cfg.heads_q % cfg.heads_kv != 0) {
    throw UsageError("--kv-heads: " + std::to_string(cfg.heads_kv) + " does not divide --heads " +
                     std::to_string(cfg.heads_q));
  }
  if (std::find(kSupportedHeadDims.begin(), kSupportedHeadDims.end(), cfg.head_dim) == kSupportedHeadDims.end()) {
    throw UsageError("--head-dim: expected one of 32, 64, 96, 128, 256, got " + std::to_string(cfg.head_dim));
  }
  if (gpu && cfg.dtype == DType::float32) {
    throw UsageError("--dtype f32 runs on the CPU only; on CUDA use f16 or bf16 (or --device cpu)");
  }

  try {
    cfg.bytes_needed();
  } catch (const Error& e) {
    throw UsageError(std::string("the shape is too large (--batch, --seqlen, --seqlen-k, --heads, --kv-heads, "
                                 "--head-dim): ") + e.what());
  }

  RunReport report;
  report.cfg = cfg;
  report.device = device_name(device, cfg.threads);
  report.gpu = gpu;
  report.seed = seed;
  report.iters = iters;
  if (!json) {
    std::printf("flashsigmoid run on %s: %s, seed %llu\n", report.device.c_str(), cfg.describe().c_str(),
                static_cast<unsigned long long>(seed));
    std::fflush(stdout);
  }
  Problem problem(cfg, device, seed);

  // One warm-up call each (poisoned outputs), then `iters` timed calls, each timed alone.
  using clock = std::chrono::steady_clock;
  auto seconds = [](clock::time_point a, clock::time_point b) { return std::chrono::duration<double>(b - a).count(); };
  std::vector<double> fwd_s, bwd_s;
  const auto start = clock::now();
  auto last_progress = start;
  bool progress_shown = false;
  for (std::int64_t i = 0; i <= iters; ++i) {
    problem.poison_outputs();
    synchronize(device);
    auto t0 = clock::now();
    problem.forward();
    synchronize(device);
    auto t1 = clock::now();
    double bwd = 0.0;
    if (with_backward) {
      problem.backward();
      synchronize(device);
      bwd = seconds(t1, clock::now());
    }
    if (i > 0) {
      fwd_s.push_back(seconds(t0, t1));
      if (with_backward) bwd_s.push_back(bwd);
    }
    const auto now = clock::now();
    if (seconds(last_progress, now) >= 1.0 || (progress_shown && i == iters)) {
      char bwd_text[48] = "";
      if (with_backward) std::snprintf(bwd_text, sizeof bwd_text, ", bwd %.3f ms", 1e3 * bwd);
      std::fprintf(stderr, "iter %lld/%lld (%s): fwd %.3f ms%s, %.1f s elapsed\n", static_cast<long long>(i),
                   static_cast<long long>(iters), i == 0 ? "warm-up" : "timed", 1e3 * seconds(t0, t1), bwd_text,
                   seconds(start, now));
      last_progress = now;
      progress_shown = true;
    }
  }

  const double flops = cfg.forward_flops();
  report.forward = summarize(fwd_s, flops);
  if (with_backward) report.backward = summarize(bwd_s, 2.5 * flops);
  if (!json) {
    std::printf("forward : %10.3f ms/call  %8.4f TFLOP/s  (median of %lld; min %.3f ms)\n",
                1e3 * report.forward.median_s, report.forward.tflops, static_cast<long long>(iters),
                1e3 * report.forward.min_s);
    if (report.backward) {
      std::printf("backward: %10.3f ms/call  %8.4f TFLOP/s  (median of %lld; min %.3f ms)\n",
                  1e3 * report.backward->median_s, report.backward->tflops, static_cast<long long>(iters),
                  1e3 * report.backward->min_s);
    }
    std::fflush(stdout);
  }
  if (!with_check) {
    if (json) std::printf("%s\n", to_json(report).c_str());
    return 0;
  }

  // The check: batch 0, kv head 0 and its query heads of this run's outputs; or, for shapes too
  // large for the float64 reference, a smaller problem with the same options run afresh.
  const std::int64_t group = cfg.heads_q / cfg.heads_kv;
  const double slice_batches = cfg.bias_mode == BiasMode::per_head ? double(cfg.batch) : 1.0;
  const double slice_flops =
      4.0 * slice_batches * double(cfg.seqlen_q) * double(cfg.seqlen_k) * double(cfg.head_dim) * double(group);
  std::vector<TensorCheck> checks;
  if (slice_flops <= kMaxCheckFlops) {
    char what[96];
    std::snprintf(what, sizeof what, "%s, kv head 0 with its %lld query head%s",
                  cfg.bias_mode == BiasMode::per_head ? "all batches" : "batch 0", static_cast<long long>(group),
                  group > 1 ? "s" : "");
    report.check_problem = what;
    if (!json) {
      std::printf("check vs float64 reference (%s):\n", what);
      std::fflush(stdout);
    }
    checks = problem.check_slice(with_backward);
  } else {
    Config small = cfg;
    small.batch = 1;  // (with a per-head bias too: a batch of one still checks dbias)
    small.heads_q = group;
    small.heads_kv = 1;
    const double shrink = std::sqrt(kMaxCheckFlops / slice_flops);
    auto shrunk = [&](std::int64_t n) { return std::max<std::int64_t>(16, std::llround(double(n) * shrink)); };
    small.seqlen_q = shrunk(cfg.seqlen_q);
    small.seqlen_k = cfg.seqlen_q == cfg.seqlen_k ? small.seqlen_q : shrunk(cfg.seqlen_k);
    if (small.heads_q * small.seqlen_q * small.seqlen_k * small.head_dim * 4.0 > 4 * kMaxCheckFlops) {
      small.heads_q = 1;  // very wide GQA groups: one query head is enough
    }
    report.check_problem = "a smaller problem with the same options: " + small.describe();
    if (!json) {
      std::printf("check vs float64 reference on %s:\n", report.check_problem.c_str());
      std::fflush(stdout);
    }
    Problem check_problem(small, device, seed + 1);
    check_problem.poison_outputs();
    check_problem.forward();
    if (with_backward) check_problem.backward();
    synchronize(device);
    checks = check_problem.check(with_backward);
  }
  report.checked = true;
  report.checks = checks;
  for (const TensorCheck& c : checks) report.pass = report.pass && c.pass;
  if (json) {
    std::printf("%s\n", to_json(report).c_str());
  } else {
    print_checks(checks);
    std::printf("%s\n", report.pass ? "PASS" : "FAIL");
  }
  return report.pass ? 0 : 1;
}

}  // namespace flashsigmoid::cli
