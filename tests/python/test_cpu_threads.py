"""The CPU backend's worker pool: results under concurrent callers and after fork()."""
import os
import sys
import threading
import time

import pytest
import torch

import flashsigmoid as fs


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 256, 4, 64, generator=g)  # enough work for more than one thread
    return q, torch.randn(1, 256, 4, 64, generator=g), torch.randn(1, 256, 4, 64, generator=g)


def test_concurrent_callers_get_their_own_results():
    """Calls from several Python threads at once (the GIL is released in C++): one runs on the pool,
    the others on threads of their own; each gets the same bits as a lone call."""
    problems = [_problem(s) for s in range(4)]
    expected = [fs.sigmoid_attn(*p) for p in problems]
    got = [None] * len(problems)

    def run(i):
        for _ in range(5):
            got[i] = fs.sigmoid_attn(*problems[i])
            assert torch.equal(got[i], expected[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(problems))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(not t.is_alive() for t in threads)
    assert all(torch.equal(g, e) for g, e in zip(got, expected))


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
