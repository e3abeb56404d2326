"""Convert the released GenFusion checkpoint (a Lightning ``.ckpt``) and the LDM3D VAE into a folder of the
project's models.

Output layout (every model folder loads with ``<Class>.from_pretrained(folder)``)::

    out/
      prior.json        video-prior settings (gfbench-video-prior/1): the folder loads with --prior
      unet/             config.json + diffusion_pytorch_model.safetensors   GenFusionUNet3D
      image_proj/       config.json + diffusion_pytorch_model.safetensors   ImageProjector
      image_encoder/    config.json + diffusion_pytorch_model.safetensors   OpenCLIPImageEncoder
      vae/              config.json + diffusion_pytorch_model.safetensors   diffusers AutoencoderKL
      scheduler/        scheduler_config.json                               diffusers DDIMScheduler
      architecture.json the OfficialArchitecture (every number, the latent scale 0.18215 included)
      source.json       sha256 and size of the checkpoint and of every VAE file, key counts, dtype

Errors are one line (:class:`ConversionError`) and name the file and the first offending key.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import shutil
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from safetensors.torch import save_file

from gfbench import __version__
from gfbench.metrics import sha256_file
from gfbench.priors import PriorError, folder_fingerprint
from gfbench.priors.official.architecture import MODEL_CLASSES, OfficialArchitecture
from gfbench.priors.official.key_map import KeyMap
from gfbench.priors.official.loading import load_model_folder

PROJECT_COMPONENTS = ("unet", "image_projector", "image_encoder")
# Component -> subfolder: the video prior's folder layout (gfbench.priors.video).
FOLDERS = {"unet": "unet", "image_projector": "image_proj", "image_encoder": "image_encoder", "vae": "vae"}
PRIOR_SETTINGS_FILE = "data/genfusion_official_prior.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class ConversionError(PriorError):
    """The checkpoint or VAE is not what the converter expects; the message is one line naming file and key."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def load_checkpoint_state_dict(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (or a bare state dict), memory-mapped where possible.

    Loads with ``weights_only=True``; a checkpoint that needs arbitrary Python objects is refused unless
    ``allow_pickle`` (unpickling runs code from the file: only for files you trust)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such checkpoint file")
    try:
        checkpoint = _torch_load(path, weights_only=not allow_pickle)
    except pickle.UnpicklingError as error:
        raise ConversionError(f"{path}: a weights-only load refuses it ({_first_line(error)}); if you trust the "
                              f"file, allow pickled objects (--allow-pickle)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt "
                              f"({_first_line(error)})") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        keys = ", ".join(list(checkpoint)[:5]) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ConversionError(f"{path}: no 'state_dict' of tensors in this checkpoint (found: {keys})")
    return state


