"""Sigmoid vs softmax attention, trained side by side on real data. One command:

    python3 studies/parity/run.py --preset cpu --out studies/parity/results/cpu --threads 2

Writes into --out: lm.json / vit.json (every curve), lm_curves.csv / vit_curves.csv, PNG plots and
summary.md (see report.py). Presets (presets.py): smoke (seconds), cpu (2 cores), gpu (one CUDA GPU).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

# Before torch loads OpenMP: idle threads sleep instead of spinning at barriers. On a machine shared with
# other jobs, spinning threads steal each other's cores, and training small tensors slows down severely.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import flashsigmoid  # noqa: E402
from data import digits_split, text_split  # noqa: E402
from presets import PRESETS, lm_variants, vit_variants  # noqa: E402
from report import write_report  # noqa: E402
from train_lm import train_lm  # noqa: E402
from train_vit import train_vit  # noqa: E402


def machine_info(threads: int) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "python": platform.python_version(),
            "torch": torch.__version__, "flashsigmoid": flashsigmoid.__version__, "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here, capture_output=True,
                               text=True).stdout.strip()
        return head + (" (study files modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("COMMIT", "unknown")  # a copy without .git (the GPU machine's) may be told it


def _log(line: str) -> None:
    print(line, flush=True)


def run_vit(preset, args, meta: dict) -> None:
    """Every ViT variant for every seed; vit.json rewritten after each seed."""
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    variants = vit_variants(preset.vit)
    if args.vit_variants:
        variants = {k: variants[k] for k in args.vit_variants.split(",")}
    results = {name: {"desc": v["desc"], "kw": v["kw"], "seeds": {}} for name, v in variants.items()}
    for seed in preset.vit.seeds:
        data = digits_split(seed)
        for name, v in variants.items():
            results[name]["seeds"][str(seed)] = train_vit(preset, v, seed, data, log=_log)
        vit = {"meta": meta, "config": preset.vit.__dict__, "variants": results,
               "wall_s": time.perf_counter() - t0, "load_avg_1min": [load0, os.getloadavg()[0]]}
        (args.out / "vit.json").write_text(json.dumps(vit, indent=1))


def run_lm(preset, args, meta: dict) -> None:
    """Every LM variant; lm.json rewritten after each, so that a run cut short keeps what it finished."""
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    train, val, sizes = text_split()
    _log(f"[lm] text: {sizes} -> train {len(train)} bytes, validation {len(val)} bytes")
    variants = lm_variants(preset.lm)
    if args.variants:
        variants = {k: variants[k] for k in args.variants.split(",")}
    results = {}
    for name, v in variants.items():
        _log(f"[lm] {name}: {v['desc']}")
        results[name] = train_lm(preset, name, v, train, val, log=_log)
        lm = {"meta": meta, "config": preset.lm.__dict__, "data": {"bytes": sizes, "train_bytes": len(train),
              "val_bytes": len(val)}, "variants": results, "wall_s": time.perf_counter() - t0,
              "load_avg_1min": [load0, os.getloadavg()[0]]}
        (args.out / "lm.json").write_text(json.dumps(lm, indent=1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--out", type=Path, required=True, help="output directory (created)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--parts", default="lm,vit", help="comma list of lm, vit")
    ap.add_argument("--variants", default=None, help="comma list of LM variant names (default: all)")
    ap.add_argument("--vit-variants", default=None, help="comma list of ViT variant names (default: all)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    if preset.device == "cuda" and not flashsigmoid.cuda_available():
        ap.error("the gpu preset needs a CUDA GPU and a flashsigmoid build with the CUDA backend")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"preset": args.preset, "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
            "machine": machine_info(torch.get_num_threads())}
    parts = args.parts.split(",")
    t_all = time.perf_counter()

    # The short ViT part first: a run cut short by a time limit loses LM variants, not the ViT.
    if "vit" in parts:
        run_vit(preset, args, meta)
    if "lm" in parts:
        run_lm(preset, args, meta)
    wall = time.perf_counter() - t_all
    print(f"[study] training done in {wall:.0f} s; writing the report", flush=True)
    write_report(args.out, total_wall_s=wall)
    print(f"[study] results in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
