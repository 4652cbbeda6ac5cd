"""Decode benchmark: flashsigmoid's KV-cache attention against copy bandwidth, SDPA and FlashInfer.

Per shape (batch B, cache length N, heads Hq:Hkv, D, page size, Nq_new new query tokens), one
process, the same cache values for every method:
- flashsigmoid.sigmoid_attn_with_kvcache over a paged cache (pages in random order), attend only
  (no append), non-causal;
- PyTorch SDPA (softmax) on the same keys as a dense [B, Hkv, N, D] cache, q of length Nq_new,
  enable_gqa; on CUDA every backend that runs, the fastest reported;
- FlashInfer's paged decode (Nq_new = 1, CUDA) when flashinfer is importable, else a printed note.
Reported: time (median of --reps after --warmup; on CUDA, CUDA events around each call, all calls
queued behind a GPU sleep so host launch overhead is not timed), flashsigmoid's K/V read bandwidth
(bytes of K and V read / time) and its ratio to the bandwidth of a copy timed right before the shape
(a device-to-device copy on CUDA, a memcpy on the CPU; (bytes read + bytes written) / time: on a shared
host it moves by a third within minutes), and time ratios to the peers.
Small caches rotate over several cache sets so that the last-level cache is not what is timed.

  python3 bench/decode_bench.py [--device cpu|cuda] [--quick] [--out DIR] [--dtype bf16|fp16|fp32]
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
import torch.nn.functional as F

import flashsigmoid

GIB = 1024 ** 3


def first_line(e):
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:160] if lines else ''}"


class Timer:
    """Median milliseconds of a call: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, cuda, reps, warmup):
        self.cuda, self.reps, self.warmup = cuda, reps, warmup

    def __call__(self, calls):
        """calls: one callable per input set, used in rotation."""
        for i in range(self.warmup):
            calls[i % len(calls)]()
        if self.cuda:
            # Every call queued behind a GPU sleep, so that the events time the GPU work and not the
            # host's launch overhead (a decode step takes microseconds).
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
            torch.cuda.synchronize()
            torch.cuda._sleep(int(2e7))
            for i in range(self.reps):
                starts[i].record()
                calls[i % len(calls)]()
                ends[i].record()
            torch.cuda.synchronize()
            times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        else:
            times = []
            for i in range(self.reps):
                t0 = time.perf_counter()
                calls[i % len(calls)]()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times), times


def copy_bandwidth(timer, device, nbytes):
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms, times = timer([lambda: dst.copy_(src)])
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9, [2 * src.numel() * 4 / (t * 1e-3) / 1e9 for t in times]


def make_sets(shape, dtype, device, nsets):
    """Cache sets: paged k/v with random page order, the same keys dense for SDPA, q."""
    B, N, Hq, Hkv, D, ps, nq = shape
    pages_per_seq = -(-N // ps)
    sets = []
    for _ in range(nsets):
        num_pages = B * pages_per_seq
        perm = torch.randperm(num_pages, device=device).to(torch.int32)
        table = perm.view(B, pages_per_seq)
        kc = torch.randn(num_pages, ps, Hkv, D, device=device, dtype=dtype)
        vc = torch.randn_like(kc)
        # Dense [B, Hkv, N, D] copies of the same keys for SDPA.
        idx = table.long()
        kd = kc[idx].reshape(B, pages_per_seq * ps, Hkv, D)[:, :N].transpose(1, 2).contiguous()
        vd = vc[idx].reshape(B, pages_per_seq * ps, Hkv, D)[:, :N].transpose(1, 2).contiguous()
        q = torch.randn(B, nq, Hq, D, device=device, dtype=dtype)
        seqlens = torch.full((B,), N, dtype=torch.int32, device=device)  # attend over all N keys
        sets.append(dict(kc=kc, vc=vc, table=table, kd=kd, vd=vd, q=q, seqlens=seqlens))
    return sets


def run_flashsigmoid(s, splits):
    return flashsigmoid.sigmoid_attn_with_kvcache(s["q"], s["kc"], s["vc"], cache_seqlens=s["seqlens"],
                                                  block_table=s["table"], bias=-5.0, num_splits=splits)


def sdpa_backends(cuda):
    from torch.nn.attention import SDPBackend
    if not cuda:
        return [("default", None)]
    return [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
            ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)]


