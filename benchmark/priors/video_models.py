"""The networks of the video prior: denoiser UNets behind one call (``denoise``) and the reference-image projector.

A prior folder names its UNet class in ``prior.json`` (``unet_class``): either a name registered here with
:func:`register_video_unet` or an import path ``package.module:Class``, so an official-layout UNet (the
DynamiCrafter ``openaimodel3d`` network of GenFusion's checkpoint) plugs in as another class without touching the
prior. A UNet class is a diffusers ``ModelMixin`` / ``ConfigMixin`` (``from_pretrained`` / ``save_pretrained`` on its
``unet/`` subfolder) with a :meth:`VideoDenoiser.denoise` method; every tensor there uses the LVDM layout
``[batch, channels, frames, height, width]``.
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

import torch
from diffusers import ModelMixin, UNetSpatioTemporalConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import IPAdapterPlusImageProjection

from gfbench.priors import PriorError


@runtime_checkable
class VideoDenoiser(Protocol):
    """What the prior needs from a UNet class (besides diffusers' ``from_pretrained`` / ``save_pretrained``)."""

    def denoise(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, *, concat_latents: torch.Tensor,
                image_tokens: torch.Tensor, fps: torch.Tensor) -> torch.Tensor:
        """The model output (a v-prediction) for ``noisy_latents`` ``[B, 4, T, h, w]`` at integer ``timesteps``
        ``[B]``, given the artifact video's latents ``[B, 4, T, h, w]`` (concatenated to the input channels), the
        reference image's cross-attention tokens ``[B, N, D]`` and the frame-rate condition ``fps`` ``[B]``."""


VIDEO_UNETS: dict[str, type] = {}


def register_video_unet(cls: type) -> type:
    """Class decorator: make ``cls`` loadable by its name from a prior folder's ``unet_class``."""
    if not callable(getattr(cls, "denoise", None)) or not hasattr(cls, "from_pretrained"):
        raise TypeError(f"{cls.__name__} needs a denoise() method and from_pretrained() to be a video UNet")
    VIDEO_UNETS[cls.__name__] = cls
    return cls


def resolve_video_unet(name: str) -> type:
    """The UNet class called ``name``: a registered name, or ``package.module:Class``."""
    if name in VIDEO_UNETS:
        return VIDEO_UNETS[name]
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise PriorError(f"video prior: unet_class {name!r} cannot be imported ({error})") from error
        if not callable(getattr(cls, "denoise", None)):
            raise PriorError(f"video prior: unet_class {name!r} has no denoise() method")
        return cls
    raise PriorError(f"video prior: unknown unet_class {name!r}; registered: {', '.join(sorted(VIDEO_UNETS))} "
                     f"(or give an import path 'package.module:Class')")


@register_video_unet
class SpatioTemporalUNet(UNetSpatioTemporalConditionModel):
    """diffusers' image-to-video UNet (Stable Video Diffusion's): spatial ResNet blocks with temporal convolutions,
    spatial transformers cross-attending to the image tokens, temporal transformers, 8 input channels (noise
    latent + artifact latent). The frame rate is its single added-time id (``projection_class_embeddings_input_dim
    == addition_time_embed_dim``), as GenFusion's UNet adds an fps embedding to the timestep embedding."""

    def denoise(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, *, concat_latents: torch.Tensor,
                image_tokens: torch.Tensor, fps: torch.Tensor) -> torch.Tensor:
        sample = torch.cat([noisy_latents, concat_latents], dim=1).transpose(1, 2)  # [B, T, 8, h, w]
        added_time_ids = fps.reshape(-1, 1).to(sample.dtype)
        output = self(sample, timesteps, encoder_hidden_states=image_tokens, added_time_ids=added_time_ids,
                      return_dict=False)[0]
        return output.transpose(1, 2)


class ImageResampler(ModelMixin, ConfigMixin):
    """Image-encoder features ``[B, L, embed_dims]`` to cross-attention tokens ``[B, num_queries * frames,
    output_dims]``: the Perceiver resampler GenFusion uses (DynamiCrafter's ``Resampler`` with ``video_length``
    frames of ``num_queries`` queries each), which is diffusers' IP-Adapter Plus projection with
    ``num_queries * frames`` latents (the official ``to_kv`` weight splits into ``to_k`` / ``to_v``)."""

    @register_to_config
    def __init__(self, embed_dims: int = 1280, output_dims: int = 1024, hidden_dims: int = 1024, depth: int = 4,
                 dim_head: int = 64, heads: int = 12, num_queries: int = 16, frames: int = 16,
                 ffn_ratio: float = 4):
        super().__init__()
        self.resampler = IPAdapterPlusImageProjection(
            embed_dims=embed_dims, output_dims=output_dims, hidden_dims=hidden_dims, depth=depth,
            dim_head=dim_head, heads=heads, num_queries=num_queries * frames, ffn_ratio=ffn_ratio)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.resampler(features)


__all__ = ["ImageResampler", "SpatioTemporalUNet", "VIDEO_UNETS", "VideoDenoiser", "register_video_unet",
           "resolve_video_unet"]
