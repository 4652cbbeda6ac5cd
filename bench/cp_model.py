#!/usr/bin/env python3
"""The paper scaling model of docs/context_parallel.md: per ring step, compute time from measured
single-GPU kernel rates against transfer time from assumed link bandwidths. Prints the tables.

  python3 bench/cp_model.py                 # the document's tables (Markdown)
  python3 bench/cp_model.py --heads 32 --kv-heads 8
"""

import argparse

# Measured (bench/results/h200-bench-2026-11-29e.md, H200, bf16, D 128, Hq:Hkv 16:16, N 16384):
# flashsigmoid forward 731.0 TFLOP/s non-causal, 754.1 causal; backward 466.8 / 474.3.
RATE_FWD = 731.0e12
RATE_BWD = 466.8e12
# Assumed (not measured here) achieved one-direction point-to-point bandwidths per GPU.
BW_NVLINK = 350e9  # NVLink 4 (H200 HGX): 450 GB/s per direction nominal
BW_IB = 40e9  # one 400 Gb/s NDR InfiniBand NIC per GPU: 50 GB/s nominal
GPUS_PER_NODE = 8


def step(n, heads, kv_heads, dim, causal, bw):
    """(forward compute, forward transfer, backward compute, backward transfer) of one ring step, s."""
    flops = 4.0 * heads * n * n * dim * (0.5 if causal else 1.0)  # zigzag: every step half a block
    kv_bytes = 2 * n * kv_heads * dim * 2  # K and V, bf16
    dkv_bytes = 2 * n * kv_heads * dim * 4  # dK and dV accumulators, fp32
    return flops / RATE_FWD, kv_bytes / bw, 2.5 * flops / RATE_BWD, (kv_bytes + dkv_bytes) / bw


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=16)
    p.add_argument("--dim", type=int, default=128)
    a = p.parse_args()
    worlds = [2, 4, 8, 16, 32, 64]
    lengths = [2**17, 2**18, 2**19, 2**20, 2**21, 2**22]
    for causal in (False, True):
        print(f"\n{'causal' if causal else 'non-causal'}: compute / transfer per ring step, forward | backward "
              f"(> 1: the transfer hides; link: NVLink up to {GPUS_PER_NODE} GPUs, InfiniBand beyond)\n")
        print("| N \\ GPUs | " + " | ".join(str(w) for w in worlds) + " |")
        print("|---|" + "---|" * len(worlds))
        for n_total in lengths:
            cells = []
            for w in worlds:
                bw = BW_NVLINK if w <= GPUS_PER_NODE else BW_IB
                f, fc, b, bc = step(n_total // w, a.heads, a.kv_heads, a.dim, causal, bw)
                cells.append(f"{f / fc:.1f} \\| {b / bc:.1f}")
            print(f"| {n_total // 1024}k | " + " | ".join(cells) + " |")
    print("\nper-GPU chunk n at which a step's transfer equals its compute (forward | backward):\n")
    for name, bw in (("NVLink", BW_NVLINK), ("InfiniBand", BW_IB)):
        for causal in (False, True):
            g = a.heads / a.kv_heads
            half = 0.5 if causal else 1.0
            n_f = RATE_FWD / bw / g / half  # 4 H n^2 D / R = 4 n Hkv D / bw
            n_b = 1.2 * RATE_BWD / bw / g / half  # 10 H n^2 D / R = 12 n Hkv D / bw
            print(f"- {name}, {'causal' if causal else 'non-causal'}: {n_f:.0f} | {n_b:.0f} tokens")
    print("\nstep time (forward + backward compute, ms) and exposed transfer of the last backward step:\n")
    for n_total, w in ((2**17, 2), (2**19, 2), (2**20, 8), (2**22, 64)):
        bw = BW_NVLINK if w <= GPUS_PER_NODE else BW_IB
        f, fc, b, bc = step(n_total // w, a.heads, a.kv_heads, a.dim, False, bw)
        print(f"- N {n_total // 1024}k on {w}: step {1e3 * (f + b):.2f} ms, {w} steps {1e3 * w * (f + b):.1f} ms; "
              f"last dK/dV transfer {1e3 * bc * 2 / 3:.2f} ms ({100 * (bc * 2 / 3) / (w * (f + b)):.2f} % of the run)")


if __name__ == "__main__":
    main()
