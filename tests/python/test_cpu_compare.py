"""bench/cpu_compare.py on tiny shapes: every method runs, the tables and the check are written."""

import json

from helpers import load_bench


def test_tiny_run(tmp_path):
    stem = load_bench("cpu_compare").main([str(tmp_path), "--ns", "64,96", "--dims", "32", "--reps", "1", "--gemm-n", "64",
                         "--no-compile"])
    data = json.loads(open(stem + ".json").read())
    assert set(data["meta"]["gemm_tflops"]) == {"fp32", "bf16"}
    rows = data["rows"]
    assert len(rows) == 2 * 2 * 2  # dtypes x causal x N
    for r in rows:
        assert set(r["results"]) == {"flashsigmoid", "sdpa_softmax", "plain_sigmoid"}
        for name, res in r["results"].items():
            assert "error" not in res, (name, res)
            assert res["fwd_tflops"] > 0 and res["fwdbwd_tflops"] > 0
        assert r["gemm_tflops"] > 0
        assert r["rel_l2_vs_plain"] < (1e-2 if r["dtype"] == "bf16" else 1e-5)
    md = open(stem + ".md").read()
    assert "| bf16 | 32 | yes | 96 | fwd+bwd |" in md and "ours / SDPA" in md
