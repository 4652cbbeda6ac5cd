"""The study's sizes (presets) and its variants: what is compared, fixed before any run."""

import math
from dataclasses import dataclass, field
from typing import Dict, List


@dataclass(frozen=True)
class LMConfig:
    """Byte-level causal language model and its training budget."""
    dim: int
    layers: int
    heads: int
    seq_len: int  # the training length n (sigmoid bias -log n)
    batch: int
    steps: int
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_windows: int = 64  # validation windows of seq_len bytes (fewer, longer ones at 2x / 4x)
    dtype: str = "float32"  # "bfloat16": autocast on CUDA


@dataclass(frozen=True)
class ViTConfig:
    """Tiny vision transformer on scikit-learn's 8x8 digits."""
    dim: int
    layers: int
    heads: int
    patch: int
    batch: int
    epochs: int
    lr: float = 1e-3
    weight_decay: float = 0.05
    seeds: List[int] = field(default_factory=lambda: [0])


@dataclass(frozen=True)
class Preset:
    name: str
    lm: LMConfig
    vit: ViTConfig
    device: str = "cpu"
    seed: int = 0


PRESETS: Dict[str, Preset] = {
    "smoke": Preset("smoke",
                    LMConfig(dim=64, layers=1, heads=2, seq_len=32, batch=8, steps=30, lr=3e-3, warmup=5,
                             eval_every=10, eval_windows=8),
                    ViTConfig(dim=64, layers=1, heads=2, patch=2, batch=64, epochs=2)),
    "cpu": Preset("cpu",
                  LMConfig(dim=128, layers=2, heads=4, seq_len=128, batch=8, steps=500, eval_windows=32),
                  ViTConfig(dim=64, layers=2, heads=2, patch=2, batch=64, epochs=10, seeds=[0, 1, 2])),
    "gpu": Preset("gpu",
                  LMConfig(dim=512, layers=6, heads=8, seq_len=1024, batch=16, steps=1000, lr=1e-3,
                           warmup=100, eval_every=100, eval_windows=128, dtype="bfloat16"),
                  ViTConfig(dim=128, layers=4, heads=2, patch=2, batch=128, epochs=30, seeds=[0, 1, 2]),
                  device="cuda"),
}


def layer_scale_init(depth: int) -> float:
    """CaiT's (Touvron et al. 2021) LayerScale initial value for a network of this depth."""
    return 0.1 if depth <= 18 else (1e-5 if depth <= 24 else 1e-6)


def lm_variants(cfg: LMConfig) -> Dict[str, dict]:
    """Name -> (description, TransformerBlock keyword arguments). Same model otherwise."""
    ls = layer_scale_init(cfg.layers)
    b = -math.log(cfg.seq_len)
    return {
        "softmax": dict(desc="softmax, RoPE", kw=dict(attn="softmax", pos="rope")),
        "sigmoid": dict(desc=f"sigmoid, b=-log n={b:.2f}, LayerScale {ls:g}, QK-norm, RoPE",
                        kw=dict(attn="sigmoid", pos="rope", train_len=cfg.seq_len, layer_scale=ls,
                                qk_norm="layer")),
        "sigmoid-naive": dict(desc="sigmoid, b=0, no LayerScale, no QK-norm, RoPE",
                              kw=dict(attn="sigmoid", pos="rope", sigmoid_bias=0.0)),
        "sigmoid-alibi": dict(desc="sigmoid, b=0, ALiBi (no RoPE), no LayerScale, no QK-norm",
                              kw=dict(attn="sigmoid", pos="alibi", sigmoid_bias=0.0)),
        "sigmoid-bias-only": dict(desc=f"sigmoid, b=-log n={b:.2f} only (no LayerScale, no QK-norm), RoPE",
                                  kw=dict(attn="sigmoid", pos="rope", train_len=cfg.seq_len)),
        "softmax-alibi": dict(desc="softmax, ALiBi (no RoPE)", kw=dict(attn="softmax", pos="alibi")),
    }


def vit_variants(cfg: ViTConfig) -> Dict[str, dict]:
    """The paper's vision finding: sigmoid needs LayerScale, not a bias."""
    ls = layer_scale_init(cfg.layers)
    return {
        "softmax": dict(desc="softmax", kw=dict(attn="softmax")),
        "sigmoid+LS": dict(desc=f"sigmoid, b=0, LayerScale {ls:g}", kw=dict(attn="sigmoid", sigmoid_bias=0.0,
                                                                          layer_scale=ls)),
        "sigmoid": dict(desc="sigmoid, b=0, no LayerScale", kw=dict(attn="sigmoid", sigmoid_bias=0.0)),
        "sigmoid-logn+LS": dict(desc=f"sigmoid, b=-log n, LayerScale {ls:g}",
                                kw=dict(attn="sigmoid", layer_scale=ls)),
    }
