"""One-process benchmark of flashsigmoid against the peers of SPEC.md, on the same inputs.

Methods: flashsigmoid.sigmoid_attn; PyTorch SDPA with SDPBackend.FLASH_ATTENTION (FlashAttention-2)
and CUDNN_ATTENTION; triton-sigmoid when importable; a plain materialising sigmoid attention in
PyTorch; plus the cuBLAS bf16 8192^3 GEMM roof. Forward and backward, bf16, B*N = 16384, Hq*D = 2048,
N in {1k..16k}, D in --dims, causal and not, plus GQA 32:8 at D 128.

Method: every input set is [B, N, H, D] (flashsigmoid's layout); SDPA and the plain path get
transposed views of the same tensors. CUDA events around each call, all calls of a measurement
queued back to back behind a short GPU sleep (so host launch latency is not timed), median of
--reps after --warmup calls, rotating over --sets input sets (each set is larger than L2).
Backward = torch.autograd.grad(out, (q, k, v), dout, retain_graph=True) on a graph whose forward
ran once, outside the timed region. TFLOP/s: forward 4*B*Hq*Nq*Nk*D, halved for causal;
backward 2.5x that. A method that raises is reported as n/a with its error's first line.

  python3 bench/harness.py [--quick] [--dims 64,128[,256]] [--reps R] [--out DIR] [--device cuda|cpu]
  --device cpu: tiny shapes, a dry run of all the plumbing (numbers mean nothing).
"""
import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

try:
    import flashsigmoid
    FS_ERROR = None
except Exception as e:  # noqa: BLE001 -- reported per cell
    flashsigmoid, FS_ERROR = None, e

METHODS = ["flashsigmoid", "sdpa_flash", "sdpa_cudnn", "triton_sigmoid", "plain_sigmoid"]
LABELS = {"flashsigmoid": "flashsigmoid", "sdpa_flash": "SDPA flash (FA2)", "sdpa_cudnn": "SDPA cuDNN",
          "triton_sigmoid": "triton-sigmoid", "plain_sigmoid": "plain sigmoid (PyTorch)"}
TRITON_MODULES = ["triton_sigmoid", "triton_sigmoid_attention", "tritonsigmoid"]


def first_line(e):
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def find_triton_sigmoid():
    tried = []
    for name in TRITON_MODULES:
        try:
            mod = __import__(name)
            return getattr(mod, "sigmoid_attention"), name
        except Exception as e:  # noqa: BLE001
            tried.append(f"{name} ({type(e).__name__})")
    return None, "not installed (tried " + ", ".join(tried) + ")"


TRITON_FN, TRITON_INFO = find_triton_sigmoid()


def prune_triton_configs():
    """Keeps the autotune configs with BLOCK_M, BLOCK_N >= 64 in triton-sigmoid's kernels (each
    config costs a compile per shape); returns a note for the report."""
    import sys
    kept = []
    for modname, mod in list(sys.modules.items()):
        if not modname.startswith(TRITON_INFO) or mod is None:
            continue
        for attr in dir(mod):
            tuner = getattr(mod, attr, None)
            configs = getattr(tuner, "configs", None)
            if not isinstance(configs, list) or not configs or not hasattr(configs[0], "kwargs"):
                continue
            large = [c for c in configs if all(v >= 64 for k, v in c.kwargs.items() if k.startswith("BLOCK_"))]
            if large and len(large) < len(configs):
                tuner.configs = large
                kept.append(f"{attr} {len(large)}/{len(configs)}")
    return "autotune configs with BLOCK_* >= 64 only: " + (", ".join(sorted(set(kept))) or "none pruned")


# ----------------------------------------------------------------------------- methods
# Each method: fn(q, k, v) -> out with q [B, Nq, Hq, D], k/v [B, Nk, Hkv, D]; causal is bound.

def m_flashsigmoid(causal):
    if flashsigmoid is None:
        raise RuntimeError(f"flashsigmoid import failed: {first_line(FS_ERROR)}")
    return lambda q, k, v: flashsigmoid.sigmoid_attn(q, k, v, causal=causal)


def m_sdpa(backend):
    def make(causal):
        def run(q, k, v):
            gqa = k.shape[2] != q.shape[2]
            with sdpa_kernel(backend):
                o = torch.nn.functional.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, enable_gqa=gqa)
            return o.transpose(1, 2)
        return run
    return make


