"""torch.vmap: the vmapped dimension folds into the batch (or, where it cannot, a loop);
results equal a Python loop over the vmapped entries."""

import warnings

import pytest
import torch

import flashsigmoid as fs


def _vmap(fn, *args, in_dims=0):
    """torch.vmap(fn) that fails if torch falls back to its slow per-sample loop (no rule)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.vmap(fn, in_dims=in_dims)(*args)
    slow = [str(w.message) for w in caught if "batching rule" in str(w.message)]
    assert not slow, slow
    return out


def _loop(fn, n, args, in_dims):
    return torch.stack([fn(*[a if d is None else a.select(d, i) for a, d in zip(args, in_dims)])
                        for i in range(n)])


@pytest.mark.parametrize("in_dims", [(0, 0, 0), (1, None, None), (None, 2, 2)], ids=["all", "q-only", "kv-only"])
def test_vmap_dense_folds_into_batch(in_dims, monkeypatch):
    n, B, N, H, D = 3, 2, 13, 2, 32
    shapes = {0: (n, B, N, H, D), 1: (B, n, N, H, D), 2: (B, N, n, H, D), None: (B, N, H, D)}
    args = [torch.randn(shapes[d]) for d in in_dims]
    import flashsigmoid._vmap as fs_vmap
    monkeypatch.setattr(fs_vmap, "_loop", lambda *a: pytest.fail("the dense case must fold, not loop"))

    def f(q, k, v):
        return fs.sigmoid_attn(q, k, v, causal=True, window=(5, -1), alibi_slopes=torch.full((H,), 0.1))

    got = _vmap(f, *args, in_dims=in_dims)
    assert torch.equal(got, _loop(f, n, args, in_dims))


def test_vmap_batched_slopes_and_bias():
    n, B, N, H, D = 4, 2, 9, 2, 32
    q, k, v = (torch.randn(B, N, H, D) for _ in range(3))
    slopes = 0.05 + 0.2 * torch.rand(n, B, H)
    got = _vmap(lambda s: fs.sigmoid_attn(q, k, v, alibi_slopes=s), slopes)
    assert torch.equal(got, _loop(lambda s: fs.sigmoid_attn(q, k, v, alibi_slopes=s), n, [slopes], [0]))
    bias = -1.0 - torch.rand(n, H)  # a per-head bias per vmapped entry: runs as a loop
    got = _vmap(lambda b: fs.sigmoid_attn(q, k, v, bias=b), bias)
    assert torch.equal(got, _loop(lambda b: fs.sigmoid_attn(q, k, v, bias=b), n, [bias], [0]))


def test_vmap_varlen_loops():
    n, H, D = 2, 2, 32
    cu = torch.tensor([0, 4, 11], dtype=torch.int32)
    q, k, v = (torch.randn(n, 11, H, D) for _ in range(3))

    def f(q, k, v):
        return fs.sigmoid_attn_varlen(q, k, v, cu, cu, 7, 7, causal=True)

    assert torch.equal(_vmap(f, q, k, v), _loop(f, n, [q, k, v], [0, 0, 0]))


def test_jacfwd():
    """vmap over the jvp (what torch.func.jacfwd does) uses both rules."""
    q, k, v = (torch.randn(1, 3, 1, 32, dtype=torch.float64) for _ in range(3))
    jac = torch.func.jacfwd(lambda v: fs.sigmoid_attn(q, k, v))(v)
    p = torch.sigmoid(torch.einsum("bqhd,bkhd->bhqk", q, k) / 32 ** 0.5 - torch.log(torch.tensor(3.0)))
    # d out[0, i, 0, d] / d v[0, j, 0, e] = p[i, j] (d == e)
    expect = torch.einsum("ij,de->idje", p[0, 0], torch.eye(32, dtype=torch.float64))
    assert torch.allclose(jac, expect.reshape(1, 3, 1, 32, 1, 3, 1, 32), atol=1e-6)
