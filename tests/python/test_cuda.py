"""CUDA tensors: bf16/fp16 values and gradients against the float64 reference (SPEC bounds).

Skipped without a GPU. On a GPU machine these go through the C++ CUDA backend;
Python does nothing special for CUDA beyond passing the current stream.
"""

import pytest
import torch

import flashsigmoid as fs
from helpers import BOUNDS, Case, check_dense, check_varlen
from sigmoid_ref import attn_dense, rel_l2

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no GPU: torch.cuda.is_available() is False")

DTYPES = [torch.bfloat16, torch.float16]
DTYPE_IDS = ["bf16", "fp16"]

C = Case
CASES = [
    C(id="D64", B=2, Nq=256, Nk=256, Hq=4, Hkv=4, D=64),
    C(id="D128-odd", B=1, Nq=333, Nk=333, Hq=2, Hkv=2, D=128),
    C(id="D128-causal-Nq<Nk", B=2, Nq=100, Nk=300, Hq=4, Hkv=2, D=128, causal=True),
    C(id="D64-causal-Nq>Nk", B=1, Nq=200, Nk=70, Hq=2, Hkv=1, D=64, causal=True),
    C(id="D64-window-alibi", B=2, Nq=190, Nk=190, Hq=4, Hkv=4, D=64, window=(40, 7), alibi="batch"),
    C(id="D128-gqa-head-bias", B=2, Nq=160, Nk=160, Hq=8, Hkv=2, D=128, bias="head", alibi="head"),
    C(id="D64-scalar-bias", B=1, Nq=129, Nk=257, Hq=2, Hkv=2, D=64, bias="scalar", scale=0.1),
    C(id="D32", B=1, Nq=77, Nk=77, Hq=2, Hkv=2, D=32, causal=True),
    C(id="D96", B=1, Nq=77, Nk=91, Hq=2, Hkv=2, D=96),
    C(id="D256", B=1, Nq=65, Nk=130, Hq=2, Hkv=1, D=256, causal=True),
    C(id="D128-bhnd-layout", B=2, Nq=128, Nk=128, Hq=4, Hkv=4, D=128, layout="bhnd"),
]


def test_cuda_backend_present():
    assert fs.cuda_available(), (
        "a GPU is visible but flashsigmoid was built without its CUDA backend "
        "(FLASHSIGMOID_CUDA=OFF or no nvcc at build time)")


def skip_unbuilt(D):
    built = fs.cuda_head_dims()
    if D not in built:
        pytest.skip(f"head dim {D} is not built in this package (built: {built}; "
                    "FLASHSIGMOID_HEAD_DIMS at build time)")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_dense_forward(case, dtype):
    skip_unbuilt(case.D)
    check_dense(case, dtype, device="cuda", grads=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_dense_backward(case, dtype):
    skip_unbuilt(case.D)
    check_dense(case, dtype, device="cuda")


def test_cuda_head_dims_listed():
    built = fs.cuda_head_dims()
    assert built, "the CUDA backend is present but lists no head dims"
    assert set(built) <= set(fs.SUPPORTED_HEAD_DIMS), built


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("grads", [False, True], ids=["forward", "backward"])
def test_cuda_varlen(dtype, grads):
    check_varlen([130, 0, 64, 1, 200], [100, 7, 0, 33, 200], dtype, Hq=4, Hkv=2, D=128, device="cuda",
                 causal=True, alibi="batch", grads=grads)
    check_varlen([50, 90], [90, 50], dtype, Hq=2, Hkv=2, D=64, device="cuda", bias="head", window=(16, -1),
                 grads=grads)


def test_cuda_side_stream():
    """The op runs on the current stream (a side stream here) and the result is ordered after it."""
    q, k, v = (torch.randn(2, 300, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out = fs.sigmoid_attn(q, k, v, causal=True)
        out2 = out * 1.0  # ordered on the same stream
    torch.cuda.current_stream().wait_stream(s)
    ref = attn_dense(q.double().cpu(), k.double().cpu(), v.double().cpu(), causal=True)
    assert rel_l2(out2.cpu(), ref) <= BOUNDS[torch.bfloat16]


def test_cuda_compile():
    q, k, v = (torch.randn(1, 128, 2, 64, device="cuda", dtype=torch.float16, requires_grad=True)
               for _ in range(3))
    f = torch.compile(lambda q, k, v: fs.sigmoid_attn(q, k, v, causal=True).float().sum(),
                      backend="aot_eager", fullgraph=True)
    f(q, k, v).backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_cuda_rejects_fp32():
    q = torch.randn(1, 8, 2, 64, device="cuda")
    with pytest.raises(fs.FlashSigmoidError, match="accepted on cuda: float16, bfloat16"):
        fs.sigmoid_attn(q, q, q)


def test_cuda_cpu_mix_rejected():
    q = torch.randn(1, 8, 2, 64, device="cuda", dtype=torch.float16)
    with pytest.raises(fs.FlashSigmoidError, match="k is on cpu but q is on cuda:0"):
        fs.sigmoid_attn(q, q.cpu(), q)
