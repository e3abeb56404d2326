"""The loss terms GenFusion adds to 2DGS, by view kind, with the preset's switches and numbers.

- Repaired view (official ``TrainManager.train``, the ``reg_*`` branch): the photometric loss of the train views
  (``(1 - ssim_lambda) L1 + ssim_lambda D-SSIM``) against the repaired RGB if ``sample_view_rgb``, plus the
  SSI depth loss against the repaired depth if ``sample_view_depth``. The sum is weighted by the schedule's
  ``w(step)`` (:meth:`RepairSchedule.weight`), which the training loop applies.
- Train view: the SSI depth loss against the video prior's depth for that frame, times
  ``train_view_depth_weight``, if ``train_view_depth``.
Images are ``[H, W, 3]`` in [0, 1], depths ``[H, W]``, masks ``[H, W]`` bool or None.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

from gfbench.methods.core.losses import photometric_loss
from gfbench.methods.genfusion.depth_loss import ssi_depth_loss


def depth_term(rendered_depth: Tensor, target_depth: Tensor, mask: Tensor | None, config: Mapping[str, Any]) -> Tensor:
    """The SSI depth loss with the preset's ``depth_loss_*`` numbers."""
    return ssi_depth_loss(
        rendered_depth,
        target_depth,
        mask,
        chunks=config["depth_loss_chunks"],
        gradient_weight=float(config["depth_loss_gradient_weight"]),
        gradient_scales=int(config["depth_loss_gradient_scales"]),
        eps=float(config["depth_loss_eps"]),
    )


def repaired_view_terms(
    rendered_rgb: Tensor,
    rendered_depth: Tensor,
    repaired_rgb: Tensor,
    repaired_depth: Tensor,
    config: Mapping[str, Any],
    mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """Unweighted loss terms of one repaired view: ``repair_rgb`` and/or ``repair_depth`` per the switches."""
    terms = {}
    if config["sample_view_rgb"]:
        terms["repair_rgb"], _ = photometric_loss(
            rendered_rgb,
            repaired_rgb,
            mask,
            ssim_lambda=float(config["ssim_lambda"]),
            ssim_window=int(config["ssim_window"]),
            ssim_sigma=float(config["ssim_sigma"]),
        )
    if config["sample_view_depth"]:
        terms["repair_depth"] = depth_term(rendered_depth, repaired_depth, mask, config)
    return terms


def train_view_depth_terms(
    rendered_depth: Tensor, prior_depth: Tensor, config: Mapping[str, Any], mask: Tensor | None = None
) -> dict[str, Tensor]:
    """The weighted ``train_depth`` term of one train view (none when ``train_view_depth`` is off)."""
    if not config["train_view_depth"]:
        return {}
    return {"train_depth": float(config["train_view_depth_weight"]) * depth_term(rendered_depth, prior_depth, mask, config)}


__all__ = ["depth_term", "repaired_view_terms", "train_view_depth_terms"]
