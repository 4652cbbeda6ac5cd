#!/usr/bin/env python3
"""Context-parallel benchmark of flashsigmoid.distributed: W processes (mp.spawn), one GPU each (NCCL),
or CPU processes over Gloo for a quick check of the script itself.

For every global length N, causal flag and method (ring, ulysses) it times forward + backward
(median of --reps after --warmup, the slowest rank each repetition) of
  - W ranks on N tokens (N / W per rank),
  - one device on N tokens ("same total": the speed-up target compares these two),
  - one device on N / W tokens ("same per-device chunk"),
and, for the ring, the same ring with its transfers left out (compute only) and with its compute
left out (transfers only): the share of the transfer time hidden behind compute is
1 - max(0, full - compute only) / transfers only. Ulysses runs its all-to-alls between the compute
steps (nothing to hide behind): its breakdown is the all-to-all time and the local attention time.
FLOPs: forward 4 B Hq N^2 D (halved when causal), backward 2.5x that.

First, at the smallest N, out / dq / dk / dv of each method are checked against one device (exit
status 1 when over the dtype's bound). Writes cp_bench.md and cp_bench.json into the output folder
(its only required argument):
  python3 bench/cp_bench.py OUT_DIR                                  # 2 GPUs, N 64k..512k, D 128, bf16
  python3 bench/cp_bench.py OUT_DIR --device cpu --world 2 --n 256,512 --heads 2 --dim 32 --dtype fp32
"""

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output folder for cp_bench.md and cp_bench.json")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--world", type=int, default=2, help="ranks (GPUs)")
    p.add_argument("--n", default="65536,131072,262144,524288", help="global sequence lengths, comma-separated")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=16, help="query heads")
    p.add_argument("--kv-heads", type=int, default=0, help="kv heads (0: as many as query heads)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    p.add_argument("--methods", default="ring,ulysses")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--commit", default="", help="commit to name in the report")
    a = p.parse_args(argv)
    a.n = [int(x) for x in a.n.split(",") if x]
    a.methods = [m for m in a.methods.split(",") if m]
    a.kv_heads = a.kv_heads or a.heads
    bad = [m for m in a.methods if m not in ("ring", "ulysses")]
    if bad:
        p.error(f"--methods takes ring and/or ulysses, got {bad}")
    if a.world < 1:
        p.error("--world must be >= 1")
    for n in a.n:
        if n % (2 * a.world):
            p.error(f"--n {n} is not a multiple of 2 x world ({2 * a.world}): the zigzag layout needs that")
    if a.device == "cuda" and torch.cuda.device_count() < a.world:
        p.error(f"--world {a.world} needs {a.world} CUDA devices, found {torch.cuda.device_count()}")
    return a


def fwd_bwd_flops(a, n_tokens, causal):
    f = 4.0 * a.batch * a.heads * n_tokens * n_tokens * a.dim
    return 3.5 * (f / 2 if causal else f)


