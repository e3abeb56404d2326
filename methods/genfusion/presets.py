"""GenFusion's presets (``methods/presets/genfusion.yaml``): resolution for a protocol, and the settings
GenFusion adds to 2DGS's.

A setting written ``{masked: a, sparse: b}`` differs per protocol; the runner resolves it with the suite's
protocol type (:meth:`gfbench.methods.config.MethodPresets.config`), and :func:`resolve_preset` does the same
for a preset by name.
"""

from __future__ import annotations

from typing import Any

from gfbench.methods import method_presets
from gfbench.methods.config import for_protocol, is_per_protocol
from gfbench.methods.genfusion.trajectories import PROTOCOLS

METHOD = "genfusion"
STRATEGIES = ("default", "sparsity_aware")
TRAJECTORIES = {"train_poses": "masked", "ellipse": "sparse"}  # trajectory setting -> repair_trajectory's kind

# The settings GenFusion adds to 2DGS's (every preset must give each; the rest are 2DGS settings).
GENFUSION_KEYS = (
    "train_view_depth", "sample_view_rgb", "sample_view_depth", "strategy",
    "repair_start", "repair_every", "repair_until", "lambda_reg",
    "train_view_depth_weight", "depth_loss_chunks", "depth_loss_gradient_weight", "depth_loss_gradient_scales",
    "depth_loss_eps",
    "min_visibility_base", "min_visibility_every", "min_visibility_cap", "stats_reset_count",
    "trajectory", "window_frames", "window_rule", "reference_rule",
    "diffusion_crop_width", "diffusion_crop_height", "diffusion_resize_width", "diffusion_resize_height",
    "guidance_scale",
    "ellipse_frames", "ellipse_radius_percentile", "ellipse_radius_scale", "ellipse_height_low_percentile",
    "ellipse_height_high_percentile", "ellipse_height_variation_start", "ellipse_height_variation_step",
    "ellipse_height_variation_min", "ellipse_tilt_degrees_per_round",
)


def preset_names() -> list[str]:
    return list(method_presets(METHOD).presets)


def resolve_preset(name: str, protocol: str) -> dict[str, Any]:
    """The full config of preset ``name`` for ``protocol`` (2DGS's settings and GenFusion's), checked."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    return method_presets(METHOD).config(name, protocol)


__all__ = ["GENFUSION_KEYS", "METHOD", "PROTOCOLS", "STRATEGIES", "TRAJECTORIES", "for_protocol", "is_per_protocol",
           "preset_names", "resolve_preset"]
