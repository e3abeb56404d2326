"""GenFusion's presets (``presets_draft.yaml``): loading, the 2DGS preset each one extends, and the choice of
per-protocol values.

A setting written ``{masked: a, sparse: b}`` differs per protocol; :func:`for_protocol` replaces every such
mapping by the protocol's value. ``extends: 2dgs/<preset>`` names the 2DGS preset a GenFusion preset builds
on (until the method contract's shared base and ``include:`` replace it).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gfbench.methods import load_preset
from gfbench.methods.genfusion.trajectories import PROTOCOLS

DRAFT = Path(str(resources.files("gfbench.methods.genfusion") / "presets_draft.yaml"))
STRATEGIES = ("default", "sparsity_aware")

# The settings GenFusion adds to 2DGS's (every preset must give each; the rest must be 2DGS settings).
GENFUSION_KEYS = (
    "train_view_depth", "sample_view_rgb", "sample_view_depth", "strategy",
    "repair_start", "repair_every", "repair_until", "lambda_reg",
    "train_view_depth_weight", "depth_loss_chunks", "depth_loss_gradient_weight", "depth_loss_gradient_scales",
    "depth_loss_eps",
    "min_visibility_base", "min_visibility_every", "min_visibility_cap", "stats_reset_count",
    "window_frames", "window_rule", "reference_rule",
    "diffusion_crop_width", "diffusion_crop_height", "diffusion_resize_width", "diffusion_resize_height",
    "guidance_scale",
    "ellipse_frames", "ellipse_radius_percentile", "ellipse_radius_scale", "ellipse_height_low_percentile",
    "ellipse_height_high_percentile", "ellipse_height_variation_start", "ellipse_height_variation_step",
    "ellipse_height_variation_min", "ellipse_tilt_degrees_per_round",
)


def is_per_protocol(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and set(value) <= set(PROTOCOLS)


def for_protocol(config: dict[str, Any], protocol: str) -> dict[str, Any]:
    """``config`` with every per-protocol value replaced by ``protocol``'s."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    out = {}
    for key, value in config.items():
        if is_per_protocol(value):
            if protocol not in value:
                raise KeyError(f"setting {key!r} has no value for the {protocol} protocol: {value}")
            value = value[protocol]
        out[key] = value
    return out


def load_draft(path: Path = DRAFT) -> dict[str, dict[str, Any]]:
    """Preset name -> its settings as written (``extends`` and per-protocol values unresolved)."""
    presets = yaml.safe_load(Path(path).read_text()) or {}
    for name, settings in presets.items():
        if not isinstance(settings, dict) or not str(settings.get("extends", "")).startswith("2dgs/"):
            raise ValueError(f"{path}: preset {name!r} must be a mapping with `extends: 2dgs/<preset>`")
    return presets


def resolve_preset(name: str, protocol: str, path: Path = DRAFT) -> dict[str, Any]:
    """The full config of preset ``name`` for ``protocol``: its 2DGS preset, then GenFusion's settings."""
    presets = load_draft(path)
    if name not in presets:
        raise KeyError(f"{path}: genfusion has no preset {name!r}; presets: {', '.join(presets)}")
    settings = dict(presets[name])
    base = load_preset("2dgs", settings.pop("extends").split("/", 1)[1])
    return for_protocol({**base, **settings}, protocol)


__all__ = ["DRAFT", "GENFUSION_KEYS", "PROTOCOLS", "STRATEGIES", "for_protocol", "load_draft", "resolve_preset"]
