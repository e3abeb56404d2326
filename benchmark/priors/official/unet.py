"""The video UNet of the released GenFusion model (DynamiCrafter's 3D UNet): 2D residual blocks each followed by
a temporal convolution, spatial transformers with image cross-attention, temporal self-attention transformers,
step and frame-rate embeddings. Frames travel folded into the batch, ``(B*T, C, H, W)``, and are unfolded to
``(B, C, T, H, W)`` for the temporal layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from gfbench.priors.official.layers import SpatialTransformer, TemporalTransformer, sinusoidal_embedding
from gfbench.priors.official.loading import FolderLoadingMixin
from gfbench.priors.video_models import register_video_unet


class Float32GroupNorm(nn.GroupNorm):
    """Group normalisation computed in float32 and cast back (the official residual-block norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class StepEmbedding(nn.Module):
    """Sinusoidal features -> Linear -> SiLU -> Linear."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features)
        self.linear_2 = nn.Linear(out_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


def fold_frames(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, T, H, W)`` -> ``(B*T, C, H, W)``."""
    return x.transpose(1, 2).flatten(0, 1)


def unfold_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B*T, C, H, W)`` -> ``(B, C, T, H, W)``."""
    return x.reshape(batch, -1, *x.shape[1:]).transpose(1, 2)


class TemporalConvBlock(nn.Module):
    """Four (GroupNorm, SiLU, 3x1x1 Conv3d) layers along time, added to the input."""

    def __init__(self, channels: int, norm_groups: int):
        super().__init__()
        self.layers = nn.ModuleList(_TemporalConvLayer(channels, norm_groups) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.layers:
            h = layer(h)
        return x + h


class _TemporalConvLayer(nn.Module):
    def __init__(self, channels: int, norm_groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.conv = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.silu(self.norm(x)))


class ResBlock(nn.Module):
    """Residual block conditioned on the step embedding, then a temporal convolution over the frames."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, norm_groups: int):
        super().__init__()
        self.norm1 = Float32GroupNorm(norm_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(emb_channels, out_channels)
        self.norm2 = Float32GroupNorm(norm_groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.temporal_conv = TemporalConvBlock(out_channels, norm_groups)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, batch: int) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(emb)).type(h.dtype)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        h = h + (self.conv_shortcut(x) if self.conv_shortcut is not None else x)
        return fold_frames(self.temporal_conv(unfold_frames(h, batch)))


