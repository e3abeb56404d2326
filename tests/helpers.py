"""Small scenes for tests, built in memory."""

from __future__ import annotations

import numpy as np

from gfbench.camera import Camera, intrinsics, look_at
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
