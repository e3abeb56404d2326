"""Training losses shared by the Gaussian methods: masked L1 + D-SSIM, PSNR, and the 2DGS regularizers.

Images are ``[H, W, C]`` float tensors in [0, 1]; a mask is ``[H, W]`` bool (True = pixel counts) or None.
Masked pixels never reach a loss: both the render and the target are set to zero there before any
window touches them, and every mean runs over valid pixels only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_kernel_1d(size: int, sigma: float, *, device=None, dtype=torch.float32) -> Tensor:
    """A normalized 1D Gaussian ``[size]``; its outer product with itself is the 2D SSIM window."""
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def gaussian_blur(x: Tensor, size: int, sigma: float) -> Tensor:
    """Per-channel Gaussian blur of ``[B, C, H, W]`` with zero "same" padding, as two 1D passes (the
    separable form of the 2D window: same result, a fraction of the work)."""
    channels = x.shape[1]
    g = gaussian_kernel_1d(size, sigma, device=x.device, dtype=x.dtype)
    pad = size // 2
    x = F.conv2d(x, g.view(1, 1, 1, size).expand(channels, 1, 1, size), padding=(0, pad), groups=channels)
    return F.conv2d(x, g.view(1, 1, size, 1).expand(channels, 1, size, 1), padding=(pad, 0), groups=channels)


def ssim_map(img1: Tensor, img2: Tensor, *, window_size: int, sigma: float) -> Tensor:
    """Per-pixel SSIM of two ``[B, C, H, W]`` images, Gaussian window, zero "same" padding (3DGS's SSIM)."""
    channels = img1.shape[1]
    stacked = torch.cat([img1, img2, img1 * img1, img2 * img2, img1 * img2], dim=1)
    mu1, mu2, e11, e22, e12 = gaussian_blur(stacked, window_size, sigma).split(channels, dim=1)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq, sigma2_sq, sigma12 = e11 - mu1_sq, e22 - mu2_sq, e12 - mu1_mu2
    c1, c2 = 0.01**2, 0.03**2
    numerator = (2.0 * mu1_mu2 + c1) * (2.0 * sigma12 + c2)
    denominator = (mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2)
    return numerator / denominator


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values [H, W, C]`` over the pixels where ``mask [H, W]`` holds (all pixels if None)."""
    if mask is None:
        return values.mean()
    valid = mask[..., None].expand_as(values)
    kept = torch.where(valid, values, torch.zeros_like(values))
    return kept.sum() / valid.sum().clamp_min(1)


def hide_masked(image: Tensor, mask: Tensor | None) -> Tensor:
    """``image [H, W, C]`` with masked pixels replaced by zero (no gradient flows to them)."""
    if mask is None:
        return image
    return torch.where(mask[..., None], image, torch.zeros_like(image))


def photometric_loss(
    render: Tensor,
    target: Tensor,
    mask: Tensor | None,
    *,
    ssim_lambda: float,
    ssim_window: int,
    ssim_sigma: float,
) -> tuple[Tensor, Tensor]:
    """``(1 - l) L1 + l (1 - SSIM)`` over valid pixels; returns ``(loss, l1)``."""
    render, target = hide_masked(render, mask), hide_masked(target, mask)
    l1 = masked_mean((render - target).abs(), mask)
    ssim = ssim_map(
        render.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None], window_size=ssim_window, sigma=ssim_sigma
    )
    ssim_mean = masked_mean(ssim[0].permute(1, 2, 0), mask)
    return (1.0 - ssim_lambda) * l1 + ssim_lambda * (1.0 - ssim_mean), l1


def psnr(render: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """PSNR in dB (a detached scalar tensor) of ``render`` against ``target`` ([0, 1] images), valid pixels."""
    mse = masked_mean((render.detach().clamp(0, 1) - target) ** 2, mask)
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


def normal_consistency_loss(
    render_normals: Tensor, surf_normals: Tensor, alphas: Tensor, mask: Tensor | None
) -> Tensor:
    """2DGS normal consistency: mean of ``1 - n_render . (alpha * n_surface)`` over valid pixels.

    ``render_normals`` and ``surf_normals`` are ``[H, W, 3]`` in one frame; ``surf_normals`` come from the
    rendered depth and are weighted by the (detached) rendered ``alphas [H, W, 1]`` as in 2DGS.
    """
    weighted = surf_normals * alphas.detach()
    error = 1.0 - (render_normals * weighted).sum(dim=-1, keepdim=True)
    return masked_mean(error, mask)


def distortion_loss(render_distort: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of the rasterizer's per-pixel depth distortion ``[H, W, 1]`` over valid pixels."""
    return masked_mean(render_distort, mask)
