"""bench/harness.py in its CPU dry-run mode: tiny shapes, every method, all three outputs."""

import json

import pytest

from helpers import load_bench


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run for the module's tests: tiny shapes on the CPU, 2 reps."""
    out = tmp_path_factory.mktemp("harness")
    paths = load_bench("harness").main(["--device", "cpu", "--quick", "--dims", "32,64", "--reps", "2", "--warmup", "1",
                          "--sets", "2", "--out", str(out), "--name", "dry", "--commit", "test"])
    assert paths == {e: str(out / f"dry.{e}") for e in ("md", "json", "png")}
    return out, json.loads((out / "dry.json").read_text())


def test_json_has_every_number(dry_run):
    _, data = dry_run
    meta = data["meta"]
    for key in ("card", "date", "commit", "torch", "command", "method", "gemm_tflops", "triton_sigmoid", "reps"):
        assert key in meta, key
    assert meta["commit"] == "test" and meta["gemm_tflops"] > 0
    assert data["methods"] == ["flashsigmoid", "sdpa_flash", "sdpa_cudnn", "triton_sigmoid", "plain_sigmoid"]
    rows = data["rows"]
    # 2 dims x 2 causal x 2 N, plus the GQA rows (2 causal x 2 N)
    assert len(rows) == 12 and sum(r["gqa"] for r in rows) == 4
    for r in rows:
        for key in ("D", "causal", "N", "B", "Hq", "Hkv", "flops_fwd", "flops_bwd", "fwd", "bwd"):
            assert key in r, key
        assert r["flops_bwd"] == pytest.approx(2.5 * r["flops_fwd"])
        assert r["flops_fwd"] == pytest.approx(4 * r["B"] * r["Hq"] * r["N"] ** 2 * r["D"] / (2 if r["causal"] else 1))
        for direction in ("fwd", "bwd"):
            assert set(r[direction]) == set(data["methods"])
            for name, cell in r[direction].items():
                assert cell["tflops"] is None or cell["tflops"] > 0
                if cell["tflops"] is None:  # n/a always carries its reason
                    assert cell["error"], (name, direction)
            # measured on the CPU: flashsigmoid (fwd and bwd) and the plain path
            assert r[direction]["flashsigmoid"]["tflops"] > 0
            assert r[direction]["plain_sigmoid"]["tflops"] > 0
            # the CPU has no cuDNN: reported, not crashed
            assert r[direction]["sdpa_cudnn"]["tflops"] is None
        for direction in ("fwd", "bwd"):  # same function as the plain path (bf16): out, and dq, dk, dv
            assert 0 <= r["rel_err_vs_plain"][direction]["flashsigmoid"] < 0.05, (r, direction)


def test_markdown_table(dry_run):
    out, _ = dry_run
    md = (out / "dry.md").read_text()
    assert "Commit: `test`" in md and "## Forward" in md and "## Backward" in md
    assert "ratio to FA2" in md and "ratio to cuDNN" in md and "n/a [1]" in md
    assert md.count("\n| 32 | no | 32 |") == 4  # MHA and GQA rows, forward and backward tables
    assert "Check against the plain path" in md and "flashsigmoid bwd" in md


def test_png_plot(dry_run):
    out, data = dry_run
    meta = data["meta"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert meta["plot"] is None and "matplotlib" in meta["plot_error"] and not (out / "dry.png").exists()
        pytest.skip("matplotlib is not installed here: no PNG to check (the harness reports 'no plot')")
    png = out / "dry.png"
    assert meta["plot"] == "dry.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Config:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class _Tuner:
    def __init__(self, configs):
        self.configs = configs


def test_triton_config_pruning_keeps_large_tiles(monkeypatch):
    """--triton-configs large: only configs whose BLOCK_* are all >= 64 stay in the autotuners."""
    import sys
    import types
    h = load_bench("harness")
    mod = types.ModuleType("fake_triton_sigmoid.kernels")
    mod._fwd = _Tuner([_Config(BLOCK_M=32, BLOCK_N=64), _Config(BLOCK_M=64, BLOCK_N=64),
                       _Config(BLOCK_M=128, BLOCK_N=128, other=1)])
    mod._all_small = _Tuner([_Config(BLOCK_M=32, BLOCK_N=32)])  # nothing large: left as it is
    monkeypatch.setitem(sys.modules, "fake_triton_sigmoid.kernels", mod)
    monkeypatch.setattr(h, "TRITON_INFO", "fake_triton_sigmoid")
    note = h.prune_triton_configs()
    assert [c.kwargs for c in mod._fwd.configs] == [dict(BLOCK_M=64, BLOCK_N=64),
                                                    dict(BLOCK_M=128, BLOCK_N=128, other=1)]
    assert len(mod._all_small.configs) == 1
    assert "_fwd 2/3" in note


def test_triton_runs_only_at_the_chosen_n():
    """--triton-ns: triton-sigmoid is skipped, with the reason, at any other N (before it is called)."""
    h = load_bench("harness")
    args = h.argparse.Namespace(triton_ns="8192", plain_budget_gb=48.0, reps=1, warmup=0)
    shape = dict(D=64, causal=False, N=1024, B=1, Hq=1, Hkv=1)
    with pytest.raises(h.Skip, match="--triton-ns 8192"):
        h.measure("triton_sigmoid", shape, [], [], "fwd", args, False)


def test_bad_triton_ns_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        load_bench("harness").main(["--device", "cpu", "--triton-ns", "8k"])
    assert e.value.code == 2
    assert "--triton-ns is '8k'; accepted: 'all' or comma-separated sequence lengths" in capsys.readouterr().err