def m_triton(causal):
    if TRITON_FN is None:
        raise RuntimeError(TRITON_INFO)
    return lambda q, k, v: TRITON_FN(q, k, v, is_causal=causal)


def m_plain(causal):
    """S = q k^T / sqrt(D) - log(Nk), masked, P = sigmoid(S), O = P v; the N x N matrix is materialised
    (in place where autograd allows, so one Nq x Nk buffer per call). GQA by broadcasting, no copies."""
    masks = {}

    def run(q, k, v):
        b, nq, hq, d = q.shape
        nk, hkv = k.shape[1], k.shape[2]
        qh = q.transpose(1, 2).reshape(b, hkv, hq // hkv, nq, d)
        kh, vh = k.transpose(1, 2).unsqueeze(2), v.transpose(1, 2).unsqueeze(2)
        s = torch.matmul(qh, kh.transpose(-1, -2))
        s.mul_(1.0 / math.sqrt(d)).sub_(math.log(nk))
        if causal:
            key = (nq, nk, q.device)
            if key not in masks:
                masks[key] = torch.ones(nq, nk, dtype=torch.bool, device=q.device).triu(nk - nq + 1)
            s.masked_fill_(masks[key], float("-inf"))
        o = torch.matmul(s.sigmoid_(), vh)
        return o.reshape(b, hq, nq, d).transpose(1, 2)
    return run


MAKERS = {"flashsigmoid": m_flashsigmoid, "sdpa_flash": m_sdpa(SDPBackend.FLASH_ATTENTION),
          "sdpa_cudnn": m_sdpa(SDPBackend.CUDNN_ATTENTION), "triton_sigmoid": m_triton,
          "plain_sigmoid": m_plain}


class Skip(Exception):
    pass


# ----------------------------------------------------------------------------- timing

def median_ms(call, nsets, reps, warmup, cuda):
    for i in range(warmup):
        call(i % nsets)
    times = []
    if cuda:
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        if hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(20_000_000)  # ~10 ms: the host queues the calls ahead of the GPU
        for r, (a, b) in enumerate(events):
            a.record()
            call(r % nsets)
            b.record()
        torch.cuda.synchronize()
        times = [a.elapsed_time(b) for a, b in events]
    else:
        for r in range(reps):
            t0 = time.perf_counter()
            call(r % nsets)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(name, shape, sets, douts, direction, args, cuda):
    """Returns (ms, results on set 0: (out,) forward, (dq, dk, dv) backward) for the accuracy check."""
    causal = shape["causal"]
    if name == "plain_sigmoid":  # one bf16 Nq x Nk matrix per call, + one per retained graph in backward
        mat = shape["B"] * shape["Hq"] * shape["N"] ** 2 * 2 / 2**30
        need = mat * (2 if direction == "fwd" else len(sets) + 3)
        if need > args.plain_budget_gb:
            raise Skip(f"skipped: needs ~{need:.0f} GiB > --plain-budget-gb {args.plain_budget_gb:g}")
    if (name == "triton_sigmoid" and args.triton_ns != "all"
            and shape["N"] not in {int(n) for n in args.triton_ns.split(",")}):
        raise Skip(f"skipped: --triton-ns {args.triton_ns} (its autotuning takes minutes per shape)")
    fn = MAKERS[name](causal)
    if name == "triton_sigmoid" and shape["Hkv"] != shape["Hq"]:  # no GQA there: expand kv, untimed
        g = shape["Hq"] // shape["Hkv"]
        sets = [(q, k.repeat_interleave(g, 2), v.repeat_interleave(g, 2)) for q, k, v in sets]
    if direction == "fwd":
        ms = median_ms(lambda i: fn(*sets[i]), len(sets), args.reps, args.warmup, cuda)
        return ms, (fn(*sets[0]),)
    graphs = []
    for (q, k, v), dout in zip(sets, douts):
        leaves = tuple(t.detach().requires_grad_() for t in (q, k, v))
        graphs.append((fn(*leaves), leaves, dout))
    ms = median_ms(lambda i: torch.autograd.grad(graphs[i][0], graphs[i][1], graphs[i][2], retain_graph=True),
                   len(graphs), args.reps, args.warmup, cuda)
    return ms, torch.autograd.grad(*graphs[0])


def gemm_roof(n, reps, warmup, device, cuda):
    a = [torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2)]
    ms = median_ms(lambda i: a[i] @ a[1 - i], 2, reps, warmup, cuda)
    return 2 * n**3 / ms / 1e9


