"""The two models of the study, built from flashsigmoid.nn.TransformerBlock."""

from typing import List

import torch
from torch import Tensor, nn

from flashsigmoid.nn import SelfAttention, TransformerBlock


def _init_weights(model: nn.Module) -> None:
    """GPT-2 style N(0, 0.02) for every Linear / Embedding; norms, LayerScale and biases keep theirs."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


class _Recorder:
    """Mixin: the attention output norm of the last forward, averaged over the layers."""

    def attention_layers(self) -> List[SelfAttention]:
        return [m for m in self.modules() if isinstance(m, SelfAttention)]

    def record_attention_norm(self, on: bool) -> None:
        for a in self.attention_layers():
            a.record_output_norm = on

    def attention_norm(self) -> float:
        return float(torch.stack([a.last_output_norm for a in self.attention_layers()]).mean())


class ByteLM(nn.Module, _Recorder):
    """Causal byte-level language model: embedding (tied with the output), pre-norm blocks, final norm."""

    def __init__(self, dim: int, layers: int, heads: int, **block_kw) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, causal=True, **block_kw) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        _init_weights(self)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens [B, N] (int64) -> logits [B, N, 256]."""
        x = self.embed(tokens)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x) @ self.embed.weight.t()


class TinyViT(nn.Module, _Recorder):
    """Vision transformer for small single-channel images: patches, a class token, learned positions."""

    def __init__(self, image: int, patch: int, dim: int, layers: int, heads: int, classes: int,
                 **block_kw) -> None:
        super().__init__()
        self.patch = patch
        n = (image // patch) ** 2
        self.embed = nn.Linear(patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, n + 1, dim))
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, **block_kw) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        _init_weights(self)

    def forward(self, images: Tensor) -> Tensor:
        """images [B, H, W] -> logits [B, classes]."""
        p = self.patch
        patches = images.unfold(1, p, p).unfold(2, p, p).flatten(3).flatten(1, 2)  # [B, n, p*p]
        x = torch.cat([self.cls.expand(images.shape[0], -1, -1), self.embed(patches)], dim=1) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, 0]))
