"""The released GenFusion model (a DynamiCrafter-style latent video diffusion checkpoint) as project models.

- :class:`GenFusionUNet3D`, :class:`ImageProjector`, :class:`OpenCLIPImageEncoder`: diffusers ``ModelMixin`` /
  ``ConfigMixin`` models (``from_pretrained`` / ``save_pretrained``) whose state dicts take the official weights
  through :class:`KeyMap`;
- :class:`OfficialArchitecture`: every architecture number (``data/genfusion_official.json``);
- :class:`Manifest`: the official checkpoint's keys and shapes, generated from the official code;
- :func:`convert_checkpoint`: the Lightning ``.ckpt`` + LDM3D VAE -> a video-prior folder of safetensors and
  configs (with ``prior.json``), which ``gfbench.priors.video.load_video_prior`` (``--prior``) loads as the
  project's video prior (:meth:`GenFusionUNet3D.denoise`, :meth:`OpenCLIPImageEncoder.image_features`);
  :func:`load_converted` loads its models alone.
"""

from gfbench.priors.official.architecture import ArchitectureError, OfficialArchitecture
from gfbench.priors.official.convert import (ConversionError, ConvertedModels, convert_checkpoint,
                                            load_checkpoint_state_dict, load_converted)
from gfbench.priors.official.image_encoder import OpenCLIPImageEncoder
from gfbench.priors.official.image_projector import ImageProjector
from gfbench.priors.official.key_map import KeyMap, KeyTarget
from gfbench.priors.official.manifest import Manifest, compare_with_project
from gfbench.priors.official.unet import GenFusionUNet3D

__all__ = ["ArchitectureError", "ConversionError", "ConvertedModels", "GenFusionUNet3D", "ImageProjector", "KeyMap",
           "KeyTarget", "Manifest", "OfficialArchitecture", "OpenCLIPImageEncoder", "compare_with_project",
           "convert_checkpoint", "load_checkpoint_state_dict", "load_converted"]
