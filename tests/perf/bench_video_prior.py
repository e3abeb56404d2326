"""The video prior's cost: a repair with the tiny prior on the CPU (measured), and one repair round at GenFusion's
sizes in fp16 (estimated without weights or a GPU).

Not a pytest module (pytest collects ``test_*.py`` only). Run:

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python tests/perf/bench_video_prior.py [--repeats N] [--skip-tiny]

(on a shared machine more threads mostly add spinning: 2 threads under load measured 10x the CPU time)

Tiny: the ``tiny`` preset (25 DDIM steps with guidance, so 25 UNet calls on a batch of 2) repairing 16 frames of
64x40; wall and process CPU time per repair.

GenFusion size: the ``genfusion-512`` preset (16 frames at 512x320, latents 64x40) built with fake tensors in
fp16. Parameters per component; floating-point operations (``FlopCounterMode``) and peak activation memory
(``MemTracker``) of each stage that runs on its own: the image encoder and resampler on the reference and the zero
image, the VAE encoder and decoder on ``vae_chunk_frames`` frames, and one guided UNet call (batch 2); the round's
peak is all weights plus the largest stage. The attention's memory is that of a fused SDPA kernel (no attention
matrix), which is what a GPU runs in fp16.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils.flop_counter import FlopCounterMode

from gfbench.priors.video import RGBDVideo, build_video_prior, video_prior_spec

MIB = 2 ** 20


def tiny_repair_time(repeats: int) -> None:
    prior = build_video_prior("tiny", seed=0)
    settings = prior.settings
    generator = torch.Generator().manual_seed(0)
    shape = (settings.num_frames, settings.height, settings.width)
    video = RGBDVideo(rgb=torch.rand(*shape, 3, generator=generator), depth=1 + torch.rand(*shape, generator=generator))
    reference = torch.rand(settings.height, settings.width, 3, generator=generator)
    prior.repair(video, reference, seed=0)  # warm-up
    walls, cpus = [], []
    for seed in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        prior.repair(video, reference, seed=seed)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    parameters = sum(p.numel() for module in prior.modules().values() for p in module.parameters())
    print(f"tiny prior ({parameters / 1e6:.2f} M parameters): {settings.num_frames} frames "
          f"{settings.width}x{settings.height}, {settings.sampling.steps} steps, guidance {settings.sampling.guidance_scale}"
          f": {sum(walls) / repeats:.2f} s wall, {sum(cpus) / repeats:.2f} s CPU per repair "
          f"({torch.get_num_threads()} threads)")


def measure(label: str, modules: list[torch.nn.Module], run) -> tuple[float, float]:
    """(GFLOP, peak activation MiB) of ``run()`` on fake tensors."""
    tracker = MemTracker()
    for module in modules:
        module.requires_grad_(True)  # MemTracker hooks every parameter; nothing runs backward here
        tracker.track_external(module)
    with FlopCounterMode(display=False) as flops, tracker, torch.no_grad():
        run()
    peak = tracker.get_tracker_snapshot("peak")
    activations = sum(values.get("Total", 0) - sum(v for k, v in values.items() if "PARAM" in str(k))
                      for values in peak.values())
    gflop = flops.get_total_flops() / 1e9
    print(f"  {label:<44} {gflop:10.1f} GFLOP   peak activations {activations / MIB:8.0f} MiB")
    return gflop, activations / MIB


def genfusion_size_estimate() -> None:
    spec = video_prior_spec("genfusion-512")
    dtype = torch.float16
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            prior = build_video_prior(spec, seed=0)
            report(prior, dtype)
    finally:
        torch.set_default_dtype(previous)


def report(prior, dtype) -> None:
    settings = prior.settings
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in prior.modules().items()}
    weights = sum(counts.values()) * torch.finfo(dtype).bits / 8 / MIB
    print(f"GenFusion-size prior ({settings.num_frames} frames {settings.width}x{settings.height}, fp16):")
    for name, count in counts.items():
        print(f"  {name:<14} {count / 1e6:9.1f} M parameters")
    print(f"  weights in fp16: {weights:.0f} MiB")
    factor = prior.vae_factor
    frames, height, width = settings.num_frames, settings.height, settings.width
    latent = (height // factor, width // factor)
    chunk = settings.vae_chunk_frames
    stages = {
        "image encoder + resampler (batch 2)": (
            [prior.image_encoder, prior.image_proj],
            lambda: prior.image_tokens(torch.zeros(2, 3, height, width, dtype=dtype))),
        f"VAE encode, {chunk} frames": (
            [prior.vae], lambda: prior.vae.encode(torch.zeros(chunk, 4, height, width, dtype=dtype)).latent_dist.mode()),
        f"VAE decode, {chunk} frames": (
            [prior.vae], lambda: prior.vae.decode(torch.zeros(chunk, 4, *latent, dtype=dtype)).sample),
        f"UNet, guided (batch 2), latents {latent[1]}x{latent[0]}": (
            [prior.unet], lambda: prior.unet.denoise(
                torch.zeros(2, 4, frames, *latent, dtype=dtype), torch.tensor([961, 961]),
                concat_latents=torch.zeros(2, 4, frames, *latent, dtype=dtype),
                image_tokens=torch.zeros(2, prior.image_proj.config.num_queries * prior.image_proj.config.frames,
                                         prior.image_proj.config.output_dims, dtype=dtype),
                fps=torch.tensor([30, 30]))),
    }
    results = {label: measure(label, modules, run) for label, (modules, run) in stages.items()}
    (encoder_flop, _), (encode_flop, _), (decode_flop, _), (unet_flop, _) = results.values()
    chunks = -(-frames // chunk)
    total = encoder_flop + chunks * encode_flop + chunks * decode_flop + settings.sampling.steps * unet_flop
    peak = weights + max(activations for _, activations in results.values())
    print(f"  one repair round: {total / 1e3:.1f} TFLOP ({settings.sampling.steps} guided UNet calls), "
          f"peak memory about {peak / 1024:.1f} GiB (weights + largest stage; add the CUDA context, ~0.5 GiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed tiny repairs (after one warm-up)")
    parser.add_argument("--skip-tiny", action="store_true", help="only the GenFusion-size estimate")
    args = parser.parse_args()
    if not args.skip_tiny:
        tiny_repair_time(args.repeats)
    genfusion_size_estimate()


if __name__ == "__main__":
    main()
