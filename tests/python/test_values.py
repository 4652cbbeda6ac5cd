"""Values and gradients (dq, dk, dv, dbias) of the CPU backend against a float64 reference."""

import pytest
import torch

import flashsigmoid as fs
from helpers import BOUNDS, Case, check_dense, check_varlen, make_inputs
from sigmoid_ref import attn_dense, rel_l2

C = Case
CASES = [
    C(id="plain"),
    C(id="odd-N-D64", B=1, Nq=53, Nk=53, D=64),
    C(id="causal-Nq<Nk", Nq=19, Nk=45, causal=True),
    C(id="causal-Nq>Nk", Nq=45, Nk=19, causal=True),  # the first Nq-Nk rows see no key
    C(id="causal-square", Nq=33, Nk=33, causal=True),
    C(id="window", Nq=41, Nk=41, window=(8, 3)),
    C(id="window-left-only-Nq<Nk", Nq=23, Nk=50, window=(6, -1)),
    C(id="window-right-only", Nq=31, Nk=31, window=(-1, 0)),
    C(id="causal+window-Nq!=Nk", Nq=29, Nk=53, causal=True, window=(7, -1)),
    C(id="alibi-head", alibi="head"),
    C(id="alibi-batch-Nq!=Nk", Nq=21, Nk=34, alibi="batch"),
    C(id="gqa-4:2", Hq=4, Hkv=2),
    C(id="mqa-4:1", Hq=4, Hkv=1, Nq=17, Nk=40),
    C(id="bias-scalar", bias="scalar"),
    C(id="bias-head", Hq=3, Hkv=3, bias="head"),
    C(id="scale", scale=0.3),
    C(id="decode-Nq1", Nq=1, Nk=77, Hq=4, Hkv=1, causal=True),
    C(id="single-key", Nq=9, Nk=1),
    C(id="D96", B=1, Nq=21, Nk=27, D=96),
    C(id="D128", B=1, Nq=25, Nk=25, D=128, causal=True),
    C(id="D256", B=1, Nq=13, Nk=18, Hq=1, Hkv=1, D=256),
    C(id="layout-bhnd", Nq=27, Nk=35, layout="bhnd"),
    C(id="layout-packed-qkv", Nq=30, Nk=30, layout="packed", causal=True),
    C(id="everything", B=2, Nq=26, Nk=61, Hq=6, Hkv=2, D=64, causal=True, window=(20, 2),
      bias="head", alibi="batch", scale=0.2),
]
LOW_PRECISION_CASES = [c for c in CASES if c.id in (
    "plain", "causal-Nq>Nk", "causal+window-Nq!=Nk", "alibi-batch-Nq!=Nk", "mqa-4:1", "bias-head",
    "bias-scalar", "D128", "everything")]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_dense_fp32(case):
    check_dense(case, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=str)
def test_dense_low_precision(case, dtype):
    check_dense(case, dtype)


@pytest.mark.parametrize("case", [c for c in CASES if c.id in ("plain", "everything", "causal-Nq>Nk")], ids=str)
def test_dense_fp64(case):
    check_dense(case, torch.float64)


VARLEN = [
    # (lens_q, lens_k, kwargs)
    ([5, 0, 17, 1], [9, 0, 13, 4], {}),
    ([7, 3, 0, 12], [7, 0, 5, 12], {"causal": True}),  # a sequence with queries but no keys
    ([11, 1, 19], [30, 6, 19], {"causal": True, "window": (4, 1), "alibi": "batch"}),
    ([13, 0, 8], [13, 9, 21], {"bias": "head", "alibi": "head", "Hq": 4, "Hkv": 2}),
    ([6, 15], [15, 6], {"bias": "scalar", "window": (-1, 2), "D": 64}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("lens_q,lens_k,kw", VARLEN, ids=[f"varlen{i}" for i in range(len(VARLEN))])
def test_varlen(lens_q, lens_k, kw, dtype):
    check_varlen(lens_q, lens_k, dtype, **kw)


def test_varlen_matches_dense():
    """Equal-length varlen sequences give the dense result."""
    B, N, H, D = 3, 14, 2, 32
    q, k, v = (torch.randn(B, N, H, D) for _ in range(3))
    cu = torch.arange(0, (B + 1) * N, N, dtype=torch.int32)
    dense = fs.sigmoid_attn(q, k, v, causal=True)
    packed = fs.sigmoid_attn_varlen(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu, cu, N, N, causal=True)
    assert rel_l2(packed.view(B, N, H, D), dense) <= 1e-6


def test_only_some_inputs_need_grad():
    q, k, v = make_inputs(Case(Hq=4, Hkv=2), torch.float32)
    bias = torch.full((4,), -2.0)  # given, but not learnable here
    q.requires_grad_()
    out = fs.sigmoid_attn(q, k, v, bias=bias, causal=True)
    out.backward(torch.randn_like(out))
    assert k.grad is None and v.grad is None and bias.grad is None
    r = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ro = attn_dense(*r, bias=bias.double(), causal=True)
    assert rel_l2(out, ro) <= BOUNDS[torch.float32]

    # only the bias learns
    b = torch.full((4,), -2.0, requires_grad=True)
    out = fs.sigmoid_attn(q.detach(), k, v, bias=b)
    out.sum().backward()  # an expanded (stride-0) gradient
    rb = b.detach().double().requires_grad_()
    attn_dense(q.detach().double(), k.double(), v.double(), bias=rb).sum().backward()
    assert rel_l2(b.grad, rb.grad) <= BOUNDS[torch.float32]


def test_no_grad_and_inference_mode():
    q, k, v = make_inputs(Case(), torch.float32)
    with torch.inference_mode():
        out = fs.sigmoid_attn(q, k, v)
    ref = attn_dense(q.double(), k.double(), v.double())
    assert rel_l2(out, ref) <= BOUNDS[torch.float32]


def test_direct_op_is_registered():
    assert hasattr(torch.ops.flashsigmoid, "fwd") and hasattr(torch.ops.flashsigmoid, "bwd")
    assert isinstance(fs.__version__, str) and fs.__version__
    assert issubclass(fs.FlashSigmoidError, ValueError)


def test_cpu_result_independent_of_torch_num_threads():
    """The ops pass torch.get_num_threads() to the CPU backend; its result must not depend on
    the thread count (the CPU backend is deterministic)."""
    q = torch.randn(1, 130, 4, 64)
    k = torch.randn(1, 130, 2, 64)
    v = torch.randn(1, 130, 2, 64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fs.sigmoid_attn(q, k, v, causal=True)
        torch.set_num_threads(2)
        two = fs.sigmoid_attn(q, k, v, causal=True)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
