"""GPU memory of one repair round of the released model, estimated without a GPU.

Weights: parameter counts of the models built on the meta device, times the bytes of the dtype. Activations: the
round's stages run on the meta device (shapes only) under a dispatch mode that adds up the bytes of every live
tensor and keeps the peak, which is what a caching allocator must hold at least. Attention is counted as a fused
kernel (PyTorch's flash / memory-efficient scaled-dot-product attention on CUDA: the output, no score matrix),
since the meta device would otherwise take the math path. Not counted: the CUDA context (about 0.5 GiB), kernel
workspaces and allocator fragmentation; hence an estimate until measured on a GPU.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from gfbench.priors.official.architecture import OfficialArchitecture

GIB = 1024 ** 3


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the storages of all live tensors created under this mode; ``peak`` is their maximum."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._references: dict[int, int] = {}

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key, size = storage._cdata, storage.nbytes()
        if key not in self._references:
            self._references[key] = 0
            self.live += size
            self.peak = max(self.peak, self.live)
        self._references[key] += 1
        weakref.finalize(tensor, self._release, key, size)

    def _release(self, key: int, size: int) -> None:
        self._references[key] -= 1
        if not self._references[key]:
            del self._references[key]
            self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in pytree.tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out


@contextmanager
def fused_attention_shapes():
    """Within the block, scaled-dot-product attention returns an output of the right shape without forming the
    score matrix (how the fused CUDA kernels use memory); the values are meaningless."""
    original = F.scaled_dot_product_attention

    def fused(query, key, value, *args, **kwargs):
        return query.new_empty(*query.shape[:-1], value.shape[-1])

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@dataclass
class MemoryEstimate:
    """Bytes of weights per model and peak bytes of activations per stage of one repair round."""

    height: int
    width: int
    frames: int
    dtype: str
    weights: dict[str, int] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)
    activations: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """All weights resident plus the largest stage's activations (the stages run one after another)."""
        return sum(self.weights.values()) + max(self.activations.values())

    def summary(self) -> str:
        lines = [f"{self.width}x{self.height} x {self.frames} frames, {self.dtype}: "
                 f"{self.total / GIB:.2f} GiB estimated"]
        lines += [f"  weights {name}: {count / 1e6:.1f} M parameters, {self.weights[name] / GIB:.2f} GiB"
                  for name, count in self.parameters.items()]
        lines += [f"  activations {stage}: {size / GIB:.2f} GiB peak" for stage, size in self.activations.items()]
        return "\n".join(lines)


def _peak(run) -> int:
    with torch.no_grad(), fused_attention_shapes(), LiveTensorBytes() as tracker:
        run()
    return tracker.peak


def estimate_repair_memory(architecture: OfficialArchitecture | None = None, *, height: int = 320,
                           width: int = 512, frames: int = 16, dtype: torch.dtype = torch.float16,
                           guidance_batch: int = 2, vae_frames_per_chunk: int = 1) -> MemoryEstimate:
    """One repair round: encode the artifact RGB-D video (VAE, ``vae_frames_per_chunk`` frames at a time), encode
    and project the reference image, one UNet call on ``guidance_batch`` videos (2: conditional and
    unconditional together for classifier-free guidance), decode the latents (VAE, in chunks)."""
    architecture = architecture or OfficialArchitecture.official()
    # nn.Module.to, not ModelMixin.to: diffusers warns about float32-kept modules, which these models have none of
    models = {name: torch.nn.Module.to(architecture.build(name, device="meta"), dtype).eval()
              for name in ("unet", "image_encoder", "image_projector", "vae")}
    element = torch.empty((), dtype=dtype).element_size()
    estimate = MemoryEstimate(height, width, frames, str(dtype).removeprefix("torch."))
    for name, model in models.items():
        estimate.parameters[name] = sum(p.numel() for p in model.parameters())
        estimate.weights[name] = estimate.parameters[name] * element

    unet, vae = models["unet"], models["vae"]
    channels = architecture.vae["in_channels"]
    latent_channels = architecture.vae["latent_channels"]
    factor = 2 ** (len(architecture.vae["block_out_channels"]) - 1)
    latent_shape = (guidance_batch, latent_channels, frames, height // factor, width // factor)
    meta = dict(device="meta", dtype=dtype)

    def encode_video():
        for _ in range(0, frames, vae_frames_per_chunk):
            vae.encode(torch.empty(vae_frames_per_chunk, channels, height, width, **meta)).latent_dist.sample()

    def encode_reference():
        tokens = models["image_encoder"](torch.empty(1, 3, height, width, **meta))
        models["image_projector"](tokens)

    def denoise():
        sample = torch.empty(guidance_batch, architecture.unet["in_channels"], *latent_shape[2:], **meta)
        tokens = architecture.image_projector["num_queries"] * (architecture.image_projector["video_length"] or 1)
        context = torch.empty(guidance_batch, tokens, architecture.unet["context_dim"], **meta)
        unet(sample, torch.zeros(guidance_batch, dtype=torch.long, device="meta"), context)

    def decode_video():
        for _ in range(0, frames, vae_frames_per_chunk):
            vae.decode(torch.empty(vae_frames_per_chunk, latent_channels, *latent_shape[3:], **meta))

    estimate.activations = {"vae_encode": _peak(encode_video), "reference_image": _peak(encode_reference),
                            "unet": _peak(denoise), "vae_decode": _peak(decode_video)}
    return estimate


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Estimate the GPU memory of one repair round of the released "
                                                 "GenFusion model (meta device, no GPU needed).")
    parser.add_argument("--height", type=int, default=320, help="frame height in pixels")
    parser.add_argument("--width", type=int, default=512, help="frame width in pixels")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                        help="weights and activations precision")
    parser.add_argument("--guidance-batch", type=int, default=2,
                        help="videos per UNet call: 2 = conditional and unconditional together, 1 = one by one")
    parser.add_argument("--vae-frames-per-chunk", type=int, default=1, help="frames per VAE encode/decode call")
    args = parser.parse_args(argv)
    estimate = estimate_repair_memory(height=args.height, width=args.width, frames=args.frames,
                                      dtype=getattr(torch, args.dtype), guidance_batch=args.guidance_batch,
                                      vae_frames_per_chunk=args.vae_frames_per_chunk)
    print(estimate.summary())


if __name__ == "__main__":
    main()
