"""The converted released-model layout as a video prior on the CPU: a tiny official-layout checkpoint (the
``tests/fixtures/official`` tiny architecture with 2 "text" slots, so both cross-attention paths run) converted,
loaded through ``load_video_prior`` and repairing a 3-frame RGB-D video at 16x24 with the official sampling
(25 DDIM steps, guidance 3.2 so 25 UNet calls on a batch of 2, rescale 0.7, dynamic rescale).

Not a pytest module. Run:

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=... python tests/perf/bench_official_prior.py [--repeats N]

Prints the conversion and load times and, per repair, wall and process CPU time. Says nothing about the released
model's speed or memory on a GPU (see ``python -m gfbench.priors.official.memory``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from gfbench.priors.official import OfficialArchitecture, convert_checkpoint
from gfbench.priors.official.synthetic import write_official_layout_sources
from gfbench.priors.video import RGBDVideo, load_video_prior

FIXTURES = Path(__file__).parent.parent / "fixtures" / "official"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="repairs to time")
    args = parser.parse_args()
    data = json.loads((FIXTURES / "tiny_architecture.json").read_text())
    data["unet"]["text_context_len"] = 2
    architecture = OfficialArchitecture.from_dict(data, origin="tiny")
    with tempfile.TemporaryDirectory() as root:
        checkpoint, vae_dir = write_official_layout_sources(root, architecture)
        start = time.perf_counter()
        folder = convert_checkpoint(checkpoint, vae_dir, Path(root) / "genfusion", architecture=architecture,
                                    dtype="float32", prior_overrides={"height": 16, "width": 24})
        print(f"convert: {time.perf_counter() - start:.2f} s")
        start = time.perf_counter()
        prior = load_video_prior(folder)
        print(f"load_video_prior: {time.perf_counter() - start:.2f} s")
        generator = torch.Generator().manual_seed(0)
        video = RGBDVideo(rgb=torch.rand(3, 16, 24, 3, generator=generator),
                          depth=1.0 + torch.rand(3, 16, 24, generator=generator))
        print(f"repair: {prior.settings.sampling.steps} DDIM steps, guidance {prior.settings.sampling.guidance_scale}, "
              f"{prior.settings.num_frames} frames at {prior.settings.width}x{prior.settings.height}")
        for repeat in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            prior.repair(video, video.rgb[0], seed=repeat)
            print(f"  repair {repeat}: wall {time.perf_counter() - wall:.2f} s, cpu {time.process_time() - cpu:.2f} s")


if __name__ == "__main__":
    main()
