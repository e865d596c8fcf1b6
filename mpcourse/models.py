"""Small models for the course's experiments: big enough to show each effect, small enough for CI.

Each model uses the layers whose precision behaviour the course teaches (linear layers and
convolutions, which autocast runs in low precision; layer norm, softmax and the loss, which it may
keep in fp32; an embedding, which it leaves alone), and nothing else, so that an x-ray of it is
readable. :func:`for_data` picks a model that fits a :mod:`mpcourse.data` bundle.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .data import DataBundle, ImageData, TextData


class MLP(nn.Module):
    """Flatten, then ``depth`` hidden linear+ReLU layers of ``width``, then a linear classifier."""

    def __init__(self, in_features: int, num_classes: int, width: int = 128, depth: int = 2) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(depth):
            layers += [nn.Linear(in_features if i == 0 else width, width), nn.ReLU()]
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyCNN(nn.Module):
    """Two 3x3 convolutions with ReLU (the second with stride 2), global average pooling, a linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, stride=2)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


class Block(nn.Module):
    """A pre-norm transformer block: causal self-attention and an MLP, each with a residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(c, dim=-1)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, c))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class CharTransformer(nn.Module):
    """A small GPT-style character model: token and position embeddings, blocks, a final norm and head."""

    def __init__(
        self, vocab_size: int, block_size: int, width: int = 64, depth: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Embedding(block_size, width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)
        for name, p in self.named_parameters():  # GPT-2's initialisation, residual projections scaled down
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * depth) if name.endswith(("proj.weight", "down.weight")) else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(
                f"sequence of length {t} is longer than the model's block_size {self.block_size}"
            )
        pos = torch.arange(t, device=idx.device)
        x = self.tokens(idx) + self.positions(pos)
        return self.head(self.norm(self.blocks(x)))


def for_data(
    data: DataBundle, kind: str | None = None, *, width: int | None = None, depth: int = 2
) -> nn.Module:
    """A fresh model that fits ``data``: ``"mlp"`` (default for images), ``"cnn"``, or ``"transformer"`` (text).

    Raises:
        ValueError: for an unknown kind or one that does not fit the data, listing what fits.
    """
    if isinstance(data, TextData):
        if kind not in (None, "transformer"):
            raise ValueError(f"model kind {kind!r} does not fit text data; accepted: 'transformer'")
        return CharTransformer(data.num_classes, data.block_size, width=width or 64, depth=depth)
    if isinstance(data, ImageData):
        kind = kind or "mlp"
        channels, height, width_px = data.input_shape
        if kind == "mlp":
            return MLP(channels * height * width_px, data.num_classes, width=width or 128, depth=depth)
        if kind == "cnn":
            return TinyCNN(channels, data.num_classes, width=width or 32)
        raise ValueError(f"model kind {kind!r} does not fit image data; accepted: 'mlp', 'cnn'")
    raise TypeError(f"expected an ImageData or TextData bundle from mpcourse.data, got {type(data).__name__}")
