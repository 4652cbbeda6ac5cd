"""Same-process CPU comparison: flashsigmoid's CPU backend against PyTorch on the same inputs.

Methods: flashsigmoid.sigmoid_attn; PyTorch SDPA (softmax attention, PyTorch's fused CPU kernel); a plain
materialising sigmoid attention in PyTorch (S = q k^T / sqrt(D) - log(N), P = sigmoid(S), O = P v) and
the same function under torch.compile; and the same run's torch.matmul rate per dtype (a square GEMM of
--gemm-n, the machine's GEMM roof for that dtype), at the start and again after each shape. Forward, and forward + backward (one call of
forward then torch.autograd.grad of out for q, k, v). fp32 and bf16, B 1, --heads heads, N in --ns,
D in --dims, causal and not.

Timing: wall clock, median of --reps calls after one warm-up call (torch.compile's compile happens in the
warm-up), all threads torch and flashsigmoid use (torch.get_num_threads()). TFLOP/s: forward
4*B*H*N*N*D, halved for causal; forward + backward 3.5x the forward count. The machine's load average
is recorded before and after: on a shared machine the absolute figures move, the same-run ratios less.

  python3 bench/cpu_compare.py OUT_DIR [--quick] [--ns 1024,2048,4096,8192] [--dims 64,128]
      [--dtypes fp32,bf16] [--heads 2] [--reps 3] [--threads T] [--no-compile] [--commit C]
writes OUT_DIR/cpu-compare-<date>.{json,md}.
"""
import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import flashsigmoid

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def plain_sigmoid(q, k, v, causal):
    """[B, H, N, D] inputs; materialises the N x N scores."""
    n, d = q.shape[-2], q.shape[-1]
    s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(d)) - math.log(k.shape[-2])
    if causal:
        mask = torch.ones(n, k.shape[-2], dtype=torch.bool).triu(k.shape[-2] - n + 1)
        s = s.masked_fill(mask, float("-inf"))
    return torch.matmul(torch.sigmoid(s), v)


def methods(compile_plain):
    m = {
        # flashsigmoid takes [B, N, H, D]; the others get transposed views of the same tensors.
        "flashsigmoid": lambda q, k, v, c: flashsigmoid.sigmoid_attn(q, k, v, causal=c),
        "sdpa_softmax": lambda q, k, v, c: F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=c).transpose(1, 2),
        "plain_sigmoid": lambda q, k, v, c: plain_sigmoid(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), c).transpose(1, 2),
    }
    if compile_plain:
        compiled = torch.compile(plain_sigmoid, dynamic=False)
        m["plain_sigmoid_compiled"] = lambda q, k, v, c: compiled(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), c).transpose(1, 2)
    return m


def median_s(call, reps):
    call()  # warm-up (and torch.compile's compile)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_tflops(dtype, n, reps):
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n ** 3 / median_s(lambda: torch.matmul(a, b), reps) / 1e12


def run_shape(fns, dtype, n, d, heads, causal, reps):
    q, k, v = (torch.randn(1, n, heads, d, dtype=dtype) for _ in range(3))
    dout = torch.randn_like(q)
    flops = 4 * heads * n * n * d / (2 if causal else 1)
    row = {}
    with torch.no_grad():  # a check that the right thing is timed: ours against the plain path
        ours, plain = fns["flashsigmoid"](q, k, v, causal).float(), fns["plain_sigmoid"](q, k, v, causal).float()
        check = ((ours - plain).norm() / plain.norm()).item()
    for name, fn in fns.items():
        try:
            with torch.no_grad():
                t_fwd = median_s(lambda: fn(q, k, v, causal), reps)
            qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))

            def fwd_bwd():
                out = fn(qg, kg, vg, causal)
                torch.autograd.grad(out, (qg, kg, vg), dout)

            t_fb = median_s(fwd_bwd, reps)
            row[name] = {"fwd_ms": t_fwd * 1e3, "fwd_tflops": flops / t_fwd / 1e12,
                         "fwdbwd_ms": t_fb * 1e3, "fwdbwd_tflops": 3.5 * flops / t_fb / 1e12}
        except Exception as e:  # reported, not hidden: the table shows n/a and the error
            row[name] = {"error": str(e).splitlines()[0][:200]}
    return row, check


def cpu_flags():
    flags = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    keep = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_fp16", "amx_tile",
            "amx_bf16", "amx_int8")
    return [f for f in flags if f in keep]


def machine():
    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except Exception:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "flags": cpu_flags(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "flashsigmoid_cpu_level": flashsigmoid_level()}


def flashsigmoid_level():
    return os.environ.get("FLASHSIGMOID_CPU_ISA") or "highest supported (run time)"


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def fmt_cell(r, key):
    if r is None:
        return ""
    return "n/a" if "error" in r else f"{r[key]:.3f}"


