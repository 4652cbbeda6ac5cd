"""Turns lm.json / vit.json of a study run into CSV files, PNG plots and summary.md.

    python3 studies/parity/report.py RESULTS_DIR      # re-draw from the JSON files
"""

import csv
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

EARLY_FRACTION = 0.1  # "early in training": the first tenth of the steps
LM_COLORS = {"softmax": "black", "sigmoid": "tab:blue", "sigmoid-naive": "tab:red", "sigmoid-alibi": "tab:green",
             "sigmoid-bias-only": "tab:purple", "softmax-alibi": "tab:gray"}
VIT_COLORS = {"softmax": "black", "sigmoid+LS": "tab:blue", "sigmoid": "tab:red", "sigmoid-logn+LS": "tab:purple"}


def _smooth(xs: List[float], k: int) -> List[float]:
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= k:
            acc -= xs[i - k]
        out.append(acc / min(i + 1, k))
    return out


def _pct(a: float, b: float) -> float:
    return 100.0 * (a - b) / b


# ---- CSV ------------------------------------------------------------------------------------

def write_csv(path: Path, rows: List[list], header: List[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def lm_rows(lm: dict) -> List[list]:
    rows = []
    for name, r in lm["variants"].items():
        c = r["curves"]
        for key in ("train_loss", "attn_norm", "grad_norm"):
            rows += [[name, key, s, v] for s, v in zip(c["step"], c[key])]
        rows += [[name, "val_loss", s, v] for s, v in zip(c["val_step"], c["val_loss"])]
        rows += [[name, f"val_loss_len_x{m}", c["step"][-1], v] for m, v in r["val_loss_by_length"].items()]
    return rows


def vit_rows(vit: dict) -> List[list]:
    rows = []
    for name, r in vit["variants"].items():
        for seed, s in r["seeds"].items():
            c = s["curves"]
            for key in ("train_loss", "val_loss", "val_acc"):
                rows += [[name, seed, key, e, v] for e, v in zip(c["epoch"], c[key])]
            rows += [[name, seed, "attn_norm_per_step", i, v] for i, v in enumerate(c["attn_norm"])]
    return rows


# ---- plots ----------------------------------------------------------------------------------

def plot_lm(lm: dict, out: Path) -> None:
    cfg = lm["config"]
    tok = cfg["batch"] * cfg["seq_len"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, r in lm["variants"].items():
        c = r["curves"]
        a.plot([s * tok / 1e6 for s in c["step"]], _smooth(c["train_loss"], 20), label=name, color=LM_COLORS.get(name))
        b.plot([s * tok / 1e6 for s in c["val_step"]], c["val_loss"], marker=".", label=name, color=LM_COLORS.get(name))
    a.set(title="Training loss (moving average of 20 steps)", xlabel="training tokens (millions of bytes)",
          ylabel="cross-entropy (nats per byte)")
    b.set(title=f"Validation loss (held-out text, {cfg['seq_len']}-byte windows; y zoomed)",
          xlabel="training tokens (millions of bytes)", ylabel="cross-entropy (nats per byte)")
    finals = [v for r in lm["variants"].values() for v in r["curves"]["val_loss"][-1:] if math.isfinite(v)]
    if finals:  # zoom on the end of training, where the variants are compared
        b.set_ylim(min(finals) - 0.1, max(finals) + 1.0)
        a.set_ylim(min(finals) - 0.3, max(finals) + 1.2)
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Byte-level causal LM on Debian's fortunes + the Jargon File: sigmoid vs softmax attention, "
                 "same model, seed and data order")
    fig.tight_layout()
    fig.savefig(out / "lm_loss.png", dpi=110)
    plt.close(fig)

    steps = max(10, int(cfg["steps"] * EARLY_FRACTION))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, r in lm["variants"].items():
        c = r["curves"]
        ax.plot(c["step"][:steps], c["attn_norm"][:steps], label=name, color=LM_COLORS.get(name))
    ax.set_yscale("log")
    ax.set(title=f"Attention output norm over the first {steps} training steps",
           xlabel="training step", ylabel="mean L2 norm of a token's attention output\n(all heads, mean over layers)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "lm_attn_norm.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    n = cfg["seq_len"]
    for name, r in lm["variants"].items():
        by = r["val_loss_by_length"]
        if by:
            ms = sorted(by, key=int)
            ax.plot([int(m) * n for m in ms], [by[m] for m in ms], marker="o", label=name, color=LM_COLORS.get(name))
    ax.set_xscale("log", base=2)
    ax.set_xticks([n, 2 * n, 4 * n], [f"{n}\n(training length)", f"{2 * n}\n(2x)", f"{4 * n}\n(4x)"])
    ax.set(title="Length generalisation: validation loss on longer windows",
           xlabel="evaluation window (bytes)", ylabel="cross-entropy (nats per byte)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "lm_length.png", dpi=110)
    plt.close(fig)


def plot_vit(vit: dict, out: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for name, r in vit["variants"].items():
        seeds = list(r["seeds"].values())
        ep = seeds[0]["curves"]["epoch"]
        for ax, key in zip(axes[:2], ("val_acc", "val_loss")):
            per = list(zip(*[s["curves"][key] for s in seeds]))
            ax.plot(ep, [statistics.mean(p) for p in per], label=name, color=VIT_COLORS.get(name))
            ax.fill_between(ep, [min(p) for p in per], [max(p) for p in per], alpha=0.15, color=VIT_COLORS.get(name))
        norm = list(zip(*[s["curves"]["attn_norm"] for s in seeds]))
        k = max(10, len(norm) // 10)
        axes[2].plot(range(k), [statistics.mean(p) for p in norm[:k]], label=name, color=VIT_COLORS.get(name))
    n_seeds = len(next(iter(vit["variants"].values()))["seeds"])
    axes[0].set(title=f"Validation accuracy (mean of {n_seeds} seeds, band: min-max)", xlabel="epoch",
                ylabel="accuracy")
    axes[1].set(title="Validation loss", xlabel="epoch", ylabel="cross-entropy (nats)")
    axes[2].set(title="Attention output norm, first training steps", xlabel="training step",
                ylabel="mean L2 norm of a token's attention output")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Tiny ViT on scikit-learn's 8x8 handwritten digits: sigmoid with / without LayerScale vs softmax")
    fig.tight_layout()
    fig.savefig(out / "vit.png", dpi=110)
    plt.close(fig)


# ---- summary --------------------------------------------------------------------------------

def _early(r: dict, steps: int) -> Dict[str, float]:
    c = r["curves"]
    k = max(1, int(steps * EARLY_FRACTION))
    return {"loss": statistics.mean(c["train_loss"][:k]), "norm0": c["attn_norm"][0],
            "norm_max": max(c["attn_norm"][:k]), "grad_max": max(c["grad_norm"][:k]), "k": k}


def lm_summary(lm: dict) -> List[str]:
    cfg, v = lm["config"], lm["variants"]
    soft = v.get("softmax", {}).get("final_val_loss", float("nan"))
    tokens = cfg["steps"] * cfg["batch"] * cfg["seq_len"]
    n = cfg["seq_len"]
    first = next(iter(v.values()))
    lines = [
        "## Byte-level language model",
        "",
        f"Data: {', '.join(f'{k} ({b / 1e6:.2f} MB)' for k, b in lm['data']['bytes'].items())}; the last 10 % of "
        f"every document held out: {lm['data']['train_bytes'] / 1e6:.2f} MB train, "
        f"{lm['data']['val_bytes'] / 1e6:.2f} MB validation.",
        f"Model: {cfg['layers']} pre-norm blocks, width {cfg['dim']}, {cfg['heads']} heads of "
        f"{cfg['dim'] // cfg['heads']}, MLP 4x, tied byte embedding ({first['params']:,} parameters); "
        f"AdamW lr {cfg['lr']:g} (warm-up {cfg['warmup']}, cosine to a tenth), {cfg['dtype']}.",
        f"Budget: {cfg['steps']} steps x {cfg['batch']} x {n} bytes = {tokens / 1e6:.2f} M training bytes per "
        f"variant; same initial weights (where shapes agree), seed and batch order for all. One seed: how far "
        "another seed would move these numbers was not measured.",
        "",
        f"| variant | what | final val loss | vs softmax | val @ {2 * n} (2x) | val @ {4 * n} (4x) | "
        f"mean train loss, first {int(EARLY_FRACTION * 100)} % | attn norm: step 0 / max early | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in v.items():
        e = _early(r, cfg["steps"])
        by = r["val_loss_by_length"]
        fin = r["final_val_loss"]
        rel = f"{_pct(fin, soft):+.1f} %" if math.isfinite(fin) and math.isfinite(soft) and name != "softmax" else ""
        lines.append(
            f"| {name} | {r['desc']}{' (DIVERGED)' if r['diverged'] else ''} | {fin:.4f} | {rel} | "
            f"{by.get('2', float('nan')):.4f} | {by.get('4', float('nan')):.4f} | {e['loss']:.3f} | "
            f"{e['norm0']:.3g} / {e['norm_max']:.3g} | {r['tokens_per_s']:,.0f} |")
    lines += ["", "Computed checks (the issue's targets):", ""]
    if "sigmoid" in v and math.isfinite(soft):
        d = _pct(v["sigmoid"]["final_val_loss"], soft)
        lines.append(f"- Sigmoid with the paper's practices ends within 2 % of softmax's validation loss: "
                     f"**{'yes' if abs(d) <= 2.0 else 'no'}** ({d:+.2f} %).")
    if "sigmoid-naive" in v and "sigmoid" in v:
        nv, pr = v["sigmoid-naive"], v["sigmoid"]
        en, ep = _early(nv, cfg["steps"]), _early(pr, cfg["steps"])
        lines.append(
            f"- Naive sigmoid (b = 0, no LayerScale, no QK-norm) against the practices: final validation loss "
            f"{nv['final_val_loss']:.4f} vs {pr['final_val_loss']:.4f} "
            f"({_pct(nv['final_val_loss'], pr['final_val_loss']):+.2f} %){' - naive DIVERGED' if nv['diverged'] else ''}; "
            f"mean training loss over the first {en['k']} steps {en['loss']:.3f} vs {ep['loss']:.3f}; "
            f"attention output norm at step 0 {en['norm0']:.3g} vs {ep['norm0']:.3g} "
            f"({en['norm0'] / ep['norm0']:.1f}x); largest early gradient norm {en['grad_max']:.3g} vs "
            f"{ep['grad_max']:.3g}.")
    if "sigmoid-alibi" in v and math.isfinite(soft):
        lines.append(f"- Sigmoid with ALiBi and b = 0: final validation loss {_pct(v['sigmoid-alibi']['final_val_loss'], soft):+.2f} % "
                     f"against softmax.")
    lens = {k: r["val_loss_by_length"] for k, r in v.items() if r["val_loss_by_length"]}
    if lens:
        best4 = min(lens, key=lambda k: lens[k]["4"])
        lines.append(f"- Lowest validation loss at 4x the training length: {best4} ({lens[best4]['4']:.4f}); "
                     "per variant, 4x minus 1x: " +
                     ", ".join(f"{k} {lens[k]['4'] - lens[k]['1']:+.3f}" for k in lens) + ".")
    return lines


def vit_summary(vit: dict) -> List[str]:
    cfg, v = vit["config"], vit["variants"]
    lines = [
        "## Tiny ViT on the digits",
        "",
        f"scikit-learn's 8x8 digits (1797 images), stratified 80/20 split per seed; {cfg['patch']}x{cfg['patch']} "
        f"patches + class token, {cfg['layers']} blocks of width {cfg['dim']}, {cfg['heads']} heads; AdamW lr "
        f"{cfg['lr']:g} one-cycle, {cfg['epochs']} epochs, batch {cfg['batch']}; seeds {cfg['seeds']} "
        "(each seed: split, initial weights, order; the same for every variant).",
        "",
        "| variant | what | final val accuracy, mean (min-max) | final val loss, mean |",
        "|---|---|---|---|",
    ]
    acc = {}
    for name, r in v.items():
        a = [s["final_val_acc"] for s in r["seeds"].values()]
        lo = [s["final_val_loss"] for s in r["seeds"].values()]
        acc[name] = statistics.mean(a)
        lines.append(f"| {name} | {r['desc']} | {100 * statistics.mean(a):.2f} % ({100 * min(a):.2f}-{100 * max(a):.2f}) "
                     f"| {statistics.mean(lo):.4f} |")
    if {"softmax", "sigmoid+LS", "sigmoid"} <= set(acc):
        lines += ["", f"- Sigmoid with LayerScale minus softmax: {100 * (acc['sigmoid+LS'] - acc['softmax']):+.2f} "
                  f"accuracy points; sigmoid without LayerScale minus softmax: "
                  f"{100 * (acc['sigmoid'] - acc['softmax']):+.2f} points (means over seeds)."]
    return lines


def write_report(out: Path, total_wall_s: Optional[float] = None) -> None:
    out = Path(out)
    lm = json.loads((out / "lm.json").read_text()) if (out / "lm.json").exists() else None
    vit = json.loads((out / "vit.json").read_text()) if (out / "vit.json").exists() else None
    if lm is None and vit is None:
        raise SystemExit(f"report.py: neither lm.json nor vit.json in {out}: nothing to report")
    meta = (lm or vit)["meta"]
    walls = [d["wall_s"] for d in (lm, vit) if d]
    m = meta["machine"]
    lines = [f"# Sigmoid vs softmax attention: parity study, preset `{meta['preset']}`", "",
             f"- Command: `{meta['command']}`",
             f"- Date: {meta['date']}; commit {meta['commit']}",
             f"- Machine: {m['cpu']}{', ' + m['gpu'] if 'gpu' in m else ''}; torch threads {m['torch_threads']}; "
             f"torch {m['torch']}, flashsigmoid {m['flashsigmoid']}, Python {m['python']}",
             f"- Wall time: {total_wall_s if total_wall_s is not None else sum(walls):.0f} s in all"
             + (f" (LM {lm['wall_s']:.0f} s" if lm else " (") + (f", ViT {vit['wall_s']:.0f} s)" if vit else ")"),
             f"- The machine's 1-minute load average (other jobs included) at the start and end of each part: "
             + "; ".join(f"{k} {d['load_avg_1min'][0]:.1f} -> {d['load_avg_1min'][1]:.1f}"
                         for k, d in (("LM", lm), ("ViT", vit)) if d and "load_avg_1min" in d)
             + f" on {m.get('cores', '?')} cores; OMP_WAIT_POLICY={m.get('omp_wait_policy')}",
             "", "Plots: `lm_loss.png`, `lm_attn_norm.png`, `lm_length.png`, `vit.png`; every curve in "
             "`lm.json` / `lm_curves.csv` and `vit.json` / `vit_curves.csv`.", ""]
    if lm:
        write_csv(out / "lm_curves.csv", lm_rows(lm), ["variant", "curve", "step", "value"])
        plot_lm(lm, out)
        lines += lm_summary(lm) + [""]
    if vit:
        write_csv(out / "vit_curves.csv", vit_rows(vit), ["variant", "seed", "curve", "epoch_or_step", "value"])
        plot_vit(vit, out)
        lines += vit_summary(vit) + [""]
    (out / "summary.md").write_text("\n".join(lines))


if __name__ == "__main__":
    write_report(Path(sys.argv[1]))