def time_sdpa(timer, sets, cuda):
    """Fastest SDPA backend that runs: (ms, name) or (None, error)."""
    from torch.nn.attention import sdpa_kernel
    best, errors = None, []
    for name, backend in sdpa_backends(cuda):
        def call(s, backend=backend):
            q = s["q"].transpose(1, 2)
            if backend is None:
                return F.scaled_dot_product_attention(q, s["kd"], s["vd"], enable_gqa=True)
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, s["kd"], s["vd"], enable_gqa=True)
        try:
            ms, _ = timer([lambda s=s: call(s) for s in sets])
        except Exception as e:  # noqa: BLE001 -- a backend that does not take this shape
            errors.append(f"{name}: {first_line(e)}")
            continue
        if best is None or ms < best[0]:
            best = (ms, name)
    return best if best else (None, "; ".join(errors))


def time_flashinfer(timer, sets, shape, dtype, cuda):
    B, N, Hq, Hkv, D, ps, nq = shape
    if not cuda:
        return None, "CPU run"
    if nq != 1:
        return None, "decode wrapper takes Nq_new = 1"
    try:
        import flashinfer
    except Exception as e:  # noqa: BLE001
        return None, f"not importable ({first_line(e)})"
    try:
        calls = []
        for s in sets:
            ws = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
            w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD")
            pages = s["table"].shape[1]
            indptr = torch.arange(B + 1, dtype=torch.int32, device="cuda") * pages
            last = torch.full((B,), N - (pages - 1) * ps, dtype=torch.int32, device="cuda")
            w.plan(indptr, s["table"].reshape(-1).contiguous(), last, Hq, Hkv, D, ps, data_type=dtype,
                   q_data_type=dtype)
            q = s["q"][:, 0].contiguous()
            calls.append(lambda w=w, q=q, s=s: w.run(q, (s["kc"], s["vc"])))
        ms, _ = timer(calls)
        return ms, f"flashinfer {getattr(flashinfer, '__version__', '?')}"
    except Exception as e:  # noqa: BLE001
        return None, first_line(e)


def shapes(args):
    if args.smoke:
        return [(1, 300, 8, 2, 128, 16, 1), (2, 300, 8, 2, 128, 256, 8)]
    if args.quick:
        batches, lengths = [1, 4], [1024, 32768]
    else:
        batches, lengths = [1, 8, 32, 128], [1024, 8192, 32768, 131072]
    # --batches / --lengths / --nq replace the set's values (a value outside it is timed, not dropped).
    batches, lengths, nqs = args.batches or batches, args.lengths or lengths, args.nq or [1, 8]
    out = []
    for hq, hkv in [(32, 8), (8, 1)]:
        for nq in nqs:
            for ps in [16, 256]:
                for B in batches:
                    for N in lengths:
                        out.append((B, N, hq, hkv, 128, ps, nq))
    return out


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def machine(cuda):
    if cuda:
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    flags = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    # The vector features that decide which CPU kernels run.
                    have = set(line.split(":", 1)[1].split())
                    flags = [x for x in ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16") if x in have]
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"
            + (f", CPU flags {' '.join(flags)}" if flags else "") + f", {huge_pages()}")