def _torch_load(path: Path, *, weights_only: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        return torch.load(path, map_location="cpu", weights_only=weights_only)  # legacy (non-zip) format


def expected_shapes(architecture: OfficialArchitecture) -> dict[str, dict[str, tuple[int, ...]]]:
    """Project key -> shape of each project component at this architecture (models built on the meta device)."""
    return {component: {key: tuple(t.shape) for key, t in architecture.build(component, device="meta")
                        .state_dict().items()}
            for component in PROJECT_COMPONENTS}


def split_state_dict(state: dict[str, torch.Tensor], architecture: OfficialArchitecture, *,
                     origin: str = "checkpoint") -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, int]]:
    """Official state dict -> ``{component: {project key: tensor}}`` (``vae`` included when present) and the
    count of dropped keys; :class:`ConversionError` naming the first mis-shaped, missing or unexpected key."""
    key_map = KeyMap(architecture.unet)
    expected = expected_shapes(architecture)
    parts: dict[str, dict[str, torch.Tensor]] = {component: {} for component in (*PROJECT_COMPONENTS, "vae")}
    misshaped, unexpected, dropped = [], [], 0
    for key, tensor in state.items():
        target = key_map.to_project(key)
        if target.dropped:
            dropped += 1
        elif target.component is None or (target.component != "vae"
                                           and target.key not in expected[target.component]):
            unexpected.append(key)
        elif target.component != "vae" and tuple(tensor.shape) != expected[target.component][target.key]:
            misshaped.append((key, tuple(tensor.shape), expected[target.component][target.key]))
        else:
            parts[target.component][target.key] = tensor
    missing = [key_map.to_official(component, key) for component in PROJECT_COMPONENTS
               for key in expected[component] if key not in parts[component]]
    missing = [key for key in missing if key not in {m[0] for m in misshaped}]
    summary = f"({len(missing)} missing, {len(misshaped)} mis-shaped, {len(unexpected)} unexpected keys)"
    if misshaped:
        key, found, wanted = misshaped[0]
        raise ConversionError(f"{origin}: key {key!r} has shape {list(found)}, the {architecture.name} "
                              f"architecture expects {list(wanted)} {summary}")
    if missing:
        raise ConversionError(f"{origin}: missing key {missing[0]!r}: not a complete {architecture.name} "
                              f"checkpoint, or truncated {summary}")
    if unexpected:
        raise ConversionError(f"{origin}: unexpected key {unexpected[0]!r}: not a {architecture.name} "
                              f"checkpoint {summary}")
    return parts, {"dropped": dropped}


def load_vae(vae_dir: str | os.PathLike, architecture: OfficialArchitecture):
    """The diffusers ``AutoencoderKL`` in ``vae_dir`` (or its ``vae/`` subfolder), checked against the
    architecture's VAE layout."""
    folder = Path(vae_dir)
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        raise ConversionError(f"{vae_dir}: no config.json (nor vae/config.json); expected the diffusers folder "
                              f"of Intel/ldm3d-4c")
    try:
        vae = AutoencoderKL.from_pretrained(folder, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError, EnvironmentError) as error:
        raise ConversionError(f"{folder}: cannot load the VAE ({_first_line(error)})") from None
    for field, wanted in architecture.vae.items():
        found = vae.config.get(field)
        if isinstance(found, (list, tuple)):
            found, wanted = list(found), list(wanted)
        if found != wanted:
            raise ConversionError(f"{folder}/config.json: {field} is {found}, the {architecture.name} VAE has "
                                  f"{wanted} (expected Intel/ldm3d-4c, the 4-channel RGB-D VAE)")
    return vae, folder


def check_vae_matches_checkpoint(vae, checkpoint_part: dict[str, torch.Tensor], *, origin: str,
                                 vae_folder: Path, tolerance: float = 1e-3) -> None:
    """When the checkpoint carries its own copy of the frozen VAE, the given VAE must be that one."""
    if not checkpoint_part:
        return
    reference = vae.state_dict()
    for key, tensor in checkpoint_part.items():
        name = "first_stage_model." + key
        if key not in reference:
            raise ConversionError(f"{origin}: unexpected key {name!r}: its VAE has a layout other than the "
                                  f"diffusers AutoencoderKL in {vae_folder}")
        if tuple(tensor.shape) != tuple(reference[key].shape):
            raise ConversionError(f"{origin}: key {name!r} has shape {list(tensor.shape)}, the VAE in "
                                  f"{vae_folder} has {list(reference[key].shape)}")
        difference = (tensor.float() - reference[key].float()).abs().max().item() if tensor.numel() else 0.0
        if difference > tolerance * max(1.0, reference[key].float().abs().max().item()):
            raise ConversionError(f"{vae_folder}: differs from the VAE inside {origin} (first at {name!r}, "
                                  f"max difference {difference:.3g}); pass the VAE GenFusion was trained with "
                                  f"(Intel/ldm3d-4c)")


