"""torch.compile(fullgraph=True) traces through the custom ops (forward and backward).

The backend is "aot_eager": it runs Dynamo and AOTAutograd exactly as Inductor would
(so the fake implementations, autograd registration and the backward graph are all
exercised, and fullgraph=True fails on any graph break), but skips Inductor's code
generation and C++ compilation, which would take minutes on a 2-core machine and test
nothing about flashsigmoid.
"""

import pytest
import torch

import flashsigmoid as fs
from helpers import BOUNDS
from sigmoid_ref import rel_l2

BACKEND = "aot_eager"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _inputs(B=2, Nq=19, Nk=27, Hq=4, Hkv=2, D=32):
    q = torch.randn(B, Nq, Hq, D, requires_grad=True)
    k = torch.randn(B, Nk, Hkv, D, requires_grad=True)
    v = torch.randn(B, Nk, Hkv, D, requires_grad=True)
    return q, k, v


def _grads(*ts):
    out = [t.grad.clone() for t in ts]
    for t in ts:
        t.grad = None
    return out


def test_compile_dense_fullgraph_forward_backward():
    q, k, v = _inputs()
    bias = torch.full((4,), -2.0, requires_grad=True)
    alibi = 0.1 * torch.rand(2, 4)

    def f(q, k, v, bias, alibi):
        x = fs.sigmoid_attn(q * 1.0, k, v, causal=True, bias=bias, window=(9, -1), alibi_slopes=alibi)
        return (x * x).sum() + fs.sigmoid_attn(q, k, v, bias=-1.5, scale=0.25).sum()

    eager = f(q, k, v, bias, alibi)
    eager.backward()
    g_eager = _grads(q, k, v, bias)

    cf = torch.compile(f, backend=BACKEND, fullgraph=True)
    for _ in range(2):  # the second call hits the cache
        got = cf(q, k, v, bias, alibi)
        got.backward()
        g_got = _grads(q, k, v, bias)
        assert rel_l2(got, eager) <= BOUNDS[torch.float32]
        for a, b in zip(g_got, g_eager):
            assert rel_l2(a, b) <= BOUNDS[torch.float32]


def test_compile_varlen_fullgraph():
    Hq, D = 2, 32
    cu = torch.tensor([0, 5, 5, 17], dtype=torch.int32)
    q = torch.randn(17, Hq, D, requires_grad=True)
    k = torch.randn(17, 1, D, requires_grad=True)
    v = torch.randn(17, 1, D, requires_grad=True)

    def f(q, k, v, cu):
        return fs.sigmoid_attn_varlen(q, k, v, cu, cu, 12, 12, causal=True)

    eager = f(q, k, v, cu)
    eager.backward(torch.ones_like(eager))
    g_eager = _grads(q, k, v)
    got = torch.compile(f, backend=BACKEND, fullgraph=True)(q, k, v, cu)
    got.backward(torch.ones_like(got))
    assert rel_l2(got, eager) <= BOUNDS[torch.float32]
    for a, b in zip(_grads(q, k, v), g_eager):
        assert rel_l2(a, b) <= BOUNDS[torch.float32]


def test_compile_dynamic_shapes():
    def f(q, k, v):
        return fs.sigmoid_attn(q, k, v, causal=True).sum()

    cf = torch.compile(f, backend=BACKEND, fullgraph=True, dynamic=True)
    for n in (11, 23):
        q, k, v = _inputs(Nq=n, Nk=n + 3)
        got = cf(q, k, v)
        got.backward()
        g = _grads(q, k, v)
        ref = f(q, k, v)
        ref.backward()
        assert rel_l2(got, ref) <= BOUNDS[torch.float32]
        for a, b in zip(g, _grads(q, k, v)):
            assert rel_l2(a, b) <= BOUNDS[torch.float32]


def test_dynamo_explain_no_graph_breaks():
    q, k, v = _inputs()
    bias = torch.full((4,), -2.0, requires_grad=True)

    def f(q, k, v, bias):
        return fs.sigmoid_attn(q, k, v, bias=bias, window=(3, 3), alibi_slopes=torch.ones(4)).sum()

    explanation = torch._dynamo.explain(f)(q, k, v, bias)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("per_head_bias", [False, True], ids=["default-bias", "per-head-bias"])
def test_opcheck(per_head_bias):
    """torch.library.opcheck: schema, fake tensors, autograd registration, AOT dispatch."""
    q, k, v = _inputs(B=1, Nq=5, Nk=7)
    bias = torch.full((4,), -1.0, requires_grad=True) if per_head_bias else None
    mode = 2 if per_head_bias else 0
    args = (q, k, v, None, None, 0, 0, True, None, mode, 0.0, bias, 2, -1, torch.rand(4))
    torch.library.opcheck(torch.ops.flashsigmoid.fwd.default, args)
    dout = torch.randn(1, 5, 4, 32)
    b = bias.detach() if per_head_bias else None
    bargs = (dout, q.detach(), k.detach(), v.detach()) + args[3:11] + (b,) + args[12:] + (per_head_bias, False)
    torch.library.opcheck(torch.ops.flashsigmoid.bwd.default, bargs)


@pytest.mark.parametrize("what", ["bias", "scale", "softmax_scale"])
@pytest.mark.parametrize("dynamic", [None, True], ids=["automatic", "dynamic"])
def test_new_float_values_do_not_recompile(what, dynamic):
    """A Python-float bias or scale is a graph input, not a constant: after the first compile
    (and, with automatic dynamism, one recompile that marks it dynamic) new values reuse the graph."""
    from torch._dynamo.testing import CompileCounter

    q, k, v = _inputs()
    cnt = CompileCounter()

    def f(q, k, v, x):
        return fs.sigmoid_attn(q, k, v, causal=True, **{what: x})

    cf = torch.compile(f, backend=cnt, fullgraph=True, dynamic=dynamic)
    values = [0.37, -1.25, -2.5, 0.11, -4.0]
    for x in values:
        got = cf(q, k, v, x)
        assert rel_l2(got, f(q, k, v, x)) <= BOUNDS[torch.float32]
    assert cnt.frame_count <= (1 if dynamic else 2), f"{cnt.frame_count} compiles for {len(values)} values"


def test_opcheck_scale_tensor():
    """The op's scale_tensor argument (how torch.compile passes a Python-float scale)."""
    q, k, v = _inputs(B=1, Nq=5, Nk=7)
    st = torch.scalar_tensor(0.3, dtype=torch.float64)
    args = (q, k, v, None, None, 0, 0, False, None, 0, 0.0, None, -1, -1, None, st)
    torch.library.opcheck(torch.ops.flashsigmoid.fwd.default, args)
    want = fs.sigmoid_attn(q, k, v, scale=0.3)
    assert torch.equal(torch.ops.flashsigmoid.fwd(*args), want)
