"""GenFusion's depth term: a scale-and-shift-invariant loss on inverse depth (Ranftl et al., MiDaS), as the
official code computes it (``Reconstruction/utils/depth_loss_utils.py``, ``ScaleAndShiftInvariantLoss``).

Both depths are turned into inverse depth ``1 / (d + eps)``. The map is reshaped, in row-major order, into
``chunks`` rows (the code: 32, whatever the image size; ``None`` keeps the image's own rows). One scale and
one shift, the least-squares fit of the prediction to the target over all valid pixels, align the
prediction; the loss is the mean squared residual plus ``gradient_weight`` times the gradient-matching term
(mean absolute difference of neighbouring residuals) summed over ``gradient_scales`` scales.

What the code does, read closely (the supplement only names the loss):
- The scale and shift are solved once per image, not per chunk: the code sums its normal equations over both
  axes of the ``(1, 32, H*W/32)`` array. The 32 chunks only shape the gradient term, whose "x" neighbours are
  consecutive pixels of the flattened image (wrapping from one row's end to the next row's start) and whose
  "y" neighbours lie ``H*W/32`` pixels apart (``H/32`` rows when 32 divides H).
- The gradient term has one scale (``ScaleAndShiftInvariantLoss(scales=1)``); MiDaS's default is 4.
- The code passes no mask; ``mask`` here is for views whose pixels do not all count.
With ``chunks=None, gradient_scales=4`` this is MiDaS's image-grid loss.
"""

from __future__ import annotations

import torch
from torch import Tensor


def inverse_depth(depth: Tensor, eps: float) -> Tensor:
    """``1 / (depth + eps)``, as the code turns depth into disparity (a zero depth gives ``1 / eps``)."""
    return 1.0 / (depth + eps)


def scale_and_shift(prediction: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The least-squares ``(scale, shift)`` minimising ``sum(mask * (scale * prediction + shift - target)^2)``.

    Solved from the 2x2 normal equations (MiDaS's closed form), accumulated in float64: the sums of squared
    inverse depths reach 1e17 at full resolution, where float32 loses the determinant. A singular system
    (fewer than two distinct valid values) gives ``(0, 0)``, as in the code. Gradients flow through both.
    """
    p, t, m = prediction.double(), target.double(), mask.double()
    a00, a01, a11 = (m * p * p).sum(), (m * p).sum(), m.sum()
    b0, b1 = (m * p * t).sum(), (m * t).sum()
    det = a00 * a11 - a01 * a01
    if det.item() == 0.0:
        zero = torch.zeros((), dtype=prediction.dtype, device=prediction.device)
        return zero, zero
    scale = (a11 * b0 - a01 * b1) / det
    shift = (a00 * b1 - a01 * b0) / det
    return scale.to(prediction.dtype), shift.to(prediction.dtype)


def gradient_matching(residual: Tensor, mask: Tensor) -> Tensor:
    """MiDaS's gradient term on a 2D grid: the absolute differences of the masked residual between
    horizontal and between vertical neighbours (both valid), summed and divided by the valid count."""
    diff = mask * residual
    grad_x = (diff[:, 1:] - diff[:, :-1]).abs() * (mask[:, 1:] * mask[:, :-1])
    grad_y = (diff[1:, :] - diff[:-1, :]).abs() * (mask[1:, :] * mask[:-1, :])
    return (grad_x.sum() + grad_y.sum()) / mask.sum()


def ssi_depth_loss(
    rendered_depth: Tensor,
    target_depth: Tensor,
    mask: Tensor | None = None,
    *,
    chunks: int | None = 32,
    gradient_weight: float = 0.5,
    gradient_scales: int = 1,
    eps: float = 1e-6,
) -> Tensor:
    """The scale-and-shift-invariant loss of ``rendered_depth [H, W]`` against ``target_depth [H, W]``.

    ``mask [H, W]`` (bool, True = the pixel counts) restricts every sum to valid pixels; with no valid pixel
    the loss is zero. ``H * W`` must be divisible by ``chunks``.
    """
    if rendered_depth.shape != target_depth.shape or rendered_depth.dim() != 2:
        raise ValueError(
            f"depth loss: rendered depth {tuple(rendered_depth.shape)} and target depth "
            f"{tuple(target_depth.shape)} must be two [H, W] maps of one size"
        )
    if mask is not None and mask.shape != rendered_depth.shape:
        raise ValueError(f"depth loss: mask {tuple(mask.shape)} does not match depth {tuple(rendered_depth.shape)}")
    if gradient_scales < 1:
        raise ValueError(f"depth loss: gradient_scales must be at least 1, got {gradient_scales}")
    height, width = rendered_depth.shape
    rows = height if chunks is None else int(chunks)
    if rows < 1 or (height * width) % rows:
        raise ValueError(f"depth loss: a {width}x{height} map ({height * width} pixels) does not split into "
                         f"{chunks} equal chunks")
    prediction = inverse_depth(rendered_depth, eps).reshape(rows, -1)
    target = inverse_depth(target_depth, eps).reshape(rows, -1)
    valid = (torch.ones_like(prediction) if mask is None else mask.reshape(rows, -1).to(prediction.dtype))
    if valid.sum().item() == 0:
        return (prediction * 0.0).sum()
    scale, shift = scale_and_shift(prediction, target, valid)
    residual = scale * prediction + shift - target
    loss = (valid * residual * residual).sum() / valid.sum()
    for level in range(gradient_scales):
        step = 2**level
        sub_mask = valid[::step, ::step]
        if sub_mask.sum().item() > 0:
            loss = loss + gradient_weight * gradient_matching(residual[::step, ::step], sub_mask)
    return loss


__all__ = ["gradient_matching", "inverse_depth", "scale_and_shift", "ssi_depth_loss"]
