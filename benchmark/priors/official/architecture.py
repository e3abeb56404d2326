"""Every architecture number of the released GenFusion model, as data.

``data/genfusion_official.json`` transcribes ``Reconstruction/generation_infer.yaml`` of the public GenFusion code
(the UNet, the image projector, the schedule) plus the fixed parts it builds without a config (the OpenCLIP
ViT-H/14 vision tower, the LDM3D 4-channel VAE). Tests use a tiny architecture of the same layout.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler

from gfbench.priors.official.image_encoder import OpenCLIPImageEncoder
from gfbench.priors.official.image_projector import ImageProjector
from gfbench.priors.official.unet import GenFusionUNet3D

SECTIONS = ("unet", "image_projector", "image_encoder", "vae", "diffusion")
SCHEDULER_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "rescale_betas_zero_snr",
                  "prediction_type", "timestep_spacing", "steps_offset", "set_alpha_to_one")
DIFFUSION_KEYS = SCHEDULER_KEYS + ("latent_scale_factor", "dynamic_rescale_base_scale", "dynamic_rescale_turning_step")


MODEL_CLASSES = {"unet": GenFusionUNet3D, "image_projector": ImageProjector, "image_encoder": OpenCLIPImageEncoder,
                 "vae": AutoencoderKL}


class ArchitectureError(ValueError):
    """An architecture file is missing a section or holds a field its model does not take."""


@dataclass(frozen=True)
class OfficialArchitecture:
    """The numbers of one official-layout model: constructor arguments of each module, the VAE layout, the
    diffusion schedule and where they came from."""

    name: str
    unet: dict
    image_projector: dict
    image_encoder: dict
    vae: dict
    diffusion: dict
    source: dict = field(default_factory=dict)

    @classmethod
    def official(cls) -> "OfficialArchitecture":
        """The released model (``genfusion_official.json`` shipped with the package)."""
        text = resources.files("gfbench.priors.official").joinpath("data/genfusion_official.json").read_text()
        return cls.from_dict(json.loads(text), origin="genfusion_official.json")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "OfficialArchitecture":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ArchitectureError(f"{path}: cannot read the architecture ({error})") from None
        return cls.from_dict(data, origin=str(path))

    @classmethod
    def from_dict(cls, data: dict, origin: str = "architecture") -> "OfficialArchitecture":
        missing = [section for section in ("name",) + SECTIONS if section not in data]
        if missing:
            raise ArchitectureError(f"{origin}: no {missing[0]!r} section")
        architecture = cls(name=data["name"], source=dict(data.get("source", {})),
                           **{section: dict(data[section]) for section in SECTIONS})
        architecture.validate(origin)
        return architecture

    def validate(self, origin: str = "architecture") -> None:
        for section, model in MODEL_CLASSES.items():
            allowed = set(inspect.signature(model.__init__).parameters) - {"self"}
            unknown = sorted(set(getattr(self, section)) - allowed)
            if unknown:
                raise ArchitectureError(f"{origin}: {section}.{unknown[0]} is not an argument of {model.__name__}")
        missing = [key for key in DIFFUSION_KEYS if key not in self.diffusion]
        if missing:
            raise ArchitectureError(f"{origin}: diffusion.{missing[0]} is missing")
        self._check_interfaces(origin)

    def _check_interfaces(self, origin: str) -> None:
        """The models must fit together: encoder tokens feed the projector, projector tokens the UNet's
        cross-attention, VAE latents (noise + artifact video) its input."""
        latent = self.vae.get("latent_channels", 4)
        pairs = [("image_projector.embedding_dim", self.image_projector.get("embedding_dim", 1280),
                  "image_encoder.width", self.image_encoder.get("width", 1280)),
                 ("unet.context_dim", self.unet.get("context_dim", 1024),
                  "image_projector.output_dim", self.image_projector.get("output_dim", 1024)),
                 ("unet.in_channels", self.unet.get("in_channels", 8), "2 x vae.latent_channels", 2 * latent),
                 ("unet.out_channels", self.unet.get("out_channels", 4), "vae.latent_channels", latent)]
        for name, value, other, wanted in pairs:
            if value != wanted:
                raise ArchitectureError(f"{origin}: {name} is {value} but {other} is {wanted}; they must match")

    def as_dict(self) -> dict:
        return asdict(self)

    def build(self, component: str, *, device: str | torch.device | None = None) -> torch.nn.Module:
        """A randomly initialised model of one component (``device="meta"`` allocates nothing)."""
        if component not in MODEL_CLASSES:
            raise KeyError(f"unknown component {component!r}; one of {', '.join(MODEL_CLASSES)}")
        with torch.device(device or "cpu"):
            return MODEL_CLASSES[component](**getattr(self, component))

    def scheduler_config(self) -> dict:
        """Arguments of a diffusers ``DDIMScheduler``: the training schedule, and the official DDIM "uniform"
        discretisation (``leading`` spacing with ``steps_offset`` 1: timesteps 961, 921, ..., 1 for 25 steps; the
        last step's previous alpha is ``alphas_cumprod[0]``, hence ``set_alpha_to_one`` false)."""
        return {key: self.diffusion[key] for key in SCHEDULER_KEYS}

    def alphas_cumprod(self) -> torch.Tensor:
        """The training schedule's cumulative alphas (1000 values, the last 0 with zero terminal SNR)."""
        return DDIMScheduler(**self.scheduler_config()).alphas_cumprod.float()
