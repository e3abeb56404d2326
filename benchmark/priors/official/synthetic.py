"""Deterministic stand-ins for the released weights: tests, the parity fixture and tiny official-layout
checkpoints for CPU runs.

Each tensor is a pure function of its official key name and shape (an integer hash, no random generator), so the
official code in a scratch environment and the project's tests produce bit-identical weights without storing
them.
"""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from gfbench.priors.official.architecture import OfficialArchitecture
from gfbench.priors.official.key_map import KeyMap

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def hashed_uniform(name: str, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Values in ``[-1, 1)`` from a splitmix64 hash of (crc32 of ``name``, element index); float32."""
    count = math.prod(shape)
    with np.errstate(over="ignore"):
        z = np.arange(count, dtype=np.uint64) + np.uint64(zlib.crc32(name.encode())) * np.uint64(1 << 32)
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        z = z ^ (z >> np.uint64(31))
    unit = (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return torch.from_numpy((2.0 * unit - 1.0).astype(np.float32)).reshape(tuple(shape))


def synthetic_weight(name: str, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """A plausible tensor for parameter ``name``: matrices and kernels with variance ``1/fan_in``, norm scales
    around 1, biases and other vectors small."""
    values = hashed_uniform(name, shape)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:]) if name.endswith("weight") else shape[-1]
        return values * math.sqrt(3.0 / fan_in)
    if name.endswith("weight"):
        return 1.0 + 0.2 * values
    return 0.1 * values


def synthetic_state_dict(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {name: synthetic_weight(name, tuple(shape)) for name, shape in shapes.items()}


def official_shapes(architecture: OfficialArchitecture,
                    components: tuple[str, ...] = ("unet", "image_projector", "image_encoder", "vae")
                    ) -> dict[str, tuple[int, ...]]:
    """Official checkpoint key -> shape for the components the project loads, derived from the project's models
    (on the meta device) through the inverse key map."""
    key_map = KeyMap(architecture.unet)
    shapes = {}
    for component in components:
        model = architecture.build(component, device="meta")
        for key, tensor in model.state_dict().items():
            shapes[key_map.to_official(component, key)] = tuple(tensor.shape)
    return shapes


def write_official_layout_checkpoint(path: str | os.PathLike, architecture: OfficialArchitecture,
                                     extra: Mapping[str, torch.Tensor] | None = None) -> Path:
    """A Lightning-style ``.ckpt`` (``{"state_dict": ...}``) with synthetic weights in the official key layout
    for ``architecture``, plus the schedule buffers and ``extra`` tensors; what ``convert_checkpoint`` reads."""
    state = synthetic_state_dict(official_shapes(architecture))
    alphas_cumprod = architecture.alphas_cumprod()
    state["alphas_cumprod"] = alphas_cumprod
    state["betas"] = 1.0 - alphas_cumprod / torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    state.update(extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "global_step": 0, "state_dict": state}, path)
    return path


def write_official_layout_sources(root: str | os.PathLike, architecture: OfficialArchitecture
                                  ) -> tuple[Path, Path]:
    """What a user downloads, in synthetic form: ``root/epoch=0-step=0.ckpt`` (official layout) and the matching
    diffusers VAE folder ``root/ldm3d-4c/vae``; returns the checkpoint and the ``ldm3d-4c`` folder, the two inputs
    of ``convert_checkpoint``."""
    root = Path(root)
    checkpoint = write_official_layout_checkpoint(root / "epoch=0-step=0.ckpt", architecture)
    vae = architecture.build("vae")
    vae.load_state_dict({key: synthetic_weight("first_stage_model." + key, tuple(t.shape))
                         for key, t in vae.state_dict().items()})
    vae.save_pretrained(root / "ldm3d-4c" / "vae")
    return checkpoint, root / "ldm3d-4c"


__all__ = ["hashed_uniform", "official_shapes", "synthetic_state_dict", "synthetic_weight",
           "write_official_layout_checkpoint", "write_official_layout_sources"]