def check_schedule(state: dict[str, torch.Tensor], architecture: OfficialArchitecture, *, origin: str) -> None:
    """The checkpoint's ``alphas_cumprod`` buffer (when present) must be the architecture's schedule."""
    if "alphas_cumprod" not in state:
        return
    found = state["alphas_cumprod"].float()
    wanted = architecture.alphas_cumprod()
    if found.shape != wanted.shape or not torch.allclose(found, wanted, atol=1e-5, rtol=1e-4):
        raise ConversionError(f"{origin}: its noise schedule (alphas_cumprod) differs from the {architecture.name} "
                              f"diffusion settings; not a model trained with that schedule")


def _save_component(out_dir: Path, component: str, tensors: dict[str, torch.Tensor], config_source,
                    dtype: torch.dtype) -> None:
    folder = out_dir / FOLDERS[component]
    folder.mkdir(parents=True, exist_ok=True)
    config_source.save_config(folder)
    cast = {key: tensor.to(dtype).contiguous() if tensor.is_floating_point() else tensor.contiguous()
            for key, tensor in tensors.items()}
    save_file(cast, folder / WEIGHTS_NAME, metadata={"format": "pt"})


def _write_folder(folder: Path, parts: dict, architecture: OfficialArchitecture, vae, dtype: torch.dtype,
                  say: Callable[[str], None]) -> None:
    for component in PROJECT_COMPONENTS:
        say(f"writing {component}")
        _save_component(folder, component, parts[component], architecture.build(component, device="meta"), dtype)
    say("writing vae")
    _save_component(folder, "vae", vae.state_dict(), vae, dtype)
    DDIMScheduler(**architecture.scheduler_config()).save_pretrained(folder / "scheduler")
    (folder / "architecture.json").write_text(json.dumps(architecture.as_dict(), indent=2) + "\n")


def official_prior_settings(architecture: OfficialArchitecture, dtype: str,
                            overrides: dict | None = None) -> dict:
    """``prior.json`` for a converted folder: the official inference settings (``data/genfusion_official_prior.json``,
    with ``overrides``, e.g. a smaller resolution) plus what the architecture fixes (frames, latent scale,
    dynamic rescale, reference preprocessing) and the model classes."""
    from gfbench.priors.video import FORMAT, VideoPriorSettings

    text = resources.files("gfbench.priors.official").joinpath(PRIOR_SETTINGS_FILE).read_text()
    inference = {key: value for key, value in json.loads(text).items() if not key.startswith("_")}
    inference.update(overrides or {})
    encoder = {**_defaults(MODEL_CLASSES["image_encoder"]), **architecture.image_encoder}
    diffusion = architecture.diffusion
    settings = {
        "format": FORMAT,
        "unet_class": "gfbench.priors.official:GenFusionUNet3D",
        "image_encoder_class": "gfbench.priors.official:OpenCLIPImageEncoder",
        "image_proj_class": "gfbench.priors.official:ImageProjector",
        "num_frames": architecture.unet.get("temporal_length", 16),
        "latent_scale": diffusion["latent_scale_factor"],
        "dynamic_rescale": {"base_scale": diffusion["dynamic_rescale_base_scale"],
                            "turning_step": diffusion["dynamic_rescale_turning_step"]},
        "reference": {"size": encoder["image_size"], "mean": list(encoder["image_mean"]),
                      "std": list(encoder["image_std"])},
        "gpu_dtype": dtype,
        **inference,
    }
    return VideoPriorSettings.from_dict(settings, PRIOR_SETTINGS_FILE).to_dict()


def _defaults(model_class) -> dict:
    return {name: parameter.default for name, parameter in inspect.signature(model_class.__init__).parameters.items()
            if parameter.default is not inspect.Parameter.empty}