def huge_pages():
    """Whether large CPU tensors get transparent huge pages (they cut TLB misses on scattered pages)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            mode = f.read().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        mode = "unknown"
    return f"transparent huge pages '{mode}', THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}"


def fmt(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


def fmt_load(load):
    return "n/a" if load is None else ", ".join(f"{x:.2f}" for x in load)


def write_markdown(path, meta, rows):
    lines = [f"# Decode benchmark: {meta['machine']}", "",
             f"- date {meta['date']}, commit `{meta['commit']}`, torch {meta['torch']}, dtype {meta['dtype']}",
             f"- command: `{meta['command']}`",
             *([f"- note: {meta['note']}"] if meta.get("note") else []),
             f"- load average (1, 5, 15 min) at start {fmt_load(meta['load_start'])}, at end {fmt_load(meta['load_end'])}",
             f"- copy bandwidth (read + write, {meta['copy_gib']} GiB buffer): median {meta['copy_gbs']:.1f} GB/s, "
             f"range {meta['copy_min']:.1f}-{meta['copy_max']:.1f} over {meta['reps']} reps; "
             f"median {meta['copy_end']:.1f} GB/s again at the end; each row's % copy is against the copy timed right "
             "before that row (median of 5)",
             "- flashsigmoid: paged cache, attend only (no append), non-causal, bias -5, num_splits 0 "
             "(heuristic); K/V GB/s = bytes of K and V read / time; % copy = that / copy bandwidth",
             "- SDPA: softmax on the same keys as a dense cache, fastest backend that runs; "
             "FlashInfer: paged decode when importable", "",
             "| B | N | Hq:Hkv | page | Nq | flashsigmoid ms | K/V GB/s | copy GB/s | % copy | SDPA ms (backend) | "
             "SDPA / fs | FlashInfer ms | FlashInfer / fs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['B']} | {r['N']} | {r['Hq']}:{r['Hkv']} | {r['ps']} | {r['nq']} | skipped: "
                         f"{r['skipped']} | | | | | | | |")
            continue
        fs_ms, sd_ms, fi_ms = r["fs_ms"], r["sdpa_ms"], r["flashinfer_ms"]
        lines.append(
            f"| {r['B']} | {r['N']} | {r['Hq']}:{r['Hkv']} | {r['ps']} | {r['nq']} | {fmt(fs_ms)} | "
            f"{fmt(r['fs_gbs'], '.1f')} | {fmt(r['copy_gbs'], '.1f')} | {fmt(r['pct_copy'], '.0f')} | {fmt(sd_ms)} ({r['sdpa_note']}) | "
            f"{fmt(sd_ms / fs_ms if sd_ms and fs_ms else None, '.2f')} | {fmt(fi_ms)} | "
            f"{fmt(fi_ms / fs_ms if fi_ms and fs_ms else None, '.2f')} |")
    notes = sorted({r["flashinfer_note"] for r in rows if not r.get("skipped") and r["flashinfer_ms"] is None})
    if notes:
        lines += ["", "FlashInfer not timed: " + "; ".join(notes)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="B {1, 4}, N {1k, 32k}")
    p.add_argument("--smoke", action="store_true", help="two tiny shapes: a check of the plumbing (tests)")
    ints = lambda text: {int(x) for x in text.split(",")}  # noqa: E731
    p.add_argument("--batches", type=ints, default=None, help="these B (comma-separated), instead of the set's")
    p.add_argument("--lengths", type=ints, default=None, help="these cache lengths N, instead of the set's")
    p.add_argument("--nq", type=ints, default=None, help="these Nq_new, instead of 1 and 8")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--reps", type=int, default=None, help="timed calls per measurement (default 50 cuda, 10 cpu)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--budget-gb", type=float, default=None,
                   help="skip shapes whose caches (paged + dense) exceed this (default 48 cuda, 3 cpu)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--name", default=None, help="file stem (default decode-<device>-<date>[-quick])")
    p.add_argument("--commit", default=None, help="commit to record when git is not available")
    p.add_argument("--note", default=None, help="a line for the report (e.g. how flashsigmoid was built)")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    reps = args.reps or (50 if cuda else 10)
    budget = (args.budget_gb or (48.0 if cuda else 3.0)) * 1e9
    min_set_bytes = 512e6 if cuda else 128e6  # rotate small caches over sets of at least this much
    timer = Timer(cuda, reps, args.warmup)
    torch.manual_seed(0)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None

    copy_gib = 0.0625 if args.smoke else (1 if cuda else 0.5)
    copy_timer = Timer(cuda, 5, 1)
    copy_gbs, copy_all = copy_bandwidth(timer, args.device, int(copy_gib * GIB))
    print(f"copy bandwidth: {copy_gbs:.1f} GB/s (median; range {min(copy_all):.1f}-{max(copy_all):.1f})",
          flush=True)
    rows = []
    for shape in shapes(args):
        B, N, Hq, Hkv, D, ps, nq = shape
        kv_bytes = 2 * B * N * Hkv * D * torch.finfo(dtype).bits // 8
        row = dict(B=B, N=N, Hq=Hq, Hkv=Hkv, D=D, ps=ps, nq=nq, kv_bytes=kv_bytes)
        nsets = max(1, min(8, math.ceil(min_set_bytes / kv_bytes)))
        if 2 * kv_bytes * nsets > budget:
            row["skipped"] = f"caches {2 * kv_bytes * nsets / 1e9:.0f} GB over the budget"
            rows.append(row)
            print(f"B {B} N {N} {Hq}:{Hkv} page {ps} Nq {nq}: skipped ({row['skipped']})", flush=True)
            continue
        sets = make_sets(shape, dtype, args.device, nsets)
        # A copy right before each shape: the reference moves within minutes on a shared host.
        row["copy_gbs"], _ = copy_bandwidth(copy_timer, args.device, int(copy_gib * GIB))
        try:
            fs_ms, _ = timer([lambda s=s: run_flashsigmoid(s, 0) for s in sets])
        except Exception as e:  # noqa: BLE001
            fs_ms, row["fs_error"] = None, first_line(e)
        row["fs_ms"] = fs_ms
        row["fs_gbs"] = kv_bytes / (fs_ms * 1e-3) / 1e9 if fs_ms else None
        row["pct_copy"] = 100 * row["fs_gbs"] / row["copy_gbs"] if fs_ms else None
        row["sdpa_ms"], row["sdpa_note"] = time_sdpa(timer, sets, cuda)
        row["flashinfer_ms"], row["flashinfer_note"] = time_flashinfer(timer, sets, shape, dtype, cuda)
        rows.append(row)
        print(f"B {B} N {N} {Hq}:{Hkv} page {ps} Nq {nq}: flashsigmoid {fmt(fs_ms)} ms "
              f"({fmt(row['fs_gbs'], '.1f')} GB/s, {fmt(row['pct_copy'], '.0f')} % of copy {row['copy_gbs']:.1f}), SDPA {fmt(row['sdpa_ms'])} ms, "
              f"FlashInfer {fmt(row['flashinfer_ms'])} ms", flush=True)
        del sets
        if cuda:
            torch.cuda.empty_cache()

    # Again at the end: on a shared host the memory bandwidth moves with the neighbours' load.
    copy_end, _ = copy_bandwidth(timer, args.device, int(copy_gib * GIB))
    print(f"copy bandwidth at the end: {copy_end:.1f} GB/s", flush=True)
    date = datetime.date.today().isoformat()
    meta = dict(machine=machine(cuda), date=date, commit=args.commit or git_commit(), torch=torch.__version__, dtype=args.dtype,
                command="python3 " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (argv or sys.argv[1:])),
                note=args.note, copy_gbs=copy_gbs, copy_min=min(copy_all), copy_max=max(copy_all), copy_end=copy_end, copy_gib=copy_gib, reps=reps,
                load_start=load_start, load_end=os.getloadavg() if hasattr(os, "getloadavg") else None)
    os.makedirs(args.out, exist_ok=True)
    stem = args.name or f"decode-{args.device}-{date}" + ("-quick" if args.quick else "") + ("-smoke" if args.smoke else "")
    with open(os.path.join(args.out, stem + ".json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    write_markdown(os.path.join(args.out, stem + ".md"), meta, rows)
    print(f"wrote {os.path.join(args.out, stem)}.md/.json")


if __name__ == "__main__":
    main()
