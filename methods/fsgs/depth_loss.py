"""FSGS's depth correlation loss and its schedule.

The loss compares the *rendered depth* (FSGS's rasterizer accumulates ``sum_i z_i alpha_i T_i`` without
normalising by the accumulated alpha, gsplat's "D" render mode) with a monocular prior's *relative inverse
depth* through the Pearson correlation, which ignores the prior's unknown scale and shift:

- ``negated`` (the paper's loss; the code's form on pseudo views, ``train.py`` line 127, and the first term on
  train views): ``1 - pearson(rendered_depth, -prior_inverse_depth)``. Depth grows where inverse depth
  shrinks, so a rendering that agrees with the prior scores near 0 and one that is inverted near 2.
- ``min-of-two`` (the code on train views, ``train.py`` lines 105-108): the smaller of that and
  ``1 - pearson(rendered_depth, 1 / (prior_inverse_depth + offset))`` with offset 200, a number tied to the
  scale of MiDaS DPT-Hybrid's output.

The schedule (weights per step) follows ``train.py``; all numbers come from the preset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

TRAIN_FORMS = ("negated", "min-of-two")
VARIANCE_FLOOR = 1e-20  # below this product of variances the correlation is undefined (a constant map)


def _flatten_pair(x: Tensor, y: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    x, y = x.squeeze(-1) if x.dim() == 3 else x, y.squeeze(-1) if y.dim() == 3 else y
    if x.shape != y.shape:
        raise ValueError(
            f"depth maps differ in shape: rendered {list(x.shape)} vs prior {list(y.shape)}; "
            "resize the prior's estimate to the rendered size first"
        )
    if mask is None:
        return x.reshape(-1), y.reshape(-1)
    mask = mask.squeeze(-1) if mask.dim() == 3 else mask
    if mask.shape != x.shape:
        raise ValueError(f"mask of shape {list(mask.shape)} does not match the depth maps {list(x.shape)}")
    keep = mask.bool()
    return x[keep], y[keep]


def pearson_correlation(x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Pearson correlation of two maps of the same shape over the pixels where ``mask`` is true.

    Where it is undefined (fewer than two pixels, or a constant map) it is 0 with a zero gradient, so the loss
    neither turns NaN nor pushes anything (FSGS skips a NaN pseudo-view loss, ``train.py`` line 129).
    """
    x, y = _flatten_pair(x, y, mask)
    if x.numel() < 2:
        return (x.sum() + y.sum()) * 0.0
    x = x - x.mean()
    y = y - y.mean()
    covariance = (x * y).mean()
    variance_product = (x * x).mean() * (y * y).mean()
    defined = variance_product > VARIANCE_FLOOR  # a tensor test: no device sync
    return torch.where(defined, covariance / variance_product.clamp_min(VARIANCE_FLOOR).sqrt(), covariance * 0.0)


def depth_correlation_loss(rendered_depth: Tensor, prior_inverse_depth: Tensor, mask: Tensor | None = None) -> Tensor:
    """``1 - pearson(rendered_depth, -prior_inverse_depth)`` over the masked pixels: 0 when the rendered depth
    is an increasing affine function of the prior's depth ordering, 2 when it is reversed."""
    return 1.0 - pearson_correlation(rendered_depth, -prior_inverse_depth, mask)


def depth_correlation_loss_min_of_two(
    rendered_depth: Tensor, prior_inverse_depth: Tensor, mask: Tensor | None = None, *, inverse_offset: float = 200.0
) -> Tensor:
    """The official code's train-view form: the smaller of :func:`depth_correlation_loss` and
    ``1 - pearson(rendered_depth, 1 / (prior_inverse_depth + inverse_offset))``."""
    negated = depth_correlation_loss(rendered_depth, prior_inverse_depth, mask)
    pseudo_depth = 1.0 - pearson_correlation(rendered_depth, 1.0 / (prior_inverse_depth + inverse_offset), mask)
    return torch.minimum(negated, pseudo_depth)


@dataclass(frozen=True)
class DepthLossSchedule:
    """When and how strongly the depth losses apply, per (0-based) training step.

    Train views: ``train_weight`` up to ``pseudo_stop_iter``, then ``train_weight_late`` (``train.py``
    lines 109-112). Pseudo views: one every ``pseudo_every`` steps strictly between ``pseudo_start_iter`` and
    ``pseudo_stop_iter``, weighted ``pseudo_weight x min((step - start) / pseudo_ramp, 1)`` (``train.py``
    lines 116-131). FSGS counts iterations from 1; these conditions read gfbench's steps as gsplat's strategy
    does (a one-step shift, as for the 3DGS schedule).
    """

    train_weight: float
    train_weight_late: float
    train_form: str
    inverse_offset: float
    pseudo_weight: float
    pseudo_start_iter: int
    pseudo_stop_iter: int
    pseudo_every: int
    pseudo_ramp: int

    def __post_init__(self) -> None:
        if self.train_form not in TRAIN_FORMS:
            raise ValueError(f"depth_train_form must be one of {', '.join(TRAIN_FORMS)}; got {self.train_form!r}")
        if self.pseudo_every < 1:
            raise ValueError(f"pseudo_every must be at least 1, got {self.pseudo_every}")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "DepthLossSchedule":
        keys = dict(
            train_weight="depth_weight", train_weight_late="depth_weight_late", train_form="depth_train_form",
            inverse_offset="depth_inverse_offset", pseudo_weight="depth_pseudo_weight",
            pseudo_start_iter="pseudo_start_iter", pseudo_stop_iter="pseudo_stop_iter",
            pseudo_every="pseudo_every", pseudo_ramp="depth_pseudo_ramp",
        )
        missing = [key for key in keys.values() if key not in config]
        if missing:
            raise KeyError(f"FSGS config lacks depth-loss settings: {', '.join(missing)}")
        return cls(**{field: config[key] for field, key in keys.items()})

    def train_weight_at(self, step: int) -> float:
        return self.train_weight if step <= self.pseudo_stop_iter else self.train_weight_late

    def is_pseudo_step(self, step: int) -> bool:
        return self.pseudo_start_iter < step < self.pseudo_stop_iter and step % self.pseudo_every == 0

    def pseudo_weight_at(self, step: int) -> float:
        """The pseudo-view depth weight at ``step``: 0 on steps without a pseudo view."""
        if not self.is_pseudo_step(step):
            return 0.0
        ramp = 1.0 if self.pseudo_ramp <= 0 else min((step - self.pseudo_start_iter) / self.pseudo_ramp, 1.0)
        return self.pseudo_weight * ramp

    def train_view_loss(self, rendered_depth: Tensor, prior_inverse_depth: Tensor, mask: Tensor | None = None) -> Tensor:
        """The unweighted train-view depth loss in the configured form."""
        if self.train_form == "min-of-two":
            return depth_correlation_loss_min_of_two(
                rendered_depth, prior_inverse_depth, mask, inverse_offset=self.inverse_offset
            )
        return depth_correlation_loss(rendered_depth, prior_inverse_depth, mask)

    def pseudo_view_loss(self, rendered_depth: Tensor, prior_inverse_depth: Tensor, mask: Tensor | None = None) -> Tensor:
        """The unweighted pseudo-view depth loss (always the negated form, as the code and the paper)."""
        return depth_correlation_loss(rendered_depth, prior_inverse_depth, mask)


__all__ = [
    "DepthLossSchedule",
    "TRAIN_FORMS",
    "depth_correlation_loss",
    "depth_correlation_loss_min_of_two",
    "pearson_correlation",
]
