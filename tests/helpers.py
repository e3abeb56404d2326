"""Small scenes for tests, built in memory."""

from __future__ import annotations

import numpy as np

from gfbench.camera import Camera, intrinsics, look_at
from gfbench.priors import PriorSource
from gfbench.priors.depth import DepthPrior
from gfbench.scene import Frame, PointCloud, Scene


def tiny_scene(frames: int = 4, width: int = 12, height: int = 8, seed: int = 0, depth: bool = True,
               mask: bool = False, dataset: str = "testset", scene_id: str = "tiny") -> Scene:
    rng = np.random.default_rng(seed)
    K = intrinsics(10.0, 11.0, width / 2, height / 2)
    out = []
    for i in range(frames):
        c2w = look_at(np.array([np.cos(i), np.sin(i), 0.5]) * 3, np.zeros(3))
        out.append(Frame(
            name=f"img_{i:03d}.jpg",
            image=rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
            camera=Camera(K, c2w, width, height),
            depth=rng.random((height, width)).astype(np.float32) if depth else None,
            mask=rng.random((height, width)) > 0.5 if mask else None,
        ))
    points = PointCloud(rng.normal(size=(20, 3)), rng.integers(0, 256, (20, 3)),
                        obs_point=[0, 3, 3], obs_frame=[0, 1, 2], obs_uv=[[1.5, 2.5], [3, 4], [5, 6]])
    return Scene(dataset, scene_id, out, points, meta={"provenance": {"made_by": "tests"}})


def orbit_camera(i: int, step: float, width: int = 16, height: int = 12) -> Camera:
    """The i-th camera of an orbit (``step`` radians apart) at radius 3, height 1.8, looking at the origin."""
    eye = np.array([np.cos(step * i), np.sin(step * i), 0.6]) * 3
    return Camera(intrinsics(14.0, 14.0, width / 2, height / 2), look_at(eye, np.zeros(3)), width, height)


def orbit_views(step: float, count: int = 3) -> list:
    """``count`` random 16x12 images on :func:`orbit_camera` poses, for training-loop tests."""
    from gfbench.views import View

    rng = np.random.default_rng(0)
    return [View(f"v{i}", i, rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), orbit_camera(i, step))
            for i in range(count)]


def random_points(count: int = 150) -> PointCloud:
    rng = np.random.default_rng(1)
    return PointCloud(rng.normal(size=(count, 3)) * 0.5, rng.integers(0, 256, (count, 3)))


class BrightnessDepth(DepthPrior):
    """A depth prior stand-in: each pixel's brightness as inverse depth; records how it was asked
    (``calls``: dtype and cache per image) and PyTorch's thread count at each call (``threads``)."""

    def __init__(self, novel_images: bool = True, name: str = "brightness"):
        self.source, self.novel_images = PriorSource(kind="depth", name=name), novel_images
        self.calls, self.threads = [], []

    def predict(self, images, *, cache: bool = True):
        import torch

        self.threads.append(torch.get_num_threads())
        self.calls.extend((np.asarray(image).dtype, cache) for image in images)
        return [np.asarray(image, np.float32).mean(axis=2) + 1.0 for image in images]
