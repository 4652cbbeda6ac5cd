"""The parity study (studies/parity) end to end on its smoke preset: it trains, and writes its outputs."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_parity_study_smoke(tmp_path):
    cmd = [sys.executable, str(ROOT / "studies/parity/run.py"), "--preset", "smoke", "--out", str(tmp_path),
           "--threads", "2", "--variants", "softmax,sigmoid", "--vit-variants", "softmax,sigmoid+LS"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name in ("lm.json", "lm_curves.csv", "lm_loss.png", "lm_attn_norm.png", "lm_length.png",
                 "vit.json", "vit_curves.csv", "vit.png", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    lm = json.loads((tmp_path / "lm.json").read_text())
    assert set(lm["variants"]) == {"softmax", "sigmoid"}
    for name, r in lm["variants"].items():
        c = r["curves"]
        assert not r["diverged"], name
        assert c["val_loss"][-1] < c["val_loss"][0] - 0.5, (name, c["val_loss"])  # from ~log 256 = 5.5 nats
        assert set(r["val_loss_by_length"]) == {"1", "2", "4"}
        assert len(c["attn_norm"]) == len(c["step"]) and all(x > 0 for x in c["attn_norm"])
    vit = json.loads((tmp_path / "vit.json").read_text())
    for name, r in vit["variants"].items():
        for c in (s["curves"] for s in r["seeds"].values()):
            assert c["train_loss"][-1] < c["train_loss"][0], (name, c["train_loss"])
    summary = (tmp_path / "summary.md").read_text()
    assert "within 2 % of softmax" in summary and "Tiny ViT" in summary
