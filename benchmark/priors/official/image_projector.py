"""The image projector of the released GenFusion model: a Perceiver resampler that turns the CLIP vision tokens
of one reference image into ``num_queries * video_length`` context tokens for the UNet's cross-attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from gfbench.priors.official.loading import FolderLoadingMixin


class PerceiverAttention(nn.Module):
    """Learned latents attend to the image tokens and to themselves (keys and values from both)."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        batch, length, _ = latents.shape
        query = self.to_q(latents)
        key, value = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        split = lambda t: t.reshape(batch, t.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731
        # softmax in float32 as the official resampler does (it is fragile in float16)
        out = F.scaled_dot_product_attention(split(query).float(), split(key).float(), split(value).float())
        return self.to_out(out.to(query.dtype).transpose(1, 2).reshape(batch, length, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, dim * mult, bias=False)
        self.proj_out = nn.Linear(dim * mult, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(F.gelu(self.proj_in(self.norm(x))))


class ResamplerLayer(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int, ff_mult: int):
        super().__init__()
        self.attention = PerceiverAttention(dim, dim_head, heads)
        self.feed_forward = FeedForward(dim, ff_mult)


class ImageProjector(FolderLoadingMixin, ModelMixin, ConfigMixin):
    """``(N, tokens, embedding_dim)`` image features -> ``(N, num_queries * video_length, output_dim)``.

    With ``video_length`` set the official resampler learns ``num_queries`` queries per frame of the clip, so one
    reference image yields ``num_queries * video_length`` tokens (256 for the released model, not 16).
    """

    @register_to_config
    def __init__(self, dim: int = 1024, depth: int = 4, dim_head: int = 64, heads: int = 12,
                 num_queries: int = 16, video_length: int | None = 16, embedding_dim: int = 1280,
                 output_dim: int = 1024, ff_mult: int = 4):
        super().__init__()
        total_queries = num_queries * (video_length or 1)
        self.latents = nn.Parameter(torch.randn(1, total_queries, dim) / dim ** 0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.layers = nn.ModuleList(ResamplerLayer(dim, dim_head, heads, ff_mult) for _ in range(depth))
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        dtype = self.proj_in.weight.dtype
        x = self.proj_in(image_features.to(dtype))
        latents = self.latents.expand(x.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer.attention(x, latents) + latents
            latents = layer.feed_forward(latents) + latents
        return self.norm_out(self.proj_out(latents))
