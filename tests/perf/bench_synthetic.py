"""Rendering time of the built-in synthetic scenes: the culling caster against the plain one it replaced.

Not a pytest module. Run (from the repository root):

    OMP_NUM_THREADS=1 .venv/bin/python tests/perf/bench_synthetic.py [--baseline fe792f6] \
        [--dataset synthetic --dataset synthetic-train] [--frames 6]

The baseline is ``benchmark/synthetic.py`` as committed at ``--baseline`` (read with ``git show``, loaded
as its own module): the caster that intersected every ray with every shape. For each scene of each
dataset, both render the same ``--frames`` frames (spread along the camera path, at the dataset's
resolution and supersampling) one after the other in this process; the script prints each side's
seconds per frame and their ratio, and stops with an error if any image or depth differs by a single bit.
The whole-build comparison (shards byte for byte) is the one in the report of the change that added this
file: `gfbench build-data synthetic [--dataset synthetic-train]` with the old and the new code.

Results (2026-11-30, 2-core AMD EPYC dev machine shared with other jobs, OMP_NUM_THREADS=1, --frames 2;
every frame bit-identical):

    dataset          scene         plain s/frame  culling s/frame  ratio
    synthetic        tabletop              0.724            0.276    2.6
    synthetic        room                  0.580            0.240    2.4
    synthetic        courtyard             0.679            0.290    2.3
    synthetic-train  train-000             0.092            0.057    1.6
    ... (train-001 to train-023: 1.5x-2.8x each)
    all                                    3.848            1.929    2.0  (sums of s/frame)

Whole builds, old code then new one after the other on the same machine (`gfbench build-data synthetic`,
OMP_NUM_THREADS=1): synthetic 100.7 s -> 46.3 s (2.2x), synthetic-train 55.8 s -> 37.3 s (1.5x); every
shard and manifest byte-identical (sha256). What remains per frame is mostly the per-hit arithmetic itself
(texture lookups and the exact intersection of the candidate rays), and in the build the shard writing.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gfbench import specs
from gfbench import synthetic as fast
from gfbench.camera import Camera, intrinsics


def load_baseline(revision: str):
    source = subprocess.run(["git", "show", f"{revision}:benchmark/synthetic.py"], check=True,
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2]).stdout
    path = Path(tempfile.mkdtemp()) / "synthetic_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("synthetic_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["synthetic_baseline"] = module
    spec.loader.exec_module(module)
    return module


def time_scene(module, dataset, scene_id: str, frames: int) -> tuple[float, list]:
    options = dataset.options
    width, height = dataset.resolution
    scene = module.scene_spec_of(scene_id, options)
    surfaces = module.build_surfaces(scene["primitives"])
    focal = 0.5 * width / np.tan(np.radians(options["fov_x_degrees"]) / 2)
    K = intrinsics(focal, focal, width / 2, height / 2)
    poses = module.camera_path(scene["path"], options["frames"])
    picks = np.linspace(0, len(poses) - 1, frames).astype(int)
    lighting = scene.get("lighting", options["lighting"])
    start = time.perf_counter()
    rendered = [module.render_frame(surfaces, Camera(K, poses[i], width, height), options["supersample"], lighting)
                for i in picks]
    return (time.perf_counter() - start) / frames, rendered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="fe792f6", help="git revision holding the plain caster")
    parser.add_argument("--dataset", action="append", help="synthetic-layout dataset(s) (default: both built-in)")
    parser.add_argument("--frames", type=int, default=6, help="frames rendered per scene and side")
    args = parser.parse_args()
    baseline = load_baseline(args.baseline)
    totals = [0.0, 0.0]
    print(f"{'dataset':16s} {'scene':12s} {'plain s/frame':>14s} {'culling s/frame':>16s} {'ratio':>6s}")
    for name in args.dataset or ["synthetic", "synthetic-train"]:
        dataset = specs.load_dataset(name)
        for scene_id in dataset.scenes:
            slow, expected = time_scene(baseline, dataset, scene_id, args.frames)
            quick, got = time_scene(fast, dataset, scene_id, args.frames)
            for (image, depth), (want_image, want_depth) in zip(got, expected):
                if not (np.array_equal(image, want_image) and depth.tobytes() == want_depth.tobytes()):
                    raise SystemExit(f"{name}/{scene_id}: the culling caster's frame differs from the plain one")
            totals[0] += slow
            totals[1] += quick
            print(f"{name:16s} {scene_id:12s} {slow:14.3f} {quick:16.3f} {slow / quick:6.1f}")
    print(f"{'all':29s} {totals[0]:14.3f} {totals[1]:16.3f} {totals[0] / totals[1]:6.1f}  (sums of s/frame)")


if __name__ == "__main__":
    main()
