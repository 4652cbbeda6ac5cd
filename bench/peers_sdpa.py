"""Peers of SPEC.md's benchmark, measured through PyTorch on the same shapes as
bench/cuda_fwd_bench.cpp: SDPA FLASH_ATTENTION (FlashAttention-2), SDPA CUDNN_ATTENTION,
a plain materialising sigmoid attention, and the cuBLAS bf16 8192^3 GEMM roof.
CUDA events, median of many repetitions after warm-up, rotating over several input sets.
TFLOP/s = 4*B*H*N*N*D / t, halved for causal.   usage: python3 bench/peers_sdpa.py [--quick]
"""
import math
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

REPS, SETS, WIDTH, TOKENS = 30, 3, 2048, 16384


def median_ms(fn, sets):
    for s in sets[:2]:
        fn(*s)
    times = []
    for r in range(REPS):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(*sets[r % len(sets)])
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def sdpa(backend, causal):
    def run(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return run


def plain_sigmoid(causal):
    def run(q, k, v):  # [B, H, N, D]
        n = q.shape[-2]
        s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1])) - math.log(n)
        if causal:
            s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        return torch.sigmoid(s) @ v
    return run


def main():
    quick = "--quick" in sys.argv
    dev = torch.cuda.get_device_name()
    print(f"# peers through PyTorch {torch.__version__}, {dev}, bf16, median of {REPS} reps")
    g = [torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    ms = median_ms(lambda a, b: a @ b, [(g[0], g[1]), (g[1], g[0])])
    print(f"cuBLAS bf16 8192^3 GEMM: {2 * 8192**3 / ms / 1e9:.1f} TFLOP/s")
    del g
    ns = [1024, 8192] if quick else [1024, 2048, 4096, 8192, 16384]
    print(f"{'D':>4} {'causal':>6} {'N':>6} {'flash':>8} {'cudnn':>8} {'plain':>8}")
    for D in (64, 128):
        for causal in (False, True):
            for N in ns:
                B, H = TOKENS // N, WIDTH // D
                sets = [tuple(torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                        for _ in range(SETS)]
                flops = 4 * B * H * N * N * D / (2 if causal else 1)
                row = []
                for fn in (sdpa(SDPBackend.FLASH_ATTENTION, causal), sdpa(SDPBackend.CUDNN_ATTENTION, causal),
                           plain_sigmoid(causal)):
                    try:
                        row.append(f"{flops / median_ms(fn, sets) / 1e9:8.1f}")
                    except (RuntimeError, torch.OutOfMemoryError) as e:
                        row.append(f"{'n/a':>8}")
                        print(f"  ({type(e).__name__}: {str(e).splitlines()[0][:100]})")
                    torch.cuda.empty_cache()
                print(f"{D:>4} {int(causal):>6} {N:>6} " + " ".join(row))
                del sets


if __name__ == "__main__":
    main()
