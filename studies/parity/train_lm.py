"""Trains one byte-level LM variant and measures it: loss curves, attention norm, length generalisation."""

import contextlib
import math
import time
from typing import Dict, List

import torch
import torch.nn.functional as F

from models import ByteLM
from presets import LMConfig, Preset


def lr_at(step: int, cfg: LMConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))


def make_optimizer(model: torch.nn.Module, cfg: LMConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms, biases, LayerScale or the sigmoid bias)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))


def windows(data: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """[len(starts), length + 1] int64 byte windows."""
    offsets = torch.arange(length + 1)
    return data[starts[:, None] + offsets].long()


def autocast_for(preset: Preset):
    if preset.lm.dtype == "bfloat16":
        return torch.autocast(preset.device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def val_loss(model: ByteLM, val: torch.Tensor, length: int, count: int, preset: Preset, chunk: int = 16) -> float:
    """Mean next-byte loss (nats) over `count` windows of `length` bytes spread evenly over val.
    The same windows for every variant."""
    model.eval()
    starts = torch.linspace(0, len(val) - length - 2, count).long()
    total, n = 0.0, 0
    for i in range(0, count, chunk):
        w = windows(val, starts[i:i + chunk], length).to(preset.device)
        with autocast_for(preset):
            logits = model(w[:, :-1])
        total += F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten(), reduction="sum").item()
        n += w[:, 1:].numel()
    model.train()
    return total / n


def train_lm(preset: Preset, name: str, variant: dict, train: torch.Tensor, val: torch.Tensor,
             log=print) -> Dict[str, object]:
    cfg = preset.lm
    torch.manual_seed(preset.seed)  # same initial weights for every variant
    model = ByteLM(cfg.dim, cfg.layers, cfg.heads, **variant["kw"]).to(preset.device)
    model.record_attention_norm(True)
    opt = make_optimizer(model, cfg)
    batches = torch.Generator().manual_seed(preset.seed + 1)  # same batches for every variant
    curves: Dict[str, List] = {"step": [], "train_loss": [], "attn_norm": [], "grad_norm": [],
                               "val_step": [], "val_loss": []}
    train_time, diverged = 0.0, False
    for step in range(cfg.steps):
        starts = torch.randint(0, len(train) - cfg.seq_len - 1, (cfg.batch,), generator=batches)
        w = windows(train, starts, cfg.seq_len).to(preset.device)
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        with autocast_for(preset):
            logits = model(w[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if preset.device == "cuda":
            torch.cuda.synchronize()
        train_time += time.perf_counter() - t0
        curves["step"].append(step)
        curves["train_loss"].append(loss.item())
        curves["attn_norm"].append(model.attention_norm())
        curves["grad_norm"].append(float(grad_norm))
        if not math.isfinite(loss.item()):
            diverged = True
            log(f"  {name}: loss {loss.item()} at step {step}: stopped")
            break
        if step % cfg.eval_every == 0 or step == cfg.steps - 1:
            curves["val_step"].append(step)
            curves["val_loss"].append(val_loss(model, val, cfg.seq_len, cfg.eval_windows, preset))
            log(f"  {name}: step {step} train {loss.item():.4f} val {curves['val_loss'][-1]:.4f} "
                f"attn-norm {curves['attn_norm'][-1]:.3g}")
    lengths = {}
    if not diverged:
        for mult in (1, 2, 4):
            lengths[str(mult)] = val_loss(model, val, mult * cfg.seq_len, max(1, cfg.eval_windows // mult), preset)
    steps_done = len(curves["step"])
    return {
        "desc": variant["desc"],
        "kw": variant["kw"],
        "params": sum(p.numel() for p in model.parameters()),
        "curves": curves,
        "diverged": diverged,
        "final_val_loss": curves["val_loss"][-1] if curves["val_loss"] and not diverged else float("nan"),
        "val_loss_by_length": lengths,
        "tokens_per_s": steps_done * cfg.batch * cfg.seq_len / train_time,
        "train_time_s": train_time,
    }