def write_markdown(path, meta, rows, names):
    lines = [f"# CPU comparison, {meta['date']}", "",
             f"- machine: {meta['machine']['cpu']}, {meta['machine']['cores']} CPUs, flags "
             f"{' '.join(meta['machine']['flags'])}; torch {meta['machine']['torch']}, "
             f"{meta['machine']['threads']} threads; flashsigmoid CPU level: {meta['machine']['flashsigmoid_cpu_level']}",
             f"- date (UTC): {meta['date']}; git commit: {meta['commit']}",
             f"- command: `{meta['command']}`",
             f"- load average before / after: {meta['load_before']} / {meta['load_after']}",
             f"- GEMM roof (torch.matmul {meta['gemm_n']}^3, same run; at the start, and per row after the "
             "row's shape for the last column), TFLOP/s at the start: "
             + ", ".join(f"{k} {v:.3f}" for k, v in meta["gemm_tflops"].items()),
             "- TFLOP/s: forward 4·B·H·N²·D (halved for causal); fwd+bwd 3.5× that. B 1, H "
             f"{meta['heads']}. Ratios: flashsigmoid / SDPA softmax on the same inputs.", ""]
    head = "| dtype | D | causal | N | pass | " + " | ".join(names) + " | ours / SDPA | ours / GEMM roof |"
    lines += [head, "|" + "---|" * (7 + len(names))]
    for r in rows:
        for pass_, key in (("fwd", "fwd_tflops"), ("fwd+bwd", "fwdbwd_tflops")):
            res = r["results"]
            ours, sdpa = res.get("flashsigmoid"), res.get("sdpa_softmax")
            ratio = roof = ""
            if ours and sdpa and "error" not in ours and "error" not in sdpa:
                ratio = f"{ours[key] / sdpa[key]:.2f}×"
            if ours and "error" not in ours:
                roof = f"{ours[key] / r.get('gemm_tflops', meta['gemm_tflops'][r['dtype']]):.2f}"
            cells = " | ".join(fmt_cell(res.get(n), key) for n in names)
            lines.append(f"| {r['dtype']} | {r['D']} | {'yes' if r['causal'] else 'no'} | {r['N']} | {pass_} | "
                         f"{cells} | {ratio} | {roof} |")
    worst = max(r["rel_l2_vs_plain"] for r in rows)
    lines += ["", f"Check: flashsigmoid's forward output against the plain path's on the same inputs, largest "
              f"relative L2 difference over the table: {worst:.2e} (the rounding of the dtype)."]
    errors = [(r, n, res["error"]) for r in rows for n, res in r["results"].items() if "error" in res]
    if errors:
        lines += ["", "Errors (n/a above):"]
        lines += [f"- {r['dtype']} D {r['D']} N {r['N']} causal {r['causal']}, {n}: {e}" for r, n, e in errors]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--quick", action="store_true", help="N 1024 and 4096 only")
    ap.add_argument("--ns", default="1024,2048,4096,8192")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--causal", default="no,yes")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--gemm-n", type=int, default=2048)
    ap.add_argument("--commit", default=None, help="commit to record when git is not available")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads (flashsigmoid follows it); 0 = leave as is")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile'd plain sigmoid")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ns = [1024, 4096] if args.quick else [int(x) for x in args.ns.split(",")]
    dims = [int(x) for x in args.dims.split(",")]
    dtypes = args.dtypes.split(",")
    causals = [c == "yes" for c in args.causal.split(",")]

    os.makedirs(args.out, exist_ok=True)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    meta = {"date": date, "commit": args.commit or git_commit(), "machine": machine(), "heads": args.heads,
            "command": "python3 bench/cpu_compare.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()), "gemm_n": args.gemm_n}
    meta["gemm_tflops"] = {name: gemm_tflops(DTYPES[name], args.gemm_n, args.reps) for name in dtypes}
    fns = methods(not args.no_compile)
    rows = []
    for dt in dtypes:
        for d in dims:
            for causal in causals:
                for n in ns:
                    res, check = run_shape(fns, DTYPES[dt], n, d, args.heads, causal, args.reps)
                    # The roof again next to each shape: on a shared machine it moves within a run.
                    roof = gemm_tflops(DTYPES[dt], args.gemm_n, args.reps)
                    rows.append({"dtype": dt, "D": d, "causal": causal, "N": n, "results": res,
                                 "rel_l2_vs_plain": check, "gemm_tflops": roof})
                    print(dt, d, causal, n, {k: v.get("fwd_tflops", v.get("error")) for k, v in res.items()},
                          flush=True)
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    stem = os.path.join(args.out, f"cpu-compare-{date}")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    write_markdown(stem + ".md", meta, rows, list(fns))
    print("wrote", stem + ".md")
    return stem


if __name__ == "__main__":
    main()
