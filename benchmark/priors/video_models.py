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
from diffusers.models.attention import AttentionMixin
from diffusers.models.embeddings import IPAdapterPlusImageProjection, TimestepEmbedding, Timesteps
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from diffusers.models.unets.unet_3d_blocks import UNetMidBlock3DCrossAttn, get_down_block, get_up_block
from torch import nn

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


def resolve_component_class(name: str, setting: str, known: dict[str, type]) -> type:
    """The class of a prior component named in ``prior.json`` (``setting``): one of ``known`` by name, or an import
    path ``package.module:Class`` with a ``from_pretrained`` classmethod."""
    if name in known:
        return known[name]
    if ":" not in name:
        raise PriorError(f"video prior: unknown {setting} {name!r}; known: {', '.join(sorted(known))} "
                         f"(or give an import path 'package.module:Class')")
    module_name, _, attribute = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise PriorError(f"video prior: {setting} {name!r} cannot be imported ({error})") from error
    if not hasattr(cls, "from_pretrained"):
        raise PriorError(f"video prior: {setting} {name!r} has no from_pretrained()")
    return cls


@register_video_unet
class VideoUNet(ModelMixin, AttentionMixin, ConfigMixin):
    """A compact video UNet of diffusers' 3D blocks in the shape of GenFusion's (DynamiCrafter's ``openaimodel3d``):
    per level, ResNet blocks each followed by a temporal convolution, a spatial transformer (self-attention, then
    cross-attention to the image tokens) and a temporal transformer (self-attention only); a temporal transformer
    right after the input convolution (the official ``addition_attention``); an fps embedding added to the timestep
    embedding (``fs_condition``); ``attention_head_dim``-channel heads in the spatial transformers. Input and output
    are ``[B, C, T, H, W]``. (diffusers' ``UNet3DConditionModel`` has these blocks but neither an fps embedding nor
    per-level head counts next to its input transformer.)"""

    @register_to_config
    def __init__(self, in_channels: int = 8, out_channels: int = 4,
                 down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D",
                                                      "CrossAttnDownBlock3D", "DownBlock3D"),
                 up_block_types: tuple[str, ...] = ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D",
                                                    "CrossAttnUpBlock3D"),
                 block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280), layers_per_block: int = 2,
                 attention_head_dim: int = 64, cross_attention_dim: int = 1024, norm_num_groups: int = 32,
                 norm_eps: float = 1e-5, use_linear_projection: bool = True, fps_condition: bool = True,
                 input_temporal_attention: bool = True, dropout: float = 0.0):
        super().__init__()
        if len(down_block_types) != len(block_out_channels) or len(up_block_types) != len(block_out_channels):
            raise ValueError("VideoUNet: one down and one up block type per entry of block_out_channels")
        heads = [channels // attention_head_dim for channels in block_out_channels]
        base, time_dim = block_out_channels[0], block_out_channels[0] * 4
        self.conv_in = nn.Conv2d(in_channels, base, kernel_size=3, padding=1)
        self.time_proj = Timesteps(base, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(base, time_dim)
        self.fps_embedding = TimestepEmbedding(base, time_dim) if fps_condition else None
        self.transformer_in = TransformerTemporalModel(
            num_attention_heads=heads[0], attention_head_dim=attention_head_dim, in_channels=base,
            norm_num_groups=norm_num_groups) if input_temporal_attention else None
        common = dict(resnet_eps=norm_eps, resnet_act_fn="silu", resnet_groups=norm_num_groups,
                      cross_attention_dim=cross_attention_dim, use_linear_projection=use_linear_projection,
                      dropout=dropout)
        self.down_blocks = nn.ModuleList()
        output = base
        for level, block_type in enumerate(down_block_types):
            previous, output = output, block_out_channels[level]
            self.down_blocks.append(get_down_block(
                block_type, num_layers=layers_per_block, in_channels=previous, out_channels=output,
                temb_channels=time_dim, add_downsample=level < len(block_out_channels) - 1,
                num_attention_heads=heads[level], downsample_padding=1, **common))
        self.mid_block = UNetMidBlock3DCrossAttn(
            in_channels=block_out_channels[-1], temb_channels=time_dim, resnet_eps=norm_eps, resnet_act_fn="silu",
            resnet_groups=norm_num_groups, num_attention_heads=heads[-1], cross_attention_dim=cross_attention_dim,
            use_linear_projection=use_linear_projection, dropout=dropout)
        self.up_blocks = nn.ModuleList()
        reversed_channels, reversed_heads = list(reversed(block_out_channels)), list(reversed(heads))
        output = reversed_channels[0]
        for level, block_type in enumerate(up_block_types):
            previous, output = output, reversed_channels[level]
            skip = reversed_channels[min(level + 1, len(block_out_channels) - 1)]
            self.up_blocks.append(get_up_block(
                block_type, num_layers=layers_per_block + 1, in_channels=skip, out_channels=output,
                prev_output_channel=previous, temb_channels=time_dim,
                add_upsample=level < len(block_out_channels) - 1, num_attention_heads=reversed_heads[level],
                resolution_idx=level, **common))
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, base, eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(base, out_channels, kernel_size=3, padding=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                fps: torch.Tensor | None = None) -> torch.Tensor:
        batch, _, frames, height, width = sample.shape
        emb = self.time_embedding(self.time_proj(timestep.expand(batch)).to(self.dtype))
        if self.fps_embedding is not None:
            emb = emb + self.fps_embedding(self.time_proj(fps.expand(batch)).to(self.dtype))
        emb = emb.repeat_interleave(frames, dim=0)
        context = encoder_hidden_states.repeat_interleave(frames, dim=0)
        hidden = self.conv_in(sample.transpose(1, 2).flatten(0, 1))
        if self.transformer_in is not None:
            hidden = self.transformer_in(hidden, num_frames=frames, return_dict=False)[0]
        skips = (hidden,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, outputs = block(hidden_states=hidden, temb=emb, encoder_hidden_states=context,
                                        num_frames=frames)
            else:
                hidden, outputs = block(hidden_states=hidden, temb=emb, num_frames=frames)
            skips += outputs
        hidden = self.mid_block(hidden, emb, encoder_hidden_states=context, num_frames=frames)
        for block in self.up_blocks:
            block_skips, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            size = skips[-1].shape[2:] if skips else None  # any latent size, not only multiples of 2**levels
            if getattr(block, "has_cross_attention", False):
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=block_skips,
                               encoder_hidden_states=context, upsample_size=size, num_frames=frames)
            else:
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=block_skips,
                               upsample_size=size, num_frames=frames)
        hidden = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        return hidden.unflatten(0, (batch, frames)).transpose(1, 2)

    def denoise(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, *, concat_latents: torch.Tensor,
                image_tokens: torch.Tensor, fps: torch.Tensor) -> torch.Tensor:
        return self(torch.cat([noisy_latents, concat_latents], dim=1), timesteps, image_tokens, fps)


@register_video_unet
class SpatioTemporalUNet(UNetSpatioTemporalConditionModel):
    """diffusers' image-to-video UNet as it is (Stable Video Diffusion's): spatial ResNet blocks with temporal
    convolutions, spatial transformers cross-attending to the image tokens, temporal transformers, 8 input channels
    (noise latent + artifact latent); the frame rate is its single added-time id
    (``projection_class_embeddings_input_dim == addition_time_embed_dim``). Its temporal transformers also
    cross-attend to the image tokens, copied to every pixel: with GenFusion's 256 tokens that costs 1.6x the
    operations and 3x the activation memory of :class:`VideoUNet` at the official sizes, so it is an
    alternative, not the default."""

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


__all__ = ["ImageResampler", "SpatioTemporalUNet", "VIDEO_UNETS", "VideoDenoiser", "VideoUNet",
           "register_video_unet", "resolve_component_class", "resolve_video_unet"]
