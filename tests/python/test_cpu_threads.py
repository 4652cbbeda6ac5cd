"""The CPU backend's worker pool: results under concurrent callers and after fork()."""
import os
import sys
import threading
import time

import pytest
import torch

import flashsigmoid as fs


needs_threads = pytest.mark.skipif(torch.get_num_threads() < 2 or (os.cpu_count() or 1) < 2,
                                   reason="one thread: the pool is not used")


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 256, 4, 64, generator=g)  # enough work for more than one thread
    return q, torch.randn(1, 256, 4, 64, generator=g), torch.randn(1, 256, 4, 64, generator=g)


def _forward_and_backward(q, k, v, bias):
    """out and the gradients (dbias accumulates over tasks: a task run twice or lost would show)."""
    q, k, v, bias = (t.detach().requires_grad_() for t in (q, k, v, bias))
    out = fs.sigmoid_attn(q, k, v, bias=bias, causal=True)
    out.backward(torch.ones_like(out))
    return [out.detach(), q.grad, k.grad, v.grad, bias.grad]


@needs_threads
def test_concurrent_callers_get_their_own_results():
    """Calls from several Python threads at once (the GIL is released in C++): one runs on the pool,
    the others on threads of their own; each gets the same bits as a lone call."""
    problems = [(*_problem(s), torch.full((4,), -3.0)) for s in range(4)]
    expected = [_forward_and_backward(*p) for p in problems]
    got = [None] * len(problems)

    wrong = []

    def run(i):
        for _ in range(3):
            got[i] = _forward_and_backward(*problems[i])
            if not all(torch.equal(a, b) for a, b in zip(got[i], expected[i])):
                wrong.append(i)

    # Daemon threads: a deadlocked pool fails the test instead of hanging the interpreter at exit.
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(problems))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(not t.is_alive() for t in threads)
    assert not wrong, f"callers {sorted(set(wrong))} got other bits than a lone call"
    for g, e in zip(got, expected):
        assert g is not None and all(torch.equal(a, b) for a, b in zip(g, e))


@needs_threads
@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork()")
def test_fork_after_the_pool_started():
    """A child forked after the pool has run (its threads are not in the child) computes the same bits.
    Tensors under 32768 elements: PyTorch's own OpenMP ops (fill_, equal) hang in a forked child once the
    parent used them; these stay serial, while the attention (4.2 M multiply-adds) takes two threads."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 128, 2, 64, generator=g) for _ in range(3))
    expected = fs.sigmoid_attn(q, k, v)
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 when right, 3 when wrong, killed by the parent when hung
        os._exit(0 if torch.equal(fs.sigmoid_attn(q, k, v), expected) else 3)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in the CPU backend")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(status) == 0
    assert torch.equal(fs.sigmoid_attn(q, k, v), expected)