class Bench:
    def __init__(self, a, rank, group):
        self.a, self.rank, self.group = a, rank, group
        self.dev = torch.device("cuda", rank) if a.device == "cuda" else torch.device("cpu")
        self.dtype = DTYPES[a.dtype]

    def sync(self):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    def time(self, fn):
        """Median over reps of the slowest rank's time of fn(), in seconds."""
        for _ in range(self.a.warmup):
            fn()
        self.sync()
        times = []
        for _ in range(self.a.reps):
            dist.barrier(group=self.group)
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=self.comm_device())
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
            times.append(t.item())
        return statistics.median(times)

    def comm_device(self):
        return self.dev if dist.get_backend(self.group) == "nccl" else torch.device("cpu")

    def inputs(self, n_rows):
        a = self.a
        g = torch.Generator(device=self.dev).manual_seed(1234 + self.rank)
        mk = lambda h: torch.randn(a.batch, n_rows, h, a.dim, device=self.dev, dtype=self.dtype, generator=g)
        return mk(a.heads), mk(a.kv_heads), mk(a.kv_heads), mk(a.heads)

    def single(self, n_rows, causal):
        """One device, n_rows tokens (every rank runs its own copy at the same time)."""
        import flashsigmoid as fs

        q, k, v, dout = self.inputs(n_rows)
        q, k, v = (t.requires_grad_() for t in (q, k, v))

        def run():
            out = fs.sigmoid_attn(q, k, v, causal=causal)
            torch.autograd.grad(out, (q, k, v), dout)

        t = self.time(run)
        del q, k, v, dout
        return t

    def check(self, method, n_global, causal):
        """Largest relative L2 difference of out, dq, dk, dv between the W-rank run and one device."""
        import flashsigmoid as fs
        import flashsigmoid.distributed as fsd

        a = self.a
        g = torch.Generator(device=self.dev).manual_seed(99)  # the same full inputs on every rank
        mk = lambda h: torch.randn(a.batch, n_global, h, a.dim, device=self.dev, dtype=self.dtype, generator=g)
        q, k, v, dout = mk(a.heads), mk(a.kv_heads), mk(a.kv_heads), mk(a.heads)
        layout = "zigzag" if causal and method == "ring" else "contiguous"
        parts = [fsd.shard_sequence(t, self.group, layout).detach().clone().requires_grad_() for t in (q, k, v)]
        attn = fsd.ring_attn if method == "ring" else fsd.ulysses_attn
        out = attn(*parts, causal=causal, layout=layout, group=self.group)
        grads = torch.autograd.grad(out, parts, fsd.shard_sequence(dout, self.group, layout))
        got = [fsd.gather_sequence(t, self.group, layout) for t in (out.detach(), *grads)]
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        one = fs.sigmoid_attn(*leaves, causal=causal)
        ref = [one.detach(), *torch.autograd.grad(one, leaves, dout)]
        return max(((x.double() - y.double()).norm() / y.double().norm()).item() for x, y in zip(got, ref))

    def ring(self, n_global, causal):
        import flashsigmoid.distributed as fsd

        q, k, v, dout = self.inputs(n_global // self.a.world)
        layout = "zigzag" if causal else "contiguous"
        q, k, v = (t.requires_grad_() for t in (q, k, v))

        def full():
            out = fsd.ring_attn(q, k, v, causal=causal, layout=layout, group=self.group)
            torch.autograd.grad(out, (q, k, v), dout)

        cfg = fsd._prepare(q, k, v, None, None, self.group, layout, causal, None, (-1, -1))

        def part(comm, compute):
            def run():
                with torch.no_grad():
                    fsd._ring_forward(cfg, q, k, v, None, None, comm=comm, compute=compute)
                    fsd._ring_backward(cfg, dout, q, k, v, None, None, False, comm=comm, compute=compute)
            return run

        res = {"full": self.time(full), "compute": self.time(part(False, True)), "comm": self.time(part(True, False))}
        del q, k, v, dout
        return res

    def ulysses(self, n_global, causal):
        import flashsigmoid as fs
        import flashsigmoid.distributed as fsd

        W = self.a.world
        q, k, v, dout = self.inputs(n_global // W)
        q, k, v = (t.requires_grad_() for t in (q, k, v))

        def full():
            out = fsd.ulysses_attn(q, k, v, causal=causal, group=self.group)
            torch.autograd.grad(out, (q, k, v), dout)

        res = {"full": self.time(full)}
        cfg = fsd._prepare(q, k, v, None, None, self.group, "contiguous", causal, None, (-1, -1))
        rep = fsd._kv_repeat(self.a.heads, self.a.kv_heads, W)
        kr, vr = (k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)) if rep > 1 else (k, v)
        heads = [self.a.heads, kr.shape[2], vr.shape[2]]

        def comm():  # the four all-to-alls of forward + backward: q/k/v, out, dout, dq/dk/dv
            with torch.no_grad():
                loc = fsd._seq_to_heads(cfg, [q, kr, vr], None)
                fsd._heads_to_seq(cfg, [loc[0]], None)
                fsd._seq_to_heads(cfg, [dout], None)
                fsd._heads_to_seq(cfg, loc, None)

        res["comm"] = self.time(comm)
        ql, kl, vl = (torch.randn(self.a.batch, n_global, h // W, self.a.dim, device=self.dev, dtype=self.dtype)
                      .requires_grad_() for h in heads)
        dl = torch.randn_like(ql)

        def compute():
            out = fs.sigmoid_attn(ql, kl, vl, causal=causal)
            torch.autograd.grad(out, (ql, kl, vl), dl)

        res["compute"] = self.time(compute)
        del q, k, v, dout, ql, kl, vl, dl
        return res


def measure(a, group=None):
    """The checks and timings of this rank (a member of `group`, of a.world ranks); rank 0's are the result."""
    rank = dist.get_rank(group)
    b = Bench(a, rank, group)
    rows, checks = [], []
    for causal in {"both": [False, True], "yes": [True], "no": [False]}[a.causal]:
        for method in a.methods:
            if method == "ulysses" and a.heads % a.world:
                continue
            checks.append({"method": method, "causal": causal, "n": min(a.n),
                           "max_rel_l2": b.check(method, min(a.n), causal)})
    for causal in {"both": [False, True], "yes": [True], "no": [False]}[a.causal]:
        for n in a.n:
            one_total = b.single(n, causal)
            one_chunk = b.single(n // a.world, causal)
            for method in a.methods:
                if method == "ulysses" and a.heads % a.world:
                    continue
                r = b.ring(n, causal) if method == "ring" else b.ulysses(n, causal)
                rows.append({"method": method, "causal": causal, "n": n, "one_total_s": one_total,
                             "one_chunk_s": one_chunk, **{k + "_s": v for k, v in r.items()}})
                if rank == 0:
                    print(f"[cp_bench] {method} causal={causal} N={n}: {r['full'] * 1e3:.1f} ms on {a.world}, "
                          f"{one_total * 1e3:.1f} ms on 1", flush=True)
            if a.device == "cuda":
                torch.cuda.empty_cache()
    return rows, checks


def worker(rank, a, port, out_q):
    backend = "nccl" if a.device == "cuda" else "gloo"
    if a.device == "cuda":
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // a.world))
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=a.world)
    result = measure(a)
    if rank == 0:
        out_q.put(result)
    dist.barrier()
    dist.destroy_process_group()


def machine(a):
    if a.device == "cuda":
        names = {torch.cuda.get_device_name(i) for i in range(a.world)}
        return f"{a.world} x {', '.join(sorted(names))}, CUDA {torch.version.cuda}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}"
    return f"{a.world} CPU processes (Gloo) on {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def report(a, rows, checks, argv):
    W = a.world
    lines = [
        "# flashsigmoid context parallelism: forward + backward",
        "",
        f"- Machine: {machine(a)}. Date: {datetime.date.today().isoformat()}."
        + (f" Commit: `{a.commit}`." if a.commit else "") + f" PyTorch {torch.__version__}.",
        f"- Command: `python3 bench/cp_bench.py {' '.join(argv)}`",
        f"- Shape: batch {a.batch}, Hq {a.heads}, Hkv {a.kv_heads}, D {a.dim}, {a.dtype}; default bias -log(N).",
        f"- Method: median of {a.reps} repetitions after {a.warmup} warm-up, each the slowest rank's wall time "
        "(synchronised before and after); TFLOP/s = 3.5 x 4 B Hq N^2 D (halved when causal) / time / devices.",
        "- Speed-up: time on 1 device with all N tokens / time on W devices (target at N >= 128k: >= 1.85 on 2).",
        "- Hidden: share of the ring's transfer time that the full run does not add to its compute-only time.",
        "",
        f"| method | causal | N | 1 device, N: ms | 1 device, N/{W}: ms | {W} devices: ms | tokens/s, {W} devices | "
        f"TFLOP/s per device, {W} / 1 | speed-up | compute only: ms | transfers only: ms | hidden |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n, causal = r["n"], r["causal"]
        fl = fwd_bwd_flops(a, n, causal)
        tf_w = fl / r["full_s"] / W / 1e12
        tf_1 = fl / r["one_total_s"] / 1e12
        speed = r["one_total_s"] / r["full_s"]
        if r["method"] == "ring":
            hidden = 1.0 - max(0.0, r["full_s"] - r["compute_s"]) / r["comm_s"] if r["comm_s"] > 0 else 1.0
            hidden_s = f"{100 * min(max(hidden, 0.0), 1.0):.0f} %"
        else:
            hidden_s = "serial"
        r.update(tflops_per_device=tf_w, tflops_one=tf_1, speedup=speed)
        lines.append(
            f"| {r['method']} | {'yes' if causal else 'no'} | {n} | {r['one_total_s'] * 1e3:.1f} | "
            f"{r['one_chunk_s'] * 1e3:.1f} | {r['full_s'] * 1e3:.1f} | {a.batch * n / r['full_s']:.4g} | "
            f"{tf_w:.3g} / {tf_1:.3g} | {speed:.2f}x | {r['compute_s'] * 1e3:.1f} | {r['comm_s'] * 1e3:.1f} | {hidden_s} |")
    bound = {"bf16": 1e-2, "fp16": 2e-3, "fp32": 1e-5}[a.dtype]
    lines += ["", f"Check before timing: out, dq, dk, dv on {W} ranks against one device (largest relative L2; "
              f"bound {bound:g}):", "", "| method | causal | N | max rel L2 | |", "|---|---|---|---|---|"]
    for c in checks:
        ok = c["max_rel_l2"] <= bound
        lines.append(f"| {c['method']} | {'yes' if c['causal'] else 'no'} | {c['n']} | {c['max_rel_l2']:.2e} | "
                     f"{'ok' if ok else 'OVER THE BOUND'} |")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "cp_bench.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(a.out, "cp_bench.json"), "w") as f:
        json.dump({"args": {k: v for k, v in vars(a).items()}, "machine": machine(a), "rows": rows,
                   "checks": checks}, f, indent=1)
    print("\n".join(lines))
    return all(c["max_rel_l2"] <= bound for c in checks)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out_q = ctx.SimpleQueue()
    mp.start_processes(worker, args=(a, port, out_q), nprocs=a.world, start_method="spawn")
    rows, checks = out_q.get()
    return 0 if report(a, rows, checks, argv) else 1


if __name__ == "__main__":
    sys.exit(main())