class UNetStage(nn.Module):
    """A residual block, optionally followed by a spatial and a temporal transformer."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, attention: bool, *,
                 head_channels: int, depth: int, context_dim: int, text_context_len: int, norm_groups: int):
        super().__init__()
        self.resnet = ResBlock(in_channels, out_channels, emb_channels, norm_groups)
        self.spatial_attention = self.temporal_attention = None
        if attention:
            heads = out_channels // head_channels
            self.spatial_attention = SpatialTransformer(out_channels, heads, head_channels, depth, context_dim,
                                                        image_cross_attention=True,
                                                        text_context_len=text_context_len, norm_groups=norm_groups)
            self.temporal_attention = TemporalTransformer(out_channels, heads, head_channels, depth,
                                                          norm_groups=norm_groups)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, batch: int) -> torch.Tensor:
        h = self.resnet(x, emb, batch)
        if self.spatial_attention is not None:
            h = self.spatial_attention(h, context)
            h = fold_frames(self.temporal_attention(unfold_frames(h, batch)))
        return h


class Upsample(nn.Conv2d):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.interpolate(x, scale_factor=2, mode="nearest"))


class DownLevel(nn.Module):
    def __init__(self, stages: list[UNetStage], downsample: nn.Module | None):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.downsample = downsample


class UpLevel(nn.Module):
    def __init__(self, stages: list[UNetStage], upsample: nn.Module | None):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.upsample = upsample


class MidBlock(nn.Module):
    def __init__(self, stage: UNetStage, resnet_out: ResBlock):
        super().__init__()
        self.stage = stage
        self.resnet_out = resnet_out

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, batch: int) -> torch.Tensor:
        return self.resnet_out(self.stage(x, emb, context, batch), emb, batch)


@register_video_unet
class GenFusionUNet3D(FolderLoadingMixin, ModelMixin, ConfigMixin):
    """The released GenFusion video UNet (v-prediction over 4-channel RGB-D latents).

    ``forward(sample, timestep, encoder_hidden_states, fps=None)``: ``sample`` is ``(B, in_channels, T, H, W)``
    (the noisy latent and the artifact video's latent, concatenated on channels), ``timestep`` a scalar or
    ``(B,)``, ``encoder_hidden_states`` ``(B, L, context_dim)`` image tokens from :class:`ImageProjector`,
    ``fps`` ``(B,)`` (``default_fps`` when None). Returns ``(B, out_channels, T, H, W)``. ``H`` and ``W`` must
    be multiples of ``2 ** (len(channel_mult) - 1)``.

    Context: when ``L == text_context_len + T * image_tokens_per_frame`` the context is a shared text part
    followed by per-frame image tokens (the official layout for per-frame conditioning); any other length is
    shared by every frame. Inside each cross-attention the first ``text_context_len`` tokens use the "text"
    projections and the rest the image projections, exactly as the released weights were trained.
    """

    @register_to_config
    def __init__(self, in_channels: int = 8, out_channels: int = 4, model_channels: int = 320,
                 channel_mult: tuple[int, ...] = (1, 2, 4, 4), num_res_blocks: int = 2,
                 attention_resolutions: tuple[int, ...] = (4, 2, 1), num_head_channels: int = 64,
                 transformer_depth: int = 1, context_dim: int = 1024, temporal_length: int = 16,
                 input_attention_heads: int = 8, text_context_len: int = 77, image_tokens_per_frame: int = 16,
                 default_fps: int = 30, norm_num_groups: int = 32):
        super().__init__()
        emb_channels = model_channels * 4
        stage_args = dict(head_channels=num_head_channels, depth=transformer_depth, context_dim=context_dim,
                          text_context_len=text_context_len, norm_groups=norm_num_groups)
        self.time_embedding = StepEmbedding(model_channels, emb_channels)
        self.fps_embedding = StepEmbedding(model_channels, emb_channels)
        self.conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        self.input_temporal_attention = TemporalTransformer(model_channels, input_attention_heads,
                                                            num_head_channels, transformer_depth,
                                                            pointwise_conv=True, norm_groups=norm_num_groups)

        skip_channels = [model_channels]
        channels = model_channels
        self.down_blocks = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            attention = 2 ** level in attention_resolutions
            stages = []
            for _ in range(num_res_blocks):
                stages.append(UNetStage(channels, mult * model_channels, emb_channels, attention, **stage_args))
                channels = mult * model_channels
                skip_channels.append(channels)
            last = level == len(channel_mult) - 1
            downsample = None if last else nn.Conv2d(channels, channels, 3, stride=2, padding=1)
            if not last:
                skip_channels.append(channels)
            self.down_blocks.append(DownLevel(stages, downsample))

        self.mid_block = MidBlock(UNetStage(channels, channels, emb_channels, True, **stage_args),
                                  ResBlock(channels, channels, emb_channels, norm_num_groups))

        self.up_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            attention = 2 ** level in attention_resolutions
            stages = []
            for _ in range(num_res_blocks + 1):
                stages.append(UNetStage(channels + skip_channels.pop(), mult * model_channels, emb_channels,
                                        attention, **stage_args))
                channels = mult * model_channels
            self.up_blocks.append(UpLevel(stages, Upsample(channels) if level else None))

        self.norm_out = Float32GroupNorm(norm_num_groups, model_channels)
        self.conv_out = nn.Conv2d(model_channels, out_channels, 3, padding=1)

    def frame_context(self, context: torch.Tensor, frames: int) -> torch.Tensor:
        """``(B, L, D)`` context -> ``(B*T, L', D)``: one context per frame (see the class docstring)."""
        text_len = self.config.text_context_len
        if context.shape[1] == text_len + frames * self.config.image_tokens_per_frame:
            text = context[:, :text_len].repeat_interleave(frames, dim=0)
            image = context[:, text_len:].reshape(context.shape[0] * frames, -1, context.shape[-1])
            return torch.cat([text, image], dim=1)
        return context.repeat_interleave(frames, dim=0)

    def step_embedding(self, timestep: torch.Tensor, fps: torch.Tensor | None, batch: int,
                       dtype: torch.dtype) -> torch.Tensor:
        device = self.conv_in.weight.device
        timestep = torch.as_tensor(timestep, device=device).reshape(-1).expand(batch)
        fps = torch.full((batch,), self.config.default_fps, device=device) if fps is None else \
            torch.as_tensor(fps, device=device).reshape(-1).expand(batch)
        channels = self.config.model_channels
        emb = self.time_embedding(sinusoidal_embedding(timestep, channels).to(dtype))
        return emb + self.fps_embedding(sinusoidal_embedding(fps, channels).to(dtype))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, encoder_hidden_states: torch.Tensor,
                fps: torch.Tensor | int | None = None) -> torch.Tensor:
        batch, _, frames, _, _ = sample.shape
        dtype = self.conv_in.weight.dtype
        emb = self.step_embedding(timestep, fps, batch, dtype).repeat_interleave(frames, dim=0)
        context = self.frame_context(encoder_hidden_states.to(dtype), frames)

        h = self.conv_in(fold_frames(sample.to(dtype)))
        h = fold_frames(self.input_temporal_attention(unfold_frames(h, batch)))
        skips = [h]
        for level in self.down_blocks:
            for stage in level.stages:
                h = stage(h, emb, context, batch)
                skips.append(h)
            if level.downsample is not None:
                h = level.downsample(h)
                skips.append(h)
        h = self.mid_block(h, emb, context, batch)
        for level in self.up_blocks:
            for stage in level.stages:
                h = stage(torch.cat([h, skips.pop()], dim=1), emb, context, batch)
            if level.upsample is not None:
                h = level.upsample(h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return unfold_frames(h, batch).to(sample.dtype)

    def denoise(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, *, concat_latents: torch.Tensor,
                image_tokens: torch.Tensor, fps: torch.Tensor) -> torch.Tensor:
        """The video prior's call (:class:`gfbench.priors.video_models.VideoDenoiser`): the artifact latents
        concatenated on channels, the image tokens as the whole context (GenFusion feeds no text, so the first
        ``text_context_len`` tokens go through ``to_k``/``to_v`` and the rest through ``to_k_ip``/``to_v_ip``, as
        the released weights were trained)."""
        tokens = image_tokens.shape[1]
        if tokens <= self.config.text_context_len:
            raise ValueError(f"GenFusionUNet3D: {tokens} image tokens leave none for the image cross-attention "
                             f"(the first text_context_len = {self.config.text_context_len} take the text path)")
        return self(torch.cat([noisy_latents, concat_latents], dim=1), timesteps, image_tokens, fps=fps)
