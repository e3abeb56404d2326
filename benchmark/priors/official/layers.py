"""Building blocks shared by the official-layout models: attention through PyTorch's scaled-dot-product attention,
the gated feed-forward, the spatial and temporal transformers and the sinusoidal step embedding.

Parameter names follow the released GenFusion / DynamiCrafter checkpoint where the two layouts agree
(``to_q``/``to_k``/``to_v``, ``attn1``/``attn2``/``ff``/``norm1..3``); :mod:`.key_map` renames the rest.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def multihead_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax attention of ``(B, N, heads*d)`` queries over ``(B, M, heads*d)`` keys and values, scaled by
    ``1/sqrt(d)``; an empty key set attends to nothing and gives zeros (as the official einsum path does)."""
    batch, length, inner = query.shape
    if key.shape[1] == 0:
        return query.new_zeros(batch, length, value.shape[-1])
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(query), split(key), split(value))
    return out.transpose(1, 2).reshape(batch, length, -1)


def sinusoidal_embedding(steps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``(N,)`` steps (diffusion steps or frame rates) -> ``(N, dim)`` float32 embedding, cosines first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=steps.device) / half)
    args = steps.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class Attention(nn.Module):
    """Multi-head attention with bias-free q/k/v projections.

    With ``image_context_dim`` set it is the official image cross-attention: the first ``text_context_len``
    context tokens go through ``to_k``/``to_v``, the remaining ones through ``to_k_ip``/``to_v_ip`` and the two
    attention results are added. GenFusion never feeds text, so its image tokens fill the "text" slots first;
    that split is part of how the released weights were trained and is kept as is.
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None,
                 image_cross_attention: bool = False, text_context_len: int = 77):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.text_context_len = text_context_len
        self.image_cross_attention = image_cross_attention
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        if image_cross_attention:
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        query = self.to_q(x)
        if context is None:
            return self.to_out(multihead_attention(query, self.to_k(x), self.to_v(x), self.heads))
        first = context[:, : self.text_context_len]
        out = multihead_attention(query, self.to_k(first), self.to_v(first), self.heads)
        if self.image_cross_attention:
            rest = context[:, self.text_context_len:]
            out = out + multihead_attention(query, self.to_k_ip(rest), self.to_v_ip(rest), self.heads)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class GatedFeedForward(nn.Module):
    """GEGLU feed-forward, 4x wide; ``net.0`` / ``net.2`` as in the checkpoint (``net.1`` is a no-op dropout)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, a second attention (cross-attention when ``context_dim`` is set, else another
    self-attention) and a gated feed-forward, each residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None = None,
                 image_cross_attention: bool = False, text_context_len: int = 77):
        super().__init__()
        self.attn1 = Attention(dim, heads, dim_head)
        self.attn2 = Attention(dim, heads, dim_head, context_dim=context_dim,
                               image_cross_attention=image_cross_attention, text_context_len=text_context_len)
        self.ff = GatedFeedForward(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Attention over the pixels of each frame: ``(B*T, C, H, W)`` in and out, cross-attending to ``context``."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int,
                 image_cross_attention: bool, text_context_len: int, norm_groups: int = 32):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, dim_head, context_dim=context_dim,
                             image_cross_attention=image_cross_attention, text_context_len=text_context_len)
            for _ in range(depth))
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        frames, channels, height, width = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        h = self.proj_out(h).transpose(1, 2).reshape(frames, channels, height, width)
        return h + x


class PointwiseConv1d(nn.Conv1d):
    """A kernel-1 ``Conv1d`` applied to ``(..., C)`` tokens: the checkpoint's weight shape, a linear's math."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[..., 0], self.bias)


class TemporalTransformer(nn.Module):
    """Self-attention along time at each pixel: ``(B, C, T, H, W)`` in and out. ``pointwise_conv`` selects
    1x1 ``Conv1d`` projections (the input-level block of the official UNet) instead of linear ones."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, pointwise_conv: bool = False,
                 norm_groups: int = 32):
        super().__init__()
        inner = heads * dim_head
        projection = PointwiseConv1d if pointwise_conv else nn.Linear
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = projection(channels, inner)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(inner, heads, dim_head) for _ in range(depth))
        self.proj_out = projection(inner, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        h = self.norm(x).permute(0, 3, 4, 2, 1).reshape(batch * height * width, frames, channels)
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h)
        h = self.proj_out(h).reshape(batch, height, width, frames, channels).permute(0, 4, 3, 1, 2)
        return h + x
