"""The image encoder of the released GenFusion model: the OpenCLIP ViT-H/14 vision tower, read up to its last
transformer block (no final norm, no projection), as the official ``FrozenOpenCLIPImageEmbedderV2`` does.

Parameters carry the checkpoint's names below ``embedder.`` (``model.visual.conv1.weight``,
``model.visual.transformer.resblocks.0.attn.in_proj_weight``, ...), so the vision weights load without a rename.
open_clip itself is not needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from gfbench.priors.official.loading import FolderLoadingMixin

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def gaussian_kernel1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - size // 2
    if size % 2 == 0:
        x = x + 0.5
    kernel = torch.exp(-x.pow(2) / (2.0 * sigma ** 2))
    return kernel / kernel.sum()


def antialiased_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize (``align_corners=True``) with kornia's ``resize(..., antialias=True)`` pre-blur: when any
    side shrinks, a Gaussian with sigma ``(factor - 1) / 2`` and an odd kernel of about 4 sigma, reflect-padded.

    Written here (not kornia) so the project needs no image-processing dependency for one function; the parity
    fixture pins it to kornia's output."""
    height, width = image.shape[-2:]
    if (height, width) == tuple(size):
        return image
    factors = (height / size[0], width / size[1])
    if max(factors) > 1:
        sigmas = [max((factor - 1.0) / 2.0, 0.001) for factor in factors]
        kernel_sizes = [int(max(4.0 * sigma, 3)) for sigma in sigmas]
        kernel_sizes = [k + 1 if k % 2 == 0 else k for k in kernel_sizes]
        image = _separable_blur(image, kernel_sizes, sigmas)
    return F.interpolate(image, size=size, mode="bicubic", align_corners=True)


def _separable_blur(image: torch.Tensor, kernel_sizes: list[int], sigmas: list[float]) -> torch.Tensor:
    channels = image.shape[1]
    ky, kx = (gaussian_kernel1d(k, s, image.dtype, image.device) for k, s in zip(kernel_sizes, sigmas))
    pad_y, pad_x = kernel_sizes[0] // 2, kernel_sizes[1] // 2
    padded = F.pad(image, (pad_x, pad_x, pad_y, pad_y), mode="reflect")
    blurred = F.conv2d(padded, kx.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(blurred, ky.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


class SelfAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameters (packed ``in_proj``), computed with scaled-dot-product attention."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        split = lambda t: t.reshape(batch, length, self.heads, -1).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers))


class VisionTower(nn.Module):
    """Patch embedding, class token, positions, pre-norm and the transformer blocks (no ``ln_post``/``proj``)."""

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        grid = image_size // patch_size
        self.conv1 = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * width ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width) * width ** -0.5)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Transformer(width, layers, heads, mlp_ratio)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        for block in self.transformer.resblocks:
            x = block(x)
        return x


class _ClipHolder(nn.Module):
    def __init__(self, visual: VisionTower):
        super().__init__()
        self.visual = visual


class OpenCLIPImageEncoder(FolderLoadingMixin, ModelMixin, ConfigMixin):
    """``(N, 3, H, W)`` images in ``[-1, 1]`` -> ``(N, 1 + (image_size // patch_size) ** 2, width)`` tokens.

    Preprocessing as the official embedder: antialiased bicubic resize to ``image_size`` squared (aspect not
    kept), map to ``[0, 1]``, normalise with the CLIP mean and std."""

    @register_to_config
    def __init__(self, image_size: int = 224, patch_size: int = 14, width: int = 1280, layers: int = 32,
                 heads: int = 16, mlp_ratio: float = 4.0, image_mean: tuple[float, ...] = CLIP_MEAN,
                 image_std: tuple[float, ...] = CLIP_STD):
        super().__init__()
        self.model = _ClipHolder(VisionTower(image_size, patch_size, width, layers, heads, mlp_ratio))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        pixels = antialiased_resize(images, (size, size))
        mean, std = (torch.tensor(values, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
                     for values in (self.config.image_mean, self.config.image_std))
        return ((pixels + 1.0) / 2.0 - mean) / std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtype = self.model.visual.conv1.weight.dtype
        return self.model.visual(self.preprocess(images.to(dtype)))

    def image_features(self, references: torch.Tensor) -> torch.Tensor:
        """The video prior's hook: reference images ``(N, 3, H, W)`` in ``[-1, 1]``, preprocessed here."""
        return self(references)
