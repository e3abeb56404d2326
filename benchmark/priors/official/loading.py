"""Loading a converted model folder without first initialising it at random.

diffusers' ``from_pretrained`` builds the model with random weights and then copies the saved ones in, unless
``accelerate`` is installed (not a dependency of gfbench): for the released model that is minutes and twice the
memory for 2 billion parameters. Here the model is built on the ``meta`` device and the saved tensors become its
parameters (``assign=True``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from gfbench.priors import PriorError

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def load_model_folder(model_class, folder: str | os.PathLike, *, torch_dtype: torch.dtype | None = None,
                      device: str | torch.device = "cpu") -> torch.nn.Module:
    """``model_class`` from ``folder/config.json`` and ``folder/diffusion_pytorch_model.safetensors``, in eval
    mode; a one-line :class:`PriorError` when the weights are unreadable or do not fit the config."""
    folder = Path(folder)
    with torch.device("meta"):
        model = model_class.from_config(model_class.load_config(folder))
    try:
        state = load_file(folder / WEIGHTS_NAME, device=str(device))
    except (OSError, RuntimeError, ValueError, SafetensorError) as error:
        raise PriorError(f"{folder / WEIGHTS_NAME}: cannot be read, truncated or corrupt "
                         f"({first_line(error)})") from None
    if torch_dtype is not None:
        state = {key: t.to(torch_dtype) if t.is_floating_point() else t for key, t in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise PriorError(f"{folder / WEIGHTS_NAME}: does not fit {folder / 'config.json'} "
                         f"({first_line(error)})") from None
    return model.eval()


class FolderLoadingMixin:
    """``from_pretrained(local_folder)`` through :func:`load_model_folder`; anything else (a hub id, diffusers'
    loading options) goes to diffusers' own ``from_pretrained``."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        folder = Path(pretrained_model_name_or_path)
        options = set(kwargs) - {"torch_dtype"}
        if options or not (folder / "config.json").is_file() or not (folder / WEIGHTS_NAME).is_file():
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return load_model_folder(cls, folder, torch_dtype=kwargs.get("torch_dtype"))
