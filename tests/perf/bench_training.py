"""Training speed of the Gaussian methods' ``quick`` preset on a small synthetic-like scene.

Not a pytest module (pytest collects ``test_*.py`` only). Run:

    OMP_NUM_THREADS=2 .venv/bin/python tests/perf/bench_training.py [--steps N] [--methods 3dgs 2dgs]

The scene follows the synthetic suite's masked protocol at its size: frames 256x144, each train view the
128x72 patch of its frame (a crop with shifted principal point) of a ray-cast textured ground plane, with
points lifted from train pixels as SfM would give them; every other frame is a full-size test frame.
Prints steps/s per method, the final Gaussian count, the time to render one full frame and PSNRs (the test
frame is whole while training saw patches, so much of it was never observed).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import numpy as np
import torch

from gfbench.camera import Camera, intrinsics, look_at
from gfbench.methods import load_method_class, load_preset
from gfbench.scene import PointCloud
from gfbench.views import View

FRAME_W, FRAME_H = 256, 144
PATCH_W, PATCH_H = FRAME_W // 2, FRAME_H // 2


def texture(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A color pattern with detail at a few scales, values in [0, 1]."""
    r = np.sin(2.5 * x + 0.3) * np.cos(7.0 * y)
    g = np.sin(2.0 * y + 1.0) + 0.5 * np.sin(11.0 * x)
    b = np.cos(1.8 * (x + y)) * np.sin(5.0 * x * y)
    return np.clip(0.5 + 0.3 * np.stack([r, g, b], axis=-1), 0, 1)


def frame_camera(k: int, count: int) -> Camera:
    a = math.radians(120.0 * k / max(count - 1, 1))
    eye = np.array([2.0 * math.cos(a), 2.0 * math.sin(a), 1.5])
    fx = FRAME_W / (2 * math.tan(math.radians(35)))  # 70 degrees horizontal field of view
    K = intrinsics(fx, fx, FRAME_W / 2, FRAME_H / 2)
    return Camera(K=K, c2w=look_at(eye, np.zeros(3)), width=FRAME_W, height=FRAME_H)


def plane_hits(camera: Camera, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    K, c2w = camera.K, camera.c2w
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1)
    d_world = d_cam @ c2w[:3, :3].T
    t = -c2w[2, 3] / d_world[..., 2]
    return c2w[:3, 3] + t[..., None] * d_world


def render_plane(camera: Camera) -> np.ndarray:
    v, u = np.mgrid[0 : camera.height, 0 : camera.width] + 0.5
    hits = plane_hits(camera, u, v)
    return np.round(texture(hits[..., 0], hits[..., 1]) * 255).astype(np.uint8)


def build_scene(num_frames: int, num_points: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k in range(num_frames):
        frame = frame_camera(k, num_frames)
        if k % 2 == 0:
            x = int(rng.integers(0, FRAME_W - PATCH_W + 1))
            y = int(rng.integers(0, FRAME_H - PATCH_H + 1))
            cam = frame.crop(x, y, PATCH_W, PATCH_H)
            train.append(View(f"f{k:03d}", k, render_plane(cam), cam, box=(x, y, PATCH_W, PATCH_H)))
        else:
            test.append(View(f"f{k:03d}", k, render_plane(frame), frame))
    per_view = num_points // len(train)
    xyz = np.concatenate(
        [plane_hits(v.camera, rng.uniform(0, PATCH_W, per_view), rng.uniform(0, PATCH_H, per_view)) for v in train]
    )
    points = PointCloud(xyz=xyz, rgb=np.round(texture(xyz[:, 0], xyz[:, 1]) * 255))
    return train, test, points


def psnr(rgb: np.ndarray, image: np.ndarray) -> float:
    return float(-10 * np.log10(np.mean((np.clip(rgb, 0, 1) - image / 255.0) ** 2)))


def bench(name: str, train, test, points, steps: int | None, device: str) -> dict:
    config = load_preset(name, "quick")
    if steps is not None:
        config["steps"] = steps
    method = load_method_class(name)(device=device)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        method.fit(train, points=points, config=config, seed=0, workdir=workdir)
        fit_s = time.perf_counter() - start
    start = time.perf_counter()
    renders = method.render([test[0].camera])
    render_s = time.perf_counter() - start
    train_renders = method.render([v.camera for v in train])
    return {
        "method": name,
        "steps": config["steps"],
        "fit_s": fit_s,
        "steps_per_s": config["steps"] / fit_s,
        "gaussians": method.num_gaussians,
        "render_full_frame_s": render_s,
        "train_psnr": float(np.mean([psnr(r.rgb, v.image) for r, v in zip(train_renders, train)])),
        "test_psnr": psnr(renders[0].rgb, test[0].image),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["3dgs", "2dgs"])
    parser.add_argument("--steps", type=int, default=None, help="override the quick preset's step count")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--points", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test, points = build_scene(args.frames, args.points)
    print(f"{len(train)} train patches {PATCH_W}x{PATCH_H}, {len(test)} test frames {FRAME_W}x{FRAME_H}, "
          f"{len(points)} points, {args.threads} threads, device {args.device}")
    for name in args.methods:
        r = bench(name, train, test, points, args.steps, args.device)
        print(f"{r['method']}: {r['steps']} steps in {r['fit_s']:.1f} s = {r['steps_per_s']:.2f} steps/s; "
              f"{r['gaussians']} Gaussians; full-frame render {r['render_full_frame_s']:.2f} s; "
              f"PSNR train patches {r['train_psnr']:.2f} dB, first test frame {r['test_psnr']:.2f} dB")


if __name__ == "__main__":
    main()
