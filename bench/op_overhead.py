"""Host time per call of the KV-cache op, by layer: the public function, the registered op, the C++ call.

A decode step over a short cache is microseconds of work, so un-captured decode from Python is bound
by what the host spends per call. This times, on a tiny decode step (B 1, 16 cached keys, one
new token, paged cache), best of several rounds of back-to-back calls:
  public    flashsigmoid.sigmoid_attn_with_kvcache(...)   (plain eager: the implementation called directly)
  dispatch  the same with the direct call turned off (through the registered op, as under torch.compile,
            autocast, the profiler or a dispatch mode)
  op        torch.ops.flashsigmoid.fwd_kvcache.default(...)   (the dispatcher and the Python kernel)
  C++       flashsigmoid._C.forward_with_kvcache(...) on prepared descriptors (validation + kernel)
On CUDA the GPU work is queued asynchronously, so these are the host's costs (the stream is synced
between rounds only).

    python3 bench/op_overhead.py [--device cpu|cuda] [--calls N]
"""

import argparse
import platform
import time

import torch

import flashsigmoid as fs
from flashsigmoid import _C, _kvcache, _ops


def best_us(fn, calls, rounds, sync):
    for _ in range(min(calls, 200)):
        fn()
    sync()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
        sync()
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    B, Hq, Hkv, D, page = 1, 8, 1, 128, 16
    gen = torch.Generator().manual_seed(0)
    kc = torch.randn(4, page, Hkv, D, generator=gen).to(dev, torch.bfloat16)
    vc = torch.randn(4, page, Hkv, D, generator=gen).to(dev, torch.bfloat16)
    q = torch.randn(B, 1, Hq, D, generator=gen).to(dev, torch.bfloat16)
    seqlens = torch.tensor([16], dtype=torch.int32, device=dev)
    table = torch.tensor([[0, 1, 2, 3]], dtype=torch.int32, device=dev)
    op_args = (q, kc, vc, None, None, seqlens, table, None, False, None, _C.BIAS_SCALAR, -5.0, None, -1, -1,
               None, 0)
    out = torch.empty_like(q)
    views = [_ops._describe(t, "x") for t in (q, kc, vc, seqlens, table)]
    none = _C.Tensor()
    opts = _ops._options(q, None, None, 0, 0, False, None, _C.BIAS_SCALAR, -5.0, None, -1, -1, None)
    out_view = _ops._describe(out, "out")

    public = lambda: fs.sigmoid_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, block_table=table, bias=-5.0)
    layers = {
        "public": public,
        "dispatch": public,
        "op": lambda: torch.ops.flashsigmoid.fwd_kvcache.default(*op_args),
        "C++": lambda: _C.forward_with_kvcache(*views[:4], views[4], none, none, none, out_view, opts, 0),
    }
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {args.device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"B {B}, 16 keys, {Hq}:{Hkv}, D {D}, bf16, page {page}; best of {args.rounds} x {args.calls} calls")
    direct = _kvcache._direct_call_ok
    for layer, fn in layers.items():
        _kvcache._direct_call_ok = (lambda tensors: False) if layer == "dispatch" else direct
        try:
            print(f"  {layer:8s} {best_us(fn, args.calls, args.rounds, sync):7.2f} us per call")
        finally:
            _kvcache._direct_call_ok = direct


if __name__ == "__main__":
    main()