def convert_checkpoint(ckpt_path: str | os.PathLike, vae_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                       architecture: OfficialArchitecture | None = None, dtype: str = "float16",
                       allow_pickle: bool = False, overwrite: bool = False,
                       progress: Callable[[str], None] | None = None, prior_overrides: dict | None = None) -> Path:
    """Convert once: read and check everything, then write ``out_dir`` (layout in the module docstring).

    ``prior_overrides`` replace settings of the written ``prior.json`` (e.g. ``height`` / ``width``). Nothing is
    written when a check fails, and the folder appears complete or not at all (written beside it as
    ``<out>.partial``, then renamed); an existing non-empty ``out_dir`` is refused unless ``overwrite``."""
    architecture = architecture or OfficialArchitecture.official()
    if dtype not in DTYPES:
        raise ConversionError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    prior_settings = official_prior_settings(architecture, dtype, prior_overrides)
    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConversionError(f"{out_dir}: exists and is not empty; choose another --out or remove it")
    say = progress or (lambda message: None)

    say(f"reading {ckpt_path}")
    state = load_checkpoint_state_dict(ckpt_path, allow_pickle=allow_pickle)
    parts, counts = split_state_dict(state, architecture, origin=str(ckpt_path))
    check_schedule(state, architecture, origin=str(ckpt_path))
    vae, vae_folder = load_vae(vae_dir, architecture)
    check_vae_matches_checkpoint(vae, parts["vae"], origin=str(ckpt_path), vae_folder=vae_folder)

    staging = out_dir.with_name(out_dir.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    _write_folder(staging, parts, architecture, vae, DTYPES[dtype], say)
    say(f"hashing {ckpt_path.name}")
    source = {
        "converter": f"gfbench {__version__}",
        "architecture": architecture.name,
        "dtype": dtype,
        "checkpoint": {"name": ckpt_path.name, "path": str(ckpt_path.resolve()), "bytes": ckpt_path.stat().st_size,
                       "sha256": sha256_file(ckpt_path)},
        "vae": {"path": str(vae_folder.resolve()), "files_sha256": folder_fingerprint(vae_folder)},
        "keys": {**{component: len(parts[component]) for component in (*PROJECT_COMPONENTS, "vae")}, **counts},
    }
    (staging / "source.json").write_text(json.dumps(source, indent=2) + "\n")
    (staging / "prior.json").write_text(json.dumps(prior_settings, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return out_dir


@dataclass
class ConvertedModels:
    """The models of a converted folder, loaded; ``architecture`` holds the numbers the repair loop needs
    (latent scale, schedule, default frame rate), ``source`` the provenance written by the converter."""

    unet: torch.nn.Module
    image_projector: torch.nn.Module
    image_encoder: torch.nn.Module
    vae: torch.nn.Module
    scheduler: DDIMScheduler
    architecture: OfficialArchitecture
    source: dict


def _load_component(folder: Path, model_class, torch_dtype: torch.dtype | None, device) -> torch.nn.Module:
    return load_model_folder(model_class, folder, torch_dtype=torch_dtype, device=device)


def load_converted(folder: str | os.PathLike, *, torch_dtype: torch.dtype | None = None,
                   device: str | torch.device = "cpu") -> ConvertedModels:
    """Load a folder written by :func:`convert_checkpoint`; :class:`PriorError` naming what is missing."""
    folder = Path(folder)
    required = [f"{FOLDERS[component]}/config.json" for component in (*PROJECT_COMPONENTS, "vae")]
    required += ["scheduler/scheduler_config.json", "architecture.json", "source.json"]
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise PriorError(f"{folder}: no {missing[0]}; expected a folder written by 'gfbench prior convert'")
    architecture = OfficialArchitecture.from_json(folder / "architecture.json")
    models = {component: _load_component(folder / FOLDERS[component], MODEL_CLASSES[component], torch_dtype, device)
              for component in (*PROJECT_COMPONENTS, "vae")}
    return ConvertedModels(**models, scheduler=DDIMScheduler.from_pretrained(folder / "scheduler"),
                           architecture=architecture, source=json.loads((folder / "source.json").read_text()))
