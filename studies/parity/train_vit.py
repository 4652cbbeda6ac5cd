"""Trains one tiny-ViT variant on the digits for one seed: loss and accuracy per epoch."""

import contextlib
import math
import time
from typing import Dict, List

import torch
import torch.nn.functional as F

from models import TinyViT
from presets import Preset


def autocast_for(device: str):
    """bf16 autocast on CUDA (where the library takes fp16 / bf16 only); float32 on the CPU."""
    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: TinyViT, x: torch.Tensor, y: torch.Tensor):
    model.eval()
    with autocast_for(x.device.type):
        logits = model(x).float()
    model.train()
    return F.cross_entropy(logits, y).item(), (logits.argmax(-1) == y).float().mean().item()


def train_vit(preset: Preset, variant: dict, seed: int, data, log=print) -> Dict[str, object]:
    cfg = preset.vit
    x_tr, y_tr, x_va, y_va = (t.to(preset.device) for t in data)
    torch.manual_seed(seed)
    model = TinyViT(x_tr.shape[-1], cfg.patch, cfg.dim, cfg.layers, cfg.heads, 10, **variant["kw"]).to(preset.device)
    model.record_attention_norm(True)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = math.ceil(len(x_tr) / cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                pct_start=0.1)
    order = torch.Generator().manual_seed(seed + 1)
    curves: Dict[str, List] = {"epoch": [], "train_loss": [], "val_loss": [], "val_acc": [], "attn_norm": []}
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(x_tr), generator=order).to(preset.device)
        total = 0.0
        for i in range(0, len(x_tr), cfg.batch):
            idx = perm[i:i + cfg.batch]
            with autocast_for(preset.device):
                logits = model(x_tr[idx])
            loss = F.cross_entropy(logits.float(), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            curves["attn_norm"].append(model.attention_norm())
        vl, va = evaluate(model, x_va, y_va)
        curves["epoch"].append(epoch + 1)
        curves["train_loss"].append(total / len(x_tr))
        curves["val_loss"].append(vl)
        curves["val_acc"].append(va)
    log(f"  vit {variant['desc']} seed {seed}: val acc {curves['val_acc'][-1]:.4f} loss {curves['val_loss'][-1]:.4f}")
    return {"curves": curves, "final_val_acc": curves["val_acc"][-1], "final_val_loss": curves["val_loss"][-1],
            "train_time_s": time.perf_counter() - t0}