# ----------------------------------------------------------------------------- run

def shapes_for(args):
    cpu = args.device == "cpu"
    tokens, width = (128, 128) if cpu else (16384, 2048)
    ns = ([32, 64] if cpu else [1024, 8192]) if args.quick else ([32, 64, 128] if cpu else
                                                                 [1024, 2048, 4096, 8192, 16384])
    out = [dict(D=d, causal=c, N=n, B=tokens // n, Hq=max(1, width // d), Hkv=max(1, width // d))
           for d in args.dims for c in (False, True) for n in ns]
    if not args.no_gqa:
        hq, hkv, d = (4, 2, 32) if cpu else (32, 8, 128)
        out += [dict(D=d, causal=c, N=n, B=tokens // n, Hq=hq, Hkv=hkv) for c in (False, True) for n in ns]
    return out


def run_shape(shape, args, device, cuda, log):
    gen = torch.Generator(device=device).manual_seed(shape["N"] * 131 + shape["D"])
    B, N, Hq, Hkv, D = shape["B"], shape["N"], shape["Hq"], shape["Hkv"], shape["D"]
    sets = [tuple(torch.randn(B, N, h, D, device=device, dtype=torch.bfloat16, generator=gen)
                  for h in (Hq, Hkv, Hkv)) for _ in range(args.sets)]
    douts = [torch.randn(B, N, Hq, D, device=device, dtype=torch.bfloat16, generator=gen) for _ in sets]
    flops = 4 * B * Hq * N * N * D / (2 if shape["causal"] else 1)
    row = dict(shape, gqa=Hq != Hkv, flops_fwd=flops, flops_bwd=2.5 * flops, fwd={}, bwd={},
               rel_err_vs_plain={"fwd": {}, "bwd": {}})
    for direction in ("fwd", "bwd"):
        results = {}
        for name in METHODS:
            try:
                ms, results[name] = measure(name, shape, sets, douts, direction, args, cuda)
                row[direction][name] = dict(ms=ms, tflops=row[f"flops_{direction}"] / ms / 1e9)
            except Exception as e:  # noqa: BLE001 -- n/a, never a crash
                msg = str(e) if isinstance(e, Skip) else first_line(e)
                if name == "triton_sigmoid" and TRITON_FN is None:
                    msg = "not installed"
                row[direction][name] = dict(ms=None, tflops=None, error=msg)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
        # max |x - plain| / max |plain| on input set 0, for out or each of dq, dk, dv (where the shapes match)
        ref = results.pop("plain_sigmoid", None)
        for name, res in results.items():
            if ref is not None and not name.startswith("sdpa"):
                row["rel_err_vs_plain"][direction][name] = max(
                    ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()
                    for a, b in zip(res, ref) if a.shape == b.shape)
        del results, ref
    cells = "  ".join(d + ": " + " ".join(f"{n}={fmt(row[d][n]['tflops'])}" for n in METHODS
                                          if n != "triton_sigmoid" or TRITON_FN) for d in ("fwd", "bwd"))
    log(f"D={D} causal={int(shape['causal'])} N={N} B={B} H={Hq}:{Hkv}  {cells}")
    return row


def git_commit(args):
    if args.commit:
        return args.commit
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown (no git; pass --commit)"


# ----------------------------------------------------------------------------- outputs

def fmt(x):
    return "n/a" if x is None else f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def write_markdown(path, meta, rows):
    notes = {}

    def cell(r, d, n):
        c = r[d][n]
        if c["tflops"] is not None:
            return fmt(c["tflops"])
        if c["error"] == "not installed":
            return "—"
        return f"n/a [{notes.setdefault(c['error'], len(notes) + 1)}]"

    def ratio(r, d, peer):
        a, b = r[d]["flashsigmoid"]["tflops"], r[d][peer]["tflops"]
        return f"{a / b:.2f}×" if a and b else "n/a"

    lines = [f"# flashsigmoid vs peers, {meta['card']}, {meta['date']}", "",
             f"- Card: {meta['card']}. Date: {meta['date']}. Commit: `{meta['commit']}`. "
             f"PyTorch {meta['torch']} (CUDA {meta['torch_cuda']}). flashsigmoid {meta['flashsigmoid']}.",
             f"- Command: `{meta['command']}`",
             f"- Method: {meta['method']}",
             f"- cuBLAS bf16 {meta['gemm_n']}³ GEMM in this run: {fmt(meta['gemm_tflops'])} TFLOP/s.",
             f"- triton-sigmoid: {meta['triton_sigmoid']}.", ""]
    for d, title in (("fwd", "Forward"), ("bwd", "Backward")):
        lines += [f"## {title} (TFLOP/s)", "",
                  "| D | causal | N | B | Hq:Hkv | flashsigmoid | SDPA flash (FA2) | ratio to FA2 | SDPA cuDNN "
                  "| ratio to cuDNN | triton-sigmoid | plain sigmoid |", "|" + "---|" * 12]
        for r in rows:
            lines.append(f"| {r['D']} | {'yes' if r['causal'] else 'no'} | {r['N']} | {r['B']} | {r['Hq']}:{r['Hkv']} "
                         f"| {cell(r, d, 'flashsigmoid')} | {cell(r, d, 'sdpa_flash')} | {ratio(r, d, 'sdpa_flash')} "
                         f"| {cell(r, d, 'sdpa_cudnn')} | {ratio(r, d, 'sdpa_cudnn')} | {cell(r, d, 'triton_sigmoid')} "
                         f"| {cell(r, d, 'plain_sigmoid')} |")
        lines.append("")
    if notes:
        lines += ["n/a:", ""] + [f"{i}. {m}" for m, i in notes.items()] + [""]
    worst = {}
    for r in rows:
        for d, errs in r["rel_err_vs_plain"].items():
            for n, v in errs.items():
                worst[(n, d)] = max(worst.get((n, d), 0.0), v)
    if worst:
        lines.append("Check against the plain path (input set 0; max |x − plain| / max |plain| over out, or over "
                     "dq, dk, dv; largest over the rows): "
                     + ", ".join(f"{n} {d} {v:.2g}" for (n, d), v in worst.items()) + ".")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_plot(path, meta, rows, dims):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        return f"no plot: {first_line(e)}"
    mha = [r for r in rows if not r["gqa"]]
    fig, axes = plt.subplots(2 * len(dims), 2, figsize=(11, 3.6 * 2 * len(dims)), squeeze=False)
    for i, d in enumerate(dims):
        for j, direction in enumerate(("fwd", "bwd")):
            for c, causal in enumerate((False, True)):
                ax = axes[2 * i + j][c]
                sel = [r for r in mha if r["D"] == d and r["causal"] == causal]
                for name in METHODS:
                    pts = [(r["N"], r[direction][name]["tflops"]) for r in sel if r[direction][name]["tflops"]]
                    if pts:
                        ax.plot(*zip(*pts), marker="o", label=LABELS[name])
                if meta["gemm_tflops"]:
                    ax.axhline(meta["gemm_tflops"], ls="--", c="gray", lw=0.8, label="cuBLAS GEMM roof")
                ax.set_xscale("log", base=2)
                ax.set_xticks(sorted({r["N"] for r in sel}), [str(n) for n in sorted({r["N"] for r in sel})])
                ax.set_title(f"D {d}, {'causal' if causal else 'non-causal'}, {direction}")
                ax.set_xlabel("N")
                ax.set_ylabel("TFLOP/s")
                ax.set_ylim(bottom=0)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
    fig.suptitle(f"{meta['card']}, bf16, B·N={meta['tokens']}, Hq·D={meta['width']}, {meta['date']}, {meta['commit']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N in {1024, 8192} and fewer reps")
    p.add_argument("--dims", default="64,128", help="head dims, e.g. 64,128,256")
    p.add_argument("--reps", type=int, default=None, help="timed reps per measurement (default 30, quick 10)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--sets", type=int, default=3, help="rotating input sets")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--name", default=None, help="file stem (default <card>-bench-<date>[-quick])")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--commit", default=None, help="commit to record when git is not available")
    p.add_argument("--no-gqa", action="store_true", help="skip the GQA 32:8 rows")
    p.add_argument("--triton-ns", default="8192",
                   help="N values at which triton-sigmoid runs ('all' for every N): each new (D, N, causal) "
                        "autotunes its Triton kernels for minutes")
    p.add_argument("--triton-configs", default="large", choices=["large", "all"],
                   help="triton-sigmoid autotune configs: 'large' keeps BLOCK_M, BLOCK_N >= 64 (the tiles that "
                        "win at N >= 1k), 'all' its full lists")
    p.add_argument("--plain-budget-gb", type=float, default=48.0, help="skip the plain path above this estimate")
    args = p.parse_args(argv)
    args.dims = [int(d) for d in args.dims.split(",")]
    if args.triton_ns != "all" and not all(n.strip().isdigit() for n in args.triton_ns.split(",")):
        p.error(f"--triton-ns is '{args.triton_ns}'; accepted: 'all' or comma-separated sequence lengths, "
                "e.g. 2048,8192")
    args.reps = args.reps or (10 if args.quick else 30)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("harness: --device cuda but torch.cuda.is_available() is False (use --device cpu for a dry run)")
    log = lambda s: print(s, flush=True)  # noqa: E731
    if cuda:
        prop = torch.cuda.get_device_properties(0)
        card = f"{prop.name} ({prop.multi_processor_count} SMs)"
    else:
        card = f"CPU {platform.processor() or platform.machine()} (dry run)"
    date = datetime.date.today().isoformat()
    meta = dict(card=card, date=date, commit=git_commit(args), torch=torch.__version__, torch_cuda=torch.version.cuda,
                flashsigmoid=getattr(flashsigmoid, "__version__", f"not importable: {first_line(FS_ERROR)}"),
                command=shlex.join([os.path.basename(sys.executable)] + sys.argv) if argv is None
                else shlex.join(["python3", "bench/harness.py"] + list(argv)),
                device=args.device, dtype="bfloat16", reps=args.reps, warmup=args.warmup, sets=args.sets,
                tokens=128 if not cuda else 16384, width=128 if not cuda else 2048,
                triton_sigmoid=TRITON_INFO if TRITON_FN is None else f"module {TRITON_INFO}",
                method=(f"bf16; {'CUDA events' if cuda else 'perf_counter'}, median of {args.reps} reps after "
                        f"{args.warmup} warm-up calls, {args.sets} rotating input sets; TFLOP/s forward "
                        "4·B·Hq·Nq·Nk·D (halved for causal), backward 2.5× that; backward timed alone as "
                        "torch.autograd.grad(out, (q, k, v), dout) after an untimed forward; SDPA and the plain "
                        "path take transposed views of the [B, N, H, D] inputs; triton-sigmoid gets kv heads "
                        f"expanded (untimed) for GQA; plain path skipped above {args.plain_budget_gb:g} GiB"))
    if TRITON_FN is not None:
        if args.triton_configs == "large":
            meta["triton_sigmoid"] += "; " + prune_triton_configs()
        meta["triton_sigmoid"] += f"; run at N in {args.triton_ns}"
    log(f"# {card}, torch {torch.__version__}, commit {meta['commit']}, flashsigmoid {meta['flashsigmoid']}, "
        f"triton-sigmoid: {meta['triton_sigmoid']}")
    meta["gemm_n"] = 256 if not cuda else 8192
    try:
        meta["gemm_tflops"] = gemm_roof(meta["gemm_n"], args.reps, args.warmup, args.device, cuda)
    except Exception as e:  # noqa: BLE001
        meta["gemm_tflops"], meta["gemm_error"] = None, first_line(e)
    log(f"cuBLAS bf16 {meta['gemm_n']}^3 GEMM: {fmt(meta['gemm_tflops'])} TFLOP/s")
    if cuda:
        torch.cuda.empty_cache()
    rows = [run_shape(s, args, args.device, cuda, log) for s in shapes_for(args)]
    os.makedirs(args.out, exist_ok=True)
    stem = args.name or ("-".join((card.split(" (")[0].lower().replace("nvidia ", "").replace(" ", "-")
                                   if cuda else "cpu-dryrun", "bench", date)) + ("-quick" if args.quick else ""))
    paths = {ext: os.path.join(args.out, f"{stem}.{ext}") for ext in ("md", "json", "png")}
    plot_note = write_plot(paths["png"], meta, rows, args.dims)
    meta["plot"] = None if plot_note else os.path.basename(paths["png"])
    if plot_note:
        meta["plot_error"] = plot_note
    write_markdown(paths["md"], meta, rows)
    with open(paths["json"], "w") as f:
        json.dump(dict(meta=meta, methods=METHODS, rows=rows), f, indent=1)
    for ext, path in paths.items():
        if ext != "png" or not plot_note:
            log(f"wrote {path}")
    if plot_note:
        log(plot_note)
    return paths


if __name__ == "__main__":
    main()
