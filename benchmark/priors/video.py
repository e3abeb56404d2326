"""The RGB-D video diffusion prior of GenFusion: repair an artifact-prone rendered RGB-D video, guided by a reference
image, and estimate the depth of input frames.

Conventions (GenFusion's ``Reconstruction/extrapolation``): RGB in [0, 1] is mapped to [-1, 1]; depth becomes
disparity ``1 / depth`` min-max normalised over the whole window to [0, 1] and then mapped to [-1, 1]; pixels with
no depth (``depth <= 0`` or not finite) get -1, as far as the farthest surface. The model's output depth channel
``d`` (clamped to [-1, 1]) is turned back into ``depth = 1 / ((d + 1) / 2 + output_depth_epsilon)``.

**Scale of the returned depth.** It is not metric and not a scaled copy of the input depth: ``1 / depth - eps`` is
the window's min-max normalised disparity, so the nearest surface of the window comes back near depth 1 and the
farthest (and every pixel without depth) near ``1 / eps`` (1e6). For an input that survives the round trip,
``1 / depth_in = (1 / depth_out - eps) * (disp_max - disp_min) + disp_min``: disparity is recovered up to an affine
map per window. Use it only through a scale-and-shift-invariant disparity loss (as GenFusion does), never as metric
depth, and never compare windows without aligning them.

A prior is a folder (``--prior PATH`` or ``$GFBENCH_VIDEO_PRIOR``)::

    prior.json                      settings: resolution, frames, latent scale, sampling, dropout, UNet class
    unet/config.json, unet/diffusion_pytorch_model.safetensors          (class named by prior.json unet_class)
    vae/config.json, vae/diffusion_pytorch_model.safetensors            (diffusers AutoencoderKL, 4 -> 4 channels)
    image_encoder/config.json, image_encoder/model.safetensors          (class named by image_encoder_class)
    image_proj/config.json, image_proj/diffusion_pytorch_model.safetensors  (class named by image_proj_class)
    scheduler/scheduler_config.json                                     (diffusers DDIMScheduler, v-prediction)

Sampling follows the official DDIM sampler: pure noise, ``steps`` DDIM steps with ``eta``, classifier-free guidance
against a zero (mid-grey) reference image with the same artifact latents, guidance rescale, and DynamiCrafter's
dynamic rescale of the predicted clean latent (``dynamic_rescale``) when the folder asks for it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol, get_type_hints

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm
from transformers import CLIPVisionConfig, CLIPVisionModel

from gfbench.priors import PriorError, PriorSource, folder_fingerprint, resolve_prior_folder
from gfbench.priors.video_models import ImageResampler, resolve_component_class, resolve_video_unet

ENV_VAR = "GFBENCH_VIDEO_PRIOR"
FLAG = "--prior"
WHAT = "video prior"
FORMAT = "gfbench-video-prior/1"
PRIOR_JSON = "prior.json"
CONFIG_FILES = {"unet": "config.json", "vae": "config.json", "image_encoder": "config.json",
                "image_proj": "config.json", "scheduler": "scheduler_config.json"}
WEIGHT_FILES = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
                "image_encoder": "model.safetensors", "image_proj": "diffusion_pytorch_model.safetensors"}
# Either library's weight file name, whatever the component's class (a diffusers image encoder saves the other).
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
IMAGE_ENCODERS = {"CLIPVisionModel": CLIPVisionModel}
IMAGE_PROJECTORS = {"ImageResampler": ImageResampler}
PRESETS = ("tiny", "synthetic", "genfusion-512")


# --- settings (prior.json) -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplingSettings:
    steps: int
    eta: float
    guidance_scale: float
    guidance_rescale: float


@dataclass(frozen=True)
class DynamicRescale:
    """DynamiCrafter's latent rescale: training scales the clean latent by ``s(t)`` (1 falling linearly to
    ``base_scale`` over the first ``turning_step`` timesteps, then flat); sampling multiplies each predicted clean
    latent by ``s(t_prev) / s(t)``."""

    base_scale: float
    turning_step: int

    def scale_at(self, timesteps: torch.Tensor) -> torch.Tensor:
        t = timesteps.to(torch.float64)
        ramp = 1.0 + (self.base_scale - 1.0) * t / (self.turning_step - 1)
        return torch.where(t < self.turning_step, ramp, torch.full_like(t, self.base_scale)).float()


@dataclass(frozen=True)
class ReferenceSettings:
    """How the reference image reaches the image encoder: resized (bicubic) to ``size`` x ``size``, mapped from
    [-1, 1] to [0, 1], then normalised with ``mean`` / ``std`` (OpenCLIP's for the official model)."""

    size: int
    mean: list[float]
    std: list[float]


@dataclass(frozen=True)
class VideoPriorSettings:
    """Everything numeric about a prior; read from and written to ``prior.json``."""

    format: str
    unet_class: str
    num_frames: int
    height: int
    width: int
    latent_scale: float
    fps: int
    sampling: SamplingSettings
    dynamic_rescale: DynamicRescale | None
    reference: ReferenceSettings
    vae_chunk_frames: int
    output_depth_epsilon: float
    condition_dropout: float
    gpu_dtype: str
    # Optional in prior.json. An image encoder class with an ``image_features(references)`` method (references
    # ``[B, 3, H, W]`` in [-1, 1]) does its own preprocessing; otherwise ``reference`` above says how.
    image_encoder_class: str = "CLIPVisionModel"
    image_proj_class: str = "ImageResampler"

    @classmethod
    def from_dict(cls, data: dict, where: str) -> VideoPriorSettings:
        settings = _parse_dataclass(cls, data, where)
        if settings.format != FORMAT:
            raise PriorError(f"{where}: format is {settings.format!r}, expected {FORMAT!r}")
        if settings.gpu_dtype not in ("float16", "bfloat16", "float32"):
            raise PriorError(f"{where}: gpu_dtype must be float16, bfloat16 or float32, not {settings.gpu_dtype!r}")
        if not 0.0 <= settings.condition_dropout < 1.0:
            raise PriorError(f"{where}: condition_dropout must be in [0, 1), not {settings.condition_dropout}")
        return settings

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _parse_dataclass(cls, data, where: str):
    if not isinstance(data, dict):
        raise PriorError(f"{where}: expected an object, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(key for key in data if key not in names and not key.startswith("_"))
    if unknown:
        raise PriorError(f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(names)})")
    values = {}
    defaults = {field.name: field.default for field in dataclasses.fields(cls)
                if field.default is not dataclasses.MISSING}
    for name in names:
        if name not in data and name in defaults:
            values[name] = defaults[name]
            continue
        if name not in data:
            raise PriorError(f"{where}: missing setting {name!r}")
        values[name] = _parse_value(hints[name], data[name], f"{where}.{name}")
    return cls(**values)


def _parse_value(kind, value, where: str):
    optional = getattr(kind, "__args__", None)
    if optional and type(None) in optional:
        if value is None:
            return None
        kind = next(arg for arg in optional if arg is not type(None))
    if dataclasses.is_dataclass(kind):
        return _parse_dataclass(kind, value, where)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind in (int, str) and isinstance(value, kind) and not isinstance(value, bool):
        return value
    if getattr(kind, "__origin__", None) is list and isinstance(value, list) and all(
            isinstance(item, (int, float)) for item in value):
        return [float(item) for item in value]
    raise PriorError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


# --- conversions ------------------------------------------------------------------------------------------------

def rgb_to_model(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] (any shape) to the model's [-1, 1]."""
    return rgb * 2.0 - 1.0


def rgb_from_model(rgb: torch.Tensor) -> torch.Tensor:
    """The model's RGB (clamped to [-1, 1]) back to [0, 1]."""
    return (rgb.clamp(-1.0, 1.0) + 1.0) / 2.0


def depth_to_model(depth: torch.Tensor) -> torch.Tensor:
    """Depth (any shape, one window) to normalised disparity in [-1, 1]: ``1 / depth`` min-max normalised over all
    valid pixels, mapped to [-1, 1]; pixels without depth (``<= 0`` or not finite) get -1. A window whose valid
    pixels share one disparity maps them to 0 (the official code divides by zero there)."""
    valid = torch.isfinite(depth) & (depth > 0)
    normalized = torch.zeros_like(depth, dtype=torch.float32)
    if valid.any():
        disparity = 1.0 / depth[valid].float()
        low, high = disparity.min(), disparity.max()
        normalized[valid] = (disparity - low) / (high - low) if high > low else 0.5
    return torch.where(valid, normalized * 2.0 - 1.0, torch.full_like(normalized, -1.0))


def depth_from_model(disparity: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The model's normalised disparity (clamped to [-1, 1]) to GenFusion's output depth ``1 / ((d + 1) / 2 + eps)``
    (see the module docstring for what its scale means)."""
    return 1.0 / ((disparity.clamp(-1.0, 1.0) + 1.0) / 2.0 + epsilon)


# --- public data ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RGBDVideo:
    """Frames ``rgb`` ``[T, H, W, 3]`` in [0, 1] and ``depth`` ``[T, H, W]`` (> 0 where a surface was seen)."""

    rgb: torch.Tensor
    depth: torch.Tensor

    def __post_init__(self):
        if self.rgb.ndim != 4 or self.rgb.shape[-1] != 3:
            raise ValueError(f"RGBDVideo.rgb must be [T, H, W, 3], got {tuple(self.rgb.shape)}")
        if tuple(self.depth.shape) != tuple(self.rgb.shape[:3]):
            raise ValueError(f"RGBDVideo.depth must be [T, H, W] = {tuple(self.rgb.shape[:3])}, "
                             f"got {tuple(self.depth.shape)}")


@dataclass(frozen=True)
class ClipBatch:
    """A training batch at the prior's resolution: target and artifact videos ``[B, T, H, W, 3]`` / ``[B, T, H, W]``
    (RGB in [0, 1], depth as for :class:`RGBDVideo`, normalised per clip) and the reference images
    ``[B, H, W, 3]``."""

    target_rgb: torch.Tensor
    target_depth: torch.Tensor
    artifact_rgb: torch.Tensor
    artifact_depth: torch.Tensor
    reference: torch.Tensor


class VideoPrior(Protocol):
    """What the GenFusion loop calls. ``source`` goes into every record."""

    source: PriorSource
    settings: VideoPriorSettings

    def repair(self, video: RGBDVideo, reference_image: torch.Tensor, *, seed: int | None = None,
               generator: torch.Generator | None = None, guidance_scale: float | None = None,
               progress: bool = False) -> RGBDVideo: ...

    def estimate_depth(self, frames: torch.Tensor, *, reference_index: int | None = None, seed: int | None = None,
                       generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor: ...


# --- the diffusers backend --------------------------------------------------------------------------------------

class DiffusionVideoPrior:
    """GenFusion's prior on diffusers: a spatio-temporal UNet over ``[noise latent | artifact latent]`` (8 channels),
    cross-attending to tokens of the reference image (image encoder + resampler), an RGB-D ``AutoencoderKL`` (LDM3D's
    4-channel layout, ``latent_scale`` applied by hand) and ``DDIMScheduler`` (v-prediction, zero terminal SNR).

    Build one with :func:`build_video_prior`, load one with :func:`load_video_prior` / :meth:`from_pretrained`."""

    def __init__(self, *, unet, vae: AutoencoderKL, image_encoder: CLIPVisionModel, image_proj: ImageResampler,
                 scheduler: DDIMScheduler, settings: VideoPriorSettings, source: PriorSource):
        _check_components(settings, unet, vae, image_encoder, image_proj, scheduler)
        self.unet, self.vae, self.image_encoder, self.image_proj = unet, vae, image_encoder, image_proj
        self.scheduler, self.settings, self.source = scheduler, settings, source
        self.vae.requires_grad_(False)
        self.image_encoder.requires_grad_(False)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    # loading and saving

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> DiffusionVideoPrior:
        folder = Path(folder)
        check_video_prior_folder(folder)
        settings = read_settings(folder)
        unet_class = resolve_video_unet(settings.unet_class)
        config_class = json.loads((folder / "unet" / "config.json").read_text()).get("_class_name")
        if config_class not in (None, unet_class.__name__):
            raise PriorError(f"{WHAT}: {folder / 'unet' / 'config.json'} was saved from {config_class!r} but "
                             f"{PRIOR_JSON} names unet_class {settings.unet_class!r}")
        components = {
            "unet": unet_class.from_pretrained,
            "vae": AutoencoderKL.from_pretrained,
            "image_encoder": resolve_component_class(settings.image_encoder_class, "image_encoder_class",
                                                     IMAGE_ENCODERS).from_pretrained,
            "image_proj": resolve_component_class(settings.image_proj_class, "image_proj_class",
                                                  IMAGE_PROJECTORS).from_pretrained,
            "scheduler": DDIMScheduler.from_pretrained,
        }
        loaded = {name: _load_component(folder, name, load) for name, load in components.items()}
        source = PriorSource(kind="video", name=folder.name, path=str(folder.resolve()),
                             files_sha256=folder_fingerprint(folder))
        prior = cls(settings=settings, source=source, **loaded)
        return prior.to(device, dtype)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("unet", "vae", "image_encoder", "image_proj", "scheduler"):
            getattr(self, name).save_pretrained(folder / name)
        (folder / PRIOR_JSON).write_text(json.dumps(self.settings.to_dict(), indent=2) + "\n")
        return folder

    def to(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> DiffusionVideoPrior:
        """Move every network; ``dtype`` defaults to float32 on the CPU and to ``gpu_dtype`` elsewhere."""
        device = torch.device(device)
        if dtype is None:
            dtype = torch.float32 if device.type == "cpu" else getattr(torch, self.settings.gpu_dtype)
        for module in self.modules().values():
            module.to(device=device)
            if module.dtype != dtype:  # diffusers warns on every dtype cast, even a no-op one
                module.to(dtype=dtype)
        return self

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "vae": self.vae, "image_encoder": self.image_encoder,
                "image_proj": self.image_proj}

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The networks training updates (the official recipe freezes the VAE and the image encoder)."""
        return {"unet": self.unet, "image_proj": self.image_proj}

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    # inference

    @torch.no_grad()
    def repair(self, video: RGBDVideo, reference_image: torch.Tensor, *, seed: int | None = None,
               generator: torch.Generator | None = None, guidance_scale: float | None = None,
               progress: bool = False) -> RGBDVideo:
        """The repaired video at the input's size and frame count (RGB in [0, 1], depth as in the module docstring).
        Frames are resampled to ``num_frames`` (repeating frames when the window is shorter; longer is an error)
        and resized to the prior's resolution on the way in and back on the way out. ``guidance_scale`` overrides
        the folder's (GenFusion uses 2.2 for scene completion). Deterministic for a given seed / generator state
        (``seed`` 0 when neither is given)."""
        rgb = rgb_to_model(video.rgb.permute(0, 3, 1, 2).float())
        disparity = depth_to_model(video.depth.float())[:, None]
        reference = rgb_to_model(_as_image(reference_image).float())
        rgb_out, disparity_out = self._repair_model_space(rgb, disparity, reference, _generator(seed, generator),
                                                          guidance_scale, progress)
        depth = depth_from_model(disparity_out[:, 0], self.settings.output_depth_epsilon)
        return RGBDVideo(rgb=rgb_from_model(rgb_out).permute(0, 2, 3, 1).to(video.rgb.device),
                         depth=depth.to(video.depth.device))

    @torch.no_grad()
    def estimate_depth(self, frames: torch.Tensor, *, reference_index: int | None = None, seed: int | None = None,
                       generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
        """Depth ``[T, H, W]`` of input frames ``[T, H, W, 3]`` from the video model itself, as GenFusion's
        train-view monocular depth: the frames with a zero depth input (0 in the model's [-1, 1] disparity), one of
        them as the reference image (``reference_index``, drawn from the generator when None, as the official code
        draws it at random). Same scale caveat as :meth:`repair`."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"estimate_depth: frames must be [T, H, W, 3], got {tuple(frames.shape)}")
        generator = _generator(seed, generator)
        if reference_index is None:
            reference_index = int(torch.randint(frames.shape[0], (1,), generator=generator,
                                                device=generator.device))
        rgb = rgb_to_model(frames.permute(0, 3, 1, 2).float())
        zero_depth = torch.zeros_like(rgb[:, :1])
        _, disparity = self._repair_model_space(rgb, zero_depth, rgb[reference_index], generator, None, progress)
        return depth_from_model(disparity[:, 0], self.settings.output_depth_epsilon).to(frames.device)

    def _repair_model_space(self, rgb, disparity, reference, generator, guidance_scale, progress):
        """[T, 3, H, W] RGB and [T, 1, H, W] disparity in [-1, 1] (plus a [3, H', W'] reference) to the decoded
        [T, 3, H, W] RGB and [T, 1, H, W] disparity, float32 on the CPU."""
        count, _, height, width = rgb.shape
        frames = _frame_indices(count, self.settings.num_frames)
        size = (self.settings.height, self.settings.width)
        rgb_in = _resize(rgb[frames], size, "bilinear")
        disparity_in = _resize(disparity[frames], size, "nearest")
        reference_in = _resize(reference[None], size, "bilinear")[0]
        decoded = self.sample(torch.cat([rgb_in, disparity_in], dim=1), reference_in, generator=generator,
                              guidance_scale=guidance_scale, progress=progress)
        decoded = decoded[_first_positions(frames, count)].float().cpu()
        return (_resize(decoded[:, :3], (height, width), "bilinear"),
                _resize(decoded[:, 3:], (height, width), "nearest"))

    @torch.no_grad()
    def sample(self, condition: torch.Tensor, reference: torch.Tensor, *, generator: torch.Generator,
               guidance_scale: float | None = None, progress: bool = False) -> torch.Tensor:
        """The DDIM sampler on model-space tensors: ``condition`` ``[num_frames, 4, height, width]`` (the artifact
        RGB-D video in [-1, 1]) and ``reference`` ``[3, height, width]`` in [-1, 1]; returns the decoded
        ``[num_frames, 4, height, width]`` (not clamped)."""
        sampling = self.settings.sampling
        scale = sampling.guidance_scale if guidance_scale is None else guidance_scale
        guided = scale != 1.0
        concat = self.encode_video(condition[None], generator).to(self.dtype)
        references = torch.stack([reference, torch.zeros_like(reference)]) if guided else reference[None]
        tokens = self.image_tokens(references)
        self.scheduler.set_timesteps(sampling.steps, device=self.device)
        latents = randn_tensor(concat.shape, generator=generator, device=self.device, dtype=torch.float32)
        batch = tokens.shape[0]
        fps = torch.full((batch,), self.settings.fps, device=self.device)
        for timestep in tqdm(self.scheduler.timesteps, desc="video prior", disable=not progress, leave=False):
            output = self.unet.denoise(latents.expand(batch, -1, -1, -1, -1).to(self.dtype),
                                       timestep.expand(batch), concat_latents=concat.expand(batch, -1, -1, -1, -1),
                                       image_tokens=tokens, fps=fps).float()
            if guided:
                output = guide(output[:1], output[1:], scale, sampling.guidance_rescale)
            latents = self._ddim_step(output, timestep, latents, generator)
        return self.decode_video(latents)[0]

    def _ddim_step(self, output, timestep, latents, generator):
        step = self.scheduler.step(output, timestep, latents, eta=self.settings.sampling.eta, generator=generator)
        rescale = self.settings.dynamic_rescale
        if rescale is None:
            return step.prev_sample
        previous = int(timestep) - self.scheduler.config.num_train_timesteps // self.scheduler.num_inference_steps
        if previous < 0:
            return step.prev_sample
        alpha_previous = self.scheduler.alphas_cumprod[previous].to(latents.device)
        ratio = rescale.scale_at(torch.tensor([previous, int(timestep)]))
        # The step is linear in the clean-latent estimate, so scaling that estimate adds this term.
        return step.prev_sample + alpha_previous.sqrt() * (ratio[0] / ratio[1] - 1.0) * step.pred_original_sample

    # model-space helpers shared by sampling and training

    def encode_video(self, video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``[B, T, 4, H, W]`` in [-1, 1] to scaled latents ``[B, 4, T, h, w]`` (a posterior sample, as the
        official code takes)."""
        return self.sample_posterior(*self.posterior(video), generator)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B, 4, T, h, w]`` to ``[B, T, 4, H, W]`` (model space), chunk by chunk."""
        batch, _, count = latents.shape[:3]
        frames = (latents.transpose(1, 2).flatten(0, 1) / self.settings.latent_scale).to(self.dtype)
        chunk = self.settings.vae_chunk_frames
        decoded = torch.cat([self.vae.decode(frames[start:start + chunk]).sample.float()
                             for start in range(0, frames.shape[0], chunk)])
        return decoded.unflatten(0, (batch, count))

    def image_tokens(self, references: torch.Tensor) -> torch.Tensor:
        """Reference images ``[B, 3, H, W]`` in [-1, 1] to cross-attention tokens ``[B, N, D]`` (the encoder's last
        hidden states before its final layer norm, as the official OpenCLIP embedder takes, then the resampler).
        An encoder with an ``image_features`` method preprocesses the images itself."""
        if callable(getattr(self.image_encoder, "image_features", None)):
            with torch.no_grad():
                features = self.image_encoder.image_features(references.to(self.device, self.dtype))
            return self.image_proj(features)
        settings = self.settings.reference
        pixels = F.interpolate(references.float(), size=(settings.size, settings.size), mode="bicubic",
                               align_corners=False, antialias=True)
        mean = torch.tensor(settings.mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(settings.std, device=pixels.device).view(1, 3, 1, 1)
        pixels = (((pixels + 1.0) / 2.0 - mean) / std).to(self.device, self.dtype)
        with torch.no_grad():
            features = self.image_encoder(pixel_values=pixels).last_hidden_state
        return self.image_proj(features)

    # training

    def training_loss(self, batch: ClipBatch, generator: torch.Generator, zero_depth_fraction: float = 0.0
                      ) -> torch.Tensor:
        """The v-prediction loss of one batch (mean squared error), GenFusion's recipe: target and artifact videos
        encoded by the frozen VAE, a uniform timestep, DynamiCrafter's latent rescale when configured, and the
        reference image replaced by zeros (mid-grey) with probability ``condition_dropout`` so that the
        unconditional branch of guidance is learned (the artifact latents are never dropped). With probability
        ``zero_depth_fraction`` a clip's artifact disparity is set to 0, the input :meth:`estimate_depth` gives, so
        the model also learns depth from RGB (GenFusion's train-view depth). Every draw comes from ``generator``, so
        a batch and a generator state fix the loss."""
        target, artifact, references = self.model_inputs(batch)
        posteriors = [self.posterior(target), self.posterior(artifact)]
        if zero_depth_fraction > 0:
            zero_depth = artifact.clone()
            zero_depth[:, :, 3] = 0.0
            posteriors.append(self.posterior(zero_depth))
        else:
            posteriors.append(posteriors[1])
        return self.posterior_training_loss(*posteriors, references, generator, zero_depth_fraction)

    def posterior_training_loss(self, target: tuple, artifact: tuple, zero_depth: tuple, references: torch.Tensor,
                                generator: torch.Generator, zero_depth_fraction: float = 0.0) -> torch.Tensor:
        """:meth:`training_loss` from the frozen VAE's posteriors ``(mean, std)`` of the target, artifact and
        zero-depth artifact videos (:meth:`posterior`), which a trainer can compute once per clip; the same draws
        in the same order, so both give the same loss."""
        count = references.shape[0]
        if zero_depth_fraction > 0:
            zeroed = (torch.rand(count, generator=generator, device=generator.device) < zero_depth_fraction)
            keep = (~zeroed).to(self.device).view(-1, 1, 1, 1, 1)
            artifact = tuple(torch.where(keep, a, z) for a, z in zip(artifact, zero_depth))
        clean = self.sample_posterior(*target, generator)
        concat = self.sample_posterior(*artifact, generator)
        dropped = torch.rand(count, generator=generator, device=generator.device) < self.settings.condition_dropout
        references = references * (~dropped).to(self.device).view(-1, 1, 1, 1)
        tokens = self.image_tokens(references)
        timesteps = torch.randint(self.scheduler.config.num_train_timesteps, (count,), generator=generator,
                                  device=generator.device).to(self.device)
        if self.settings.dynamic_rescale is not None:
            clean = clean * self.settings.dynamic_rescale.scale_at(timesteps).to(self.device).view(-1, 1, 1, 1, 1)
        noise = randn_tensor(clean.shape, generator=generator, device=self.device, dtype=torch.float32)
        noisy = self.scheduler.add_noise(clean, noise, timesteps)
        velocity = self.scheduler.get_velocity(clean, noise, timesteps)
        fps = torch.full((count,), self.settings.fps, device=self.device)
        prediction = self.unet.denoise(noisy.to(self.dtype), timesteps, concat_latents=concat.to(self.dtype),
                                       image_tokens=tokens, fps=fps)
        return F.mse_loss(prediction.float(), velocity)

    @torch.no_grad()
    def posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior of ``[B, T, 4, H, W]`` model-space videos: (mean, std), each ``[B, T, 4, h, w]``
        float32, unscaled; ``vae_chunk_frames`` frames at a time."""
        batch, count = video.shape[:2]
        frames = video.flatten(0, 1).to(self.device, self.dtype)
        chunk = self.settings.vae_chunk_frames
        means, stds = [], []
        for start in range(0, frames.shape[0], chunk):
            distribution = self.vae.encode(frames[start:start + chunk]).latent_dist
            means.append(distribution.mean.float())
            stds.append(distribution.std.float())
        return tuple(torch.cat(parts).unflatten(0, (batch, count)) for parts in (means, stds))

    def sample_posterior(self, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A posterior sample as scaled latents ``[B, 4, T, h, w]`` (what :meth:`encode_video` gives)."""
        noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
        return ((mean + std * noise) * self.settings.latent_scale).transpose(1, 2)

    def autoencoder_loss(self, batch: ClipBatch, generator: torch.Generator, kl_weight: float,
                         frames: int | None = None) -> torch.Tensor:
        """The VAE's loss on every frame of a batch's target and artifact videos (RGB + disparity in model space):
        L1 reconstruction of a posterior sample's decoding plus ``kl_weight`` times the KL divergence to N(0, I)
        per latent element. The official prior starts from LDM3D's trained VAE; a prior built from scratch trains
        its VAE with this first (train-prior's autoencoder stage). No perceptual or adversarial term: small
        RGB-D frames, a CPU budget. ``frames``: that many frames drawn from the batch's (all when None)."""
        target, artifact, _ = self.model_inputs(batch)
        pool = torch.cat([target, artifact]).flatten(0, 1)
        if frames is not None and frames < pool.shape[0]:
            pool = pool[torch.randperm(pool.shape[0], generator=generator, device=generator.device)[:frames].cpu()]
        images = pool.to(self.device, self.dtype)
        posterior = self.vae.encode(images).latent_dist
        decoded = self.vae.decode(posterior.sample(generator=generator)).sample
        kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent element
        return F.l1_loss(decoded.float(), images.float()) + kl_weight * kl.float()

    @torch.no_grad()
    def calibrate_latent_scale(self, batch: ClipBatch, generator: torch.Generator) -> float:
        """Set ``latent_scale`` to 1 / the standard deviation of the VAE's latents of ``batch``'s target videos, the
        rule that gave Stable Diffusion its 0.18215, so the diffusion sees unit-variance latents; returns it."""
        target, _, _ = self.model_inputs(batch)
        frames = target.flatten(0, 1).to(self.device, self.dtype)
        latents = self.vae.encode(frames).latent_dist.sample(generator=generator).float()
        scale = float(1.0 / latents.std())
        self.settings = dataclasses.replace(self.settings, latent_scale=scale)
        return scale

    def model_inputs(self, batch: ClipBatch):
        """A batch in model space: target and artifact videos ``[B, T, 4, H, W]`` (RGB and normalised disparity in
        [-1, 1]) and the references ``[B, 3, H, W]``."""
        expected = (self.settings.num_frames, self.settings.height, self.settings.width)
        for name in ("target", "artifact"):
            rgb, depth = getattr(batch, f"{name}_rgb"), getattr(batch, f"{name}_depth")
            if rgb.ndim != 5 or tuple(rgb.shape[1:]) != (*expected, 3) or tuple(depth.shape) != tuple(rgb.shape[:4]):
                raise ValueError(f"ClipBatch.{name}: expected [B, {expected[0]}, {expected[1]}, {expected[2]}, 3] "
                                 f"RGB and [B, T, H, W] depth, got {tuple(rgb.shape)} and {tuple(depth.shape)}")
        videos = []
        for rgb, depth in ((batch.target_rgb, batch.target_depth), (batch.artifact_rgb, batch.artifact_depth)):
            disparity = torch.stack([depth_to_model(clip.float()) for clip in depth])
            videos.append(torch.cat([rgb_to_model(rgb.float()).permute(0, 1, 4, 2, 3), disparity[:, :, None]], 2))
        references = rgb_to_model(batch.reference.float()).permute(0, 3, 1, 2).to(self.device)
        return videos[0], videos[1], references


def guide(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float, rescale: float) -> torch.Tensor:
    """Classifier-free guidance ``u + scale (c - u)``, then guidance rescale (Lin et al. 2023, Sec. 3.4): blend
    with the guided output rescaled to the conditional output's standard deviation, by ``rescale``."""
    guided = unconditional + scale * (conditional - unconditional)
    return rescale_noise_cfg(guided, conditional, guidance_rescale=rescale) if rescale > 0 else guided


# --- folders ----------------------------------------------------------------------------------------------------

def check_video_prior_folder(folder: Path) -> None:
    """A clear :class:`PriorError` naming the first missing file of a prior folder."""
    required = (PRIOR_JSON, *(f"{name}/{file}" for name, file in CONFIG_FILES.items()))
    resolve_prior_folder(folder, env_var=ENV_VAR, what=WHAT, flag=FLAG, required_files=required)
    for name, file in WEIGHT_FILES.items():
        if not any((folder / name / candidate).exists() or (folder / name / f"{candidate}.index.json").exists()
                   for candidate in WEIGHT_NAMES):
            raise PriorError(f"{WHAT}: {folder} has no {name}/{file!r} (nor a sharded {file}.index.json); "
                             f"expected a folder saved with save_pretrained()")


def read_settings(folder: Path) -> VideoPriorSettings:
    path = folder / PRIOR_JSON
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PriorError(f"{WHAT}: {path} is not valid JSON ({error})") from error
    return VideoPriorSettings.from_dict(data, str(path))


def load_video_prior(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                     dtype: torch.dtype | None = None) -> DiffusionVideoPrior:
    """The prior in ``path`` (the ``--prior`` flag), else in ``$GFBENCH_VIDEO_PRIOR``; a :class:`PriorError`
    naming what is missing when neither names a complete folder."""
    folder = resolve_prior_folder(path, env_var=ENV_VAR, what=WHAT, flag=FLAG)
    return DiffusionVideoPrior.from_pretrained(folder, device=device, dtype=dtype)


def _load_component(folder: Path, name: str, load):
    try:
        return load(folder / name)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as error:
        raise PriorError(f"{WHAT}: cannot load {folder / name}: {error}") from error


# --- building ---------------------------------------------------------------------------------------------------

def video_prior_spec(spec: str | os.PathLike | dict = "tiny") -> dict:
    """A build spec: a preset name (``tiny``, ``genfusion-512``), a JSON file, or a dict with the sections
    ``prior`` (the settings of ``prior.json``), ``unet``, ``vae``, ``image_encoder`` (``CLIPVisionConfig``),
    ``image_proj`` and ``scheduler`` (constructor arguments of each component)."""
    if isinstance(spec, dict):
        data = spec
    elif str(spec) in PRESETS:
        data = json.loads(resources.files("gfbench.priors").joinpath(f"video_presets/{spec}.json").read_text())
    else:
        path = Path(spec)
        if not path.is_file():
            raise PriorError(f"{WHAT}: {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
        data = json.loads(path.read_text())
    sections = ("prior", "unet", "vae", "image_encoder", "image_proj", "scheduler")
    missing = [section for section in sections if section not in data]
    if missing:
        raise PriorError(f"{WHAT}: build spec has no {missing[0]!r} section (needs {', '.join(sections)})")
    return data


def build_video_prior(spec: str | os.PathLike | dict = "tiny", *, seed: int = 0) -> DiffusionVideoPrior:
    """A randomly initialised prior from a build spec (:func:`video_prior_spec`), the same for the same seed; the
    starting point of training and of tests. Save it with :meth:`DiffusionVideoPrior.save_pretrained`."""
    data = video_prior_spec(spec)
    settings = VideoPriorSettings.from_dict(data["prior"], "build spec 'prior'")
    unet_class = resolve_video_unet(settings.unet_class)
    if (settings.image_encoder_class, settings.image_proj_class) != ("CLIPVisionModel", "ImageResampler"):
        raise PriorError(f"{WHAT}: a build spec makes a CLIPVisionModel and an ImageResampler, not "
                         f"{settings.image_encoder_class!r} / {settings.image_proj_class!r}; a converted released "
                         f"model comes from 'gfbench prior convert'")

    def arguments(section: str) -> dict:
        return {key: value for key, value in data[section].items() if not key.startswith("_")}

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = unet_class(**arguments("unet"))
        vae = AutoencoderKL(**arguments("vae"))
        image_encoder = CLIPVisionModel(CLIPVisionConfig(**arguments("image_encoder")))
        image_proj = ImageResampler(**arguments("image_proj"))
    scheduler = DDIMScheduler(**arguments("scheduler"))
    name = spec if isinstance(spec, str) and spec in PRESETS else "custom"
    source = PriorSource(kind="video", name=f"untrained-{name}-seed{seed}")
    for module in (unet, vae, image_encoder, image_proj):
        module.eval()
    return DiffusionVideoPrior(unet=unet, vae=vae, image_encoder=image_encoder, image_proj=image_proj,
                               scheduler=scheduler, settings=settings, source=source)


def _check_components(settings, unet, vae, image_encoder, image_proj, scheduler) -> None:
    problems = []
    vae_config = vae.config
    if (vae_config.in_channels, vae_config.out_channels, vae_config.latent_channels) != (4, 4, 4):
        problems.append(f"vae must map 4 channels (RGB + disparity) to 4 latent channels and back, got "
                        f"{vae_config.in_channels} -> {vae_config.latent_channels} -> {vae_config.out_channels}")
    factor = 2 ** (len(vae_config.block_out_channels) - 1)
    if settings.height % factor or settings.width % factor:
        problems.append(f"height x width {settings.height} x {settings.width} is not a multiple of the VAE's "
                        f"downsampling factor {factor}")
    if getattr(unet.config, "in_channels", 8) != 8 or getattr(unet.config, "out_channels", 4) != 4:
        problems.append("unet must take 8 channels (noise latent + artifact latent) and return 4")
    (in_name, proj_in), (out_name, proj_out) = (_config_value(image_proj, names) for names in
                                                (("embed_dims", "embedding_dim"), ("output_dims", "output_dim")))
    width_name, encoder_width = _config_value(image_encoder, ("hidden_size", "width"))
    if proj_in != encoder_width:
        problems.append(f"image_proj.{in_name} {proj_in} != image_encoder {width_name} {encoder_width}")
    cross_name, cross_attention = _config_value(unet, ("cross_attention_dim", "context_dim"))
    if cross_attention is not None and proj_out != cross_attention:
        problems.append(f"image_proj.{out_name} {proj_out} != unet {cross_name} {cross_attention}")
    if settings.reference.size != image_encoder.config.image_size:
        problems.append(f"reference.size {settings.reference.size} != image_encoder image_size "
                        f"{image_encoder.config.image_size}")
    if scheduler.config.prediction_type != "v_prediction":
        problems.append(f"scheduler prediction_type must be v_prediction, got {scheduler.config.prediction_type!r}")
    if problems:
        raise PriorError(f"{WHAT}: inconsistent components: " + "; ".join(problems))


# --- small helpers ----------------------------------------------------------------------------------------------

def _config_value(module, names: tuple[str, ...]) -> tuple[str, object]:
    """The first of ``names`` present in a component's config, with its value (diffusers and transformers
    configs name widths differently); ``(names[0], None)`` when none is."""
    config = module.config
    for name in names:
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if value is not None:
            return name, value
    return names[0], None


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if seed is not None and generator is not None:
        raise ValueError("pass a seed or a generator, not both")
    return generator if generator is not None else torch.Generator().manual_seed(0 if seed is None else seed)


def _as_image(image: torch.Tensor) -> torch.Tensor:
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"reference image must be [H, W, 3], got {tuple(image.shape)}")
    return image.permute(2, 0, 1)


def _frame_indices(count: int, num_frames: int) -> torch.Tensor:
    """Input frame for each of the model's ``num_frames`` frames (nearest, repeating frames of a short window)."""
    if not 1 <= count <= num_frames:
        raise ValueError(f"the video prior takes 1 to {num_frames} frames at a time, got {count}")
    return torch.div(torch.arange(num_frames) * count, num_frames, rounding_mode="floor")


def _first_positions(indices: torch.Tensor, count: int) -> torch.Tensor:
    """Where each input frame first appears among the model's frames."""
    return torch.stack([torch.nonzero(indices == frame)[0, 0] for frame in range(count)])


def _resize(frames: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    if mode == "nearest":
        return F.interpolate(frames, size=size, mode="nearest")
    return F.interpolate(frames, size=size, mode=mode, align_corners=False)


__all__ = ["ClipBatch", "DiffusionVideoPrior", "DynamicRescale", "ENV_VAR", "FLAG", "PRESETS", "RGBDVideo",
           "ReferenceSettings", "SamplingSettings", "VideoPrior", "VideoPriorSettings", "build_video_prior",
           "check_video_prior_folder", "depth_from_model", "depth_to_model", "guide", "load_video_prior",
           "read_settings", "rgb_from_model", "rgb_to_model", "video_prior_spec"]
