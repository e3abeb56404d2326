"""The culling ray caster gives the very bits of the straightforward one.

The published synthetic leaderboards were computed on scenes rendered by the plain caster below (every ray
against every shape, as ``gfbench.synthetic`` did before it culled rays): the fast caster must reproduce
its uint8 colours and float32 depths exactly, so these tests compare with ``np.array_equal``, not a tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

from gfbench import specs
from gfbench.camera import Camera, intrinsics, look_at
from gfbench.synthetic import (Rectangle, Sphere, build_surfaces, camera_path, cast, pixel_rays, render_frame,
                               sample_texture, scene_spec_of, shade)


def reference_intersect(shape, origins, dirs):
    """(t, u, v, normal) for every ray, by the plain formulas on the whole bundle."""
    if isinstance(shape, Rectangle):
        denom = dirs @ shape.normal
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((shape.origin - origins) @ shape.normal) / denom
        p = origins + t[:, None] * dirs - shape.origin
        a = p @ shape.edge_u / (shape.edge_u @ shape.edge_u)
        b = p @ shape.edge_v / (shape.edge_v @ shape.edge_v)
        inside = (np.abs(denom) > 1e-12) & (t > 1e-6) & (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1)
        normal = np.where((denom < 0)[:, None], shape.normal, -shape.normal)
        return np.where(inside, t, np.inf), a * shape.repeat[0], b * shape.repeat[1], normal
    oc = origins - shape.center
    b = np.einsum("ij,ij->i", oc, dirs)
    c = np.einsum("ij,ij->i", oc, oc) - shape.radius**2
    disc = b * b - c
    sqrt_disc = np.sqrt(np.maximum(disc, 0))
    t_near, t_far = -b - sqrt_disc, -b + sqrt_disc
    t = np.where(t_near > 1e-6, t_near, t_far)
    t = np.where((disc >= 0) & (t > 1e-6), t, np.inf)
    normal = (origins + np.where(np.isfinite(t), t, 0)[:, None] * dirs - shape.center) / shape.radius
    u = (np.arctan2(normal[:, 1], normal[:, 0]) / (2 * np.pi) + 0.5) * shape.repeat[0]
    v = (np.arccos(np.clip(normal[:, 2], -1, 1)) / np.pi) * shape.repeat[1]
    return t, u, v, normal


def reference_cast(surfaces, origins, dirs, lighting):
    best_t = np.full(len(dirs), np.inf)
    color = np.zeros((len(dirs), 3))
    for surface in surfaces:
        t, u, v, normal = reference_intersect(surface.shape, origins, dirs)
        closer = t < best_t
        if not closer.any():
            continue
        best_t[closer] = t[closer]
        color[closer] = shade(sample_texture(surface.texture, u[closer], v[closer]), normal[closer], lighting)
    return color, best_t


def reference_render(surfaces, camera, supersample, lighting):
    h, w = camera.height, camera.width
    grid = [(i + 0.5) / supersample for i in range(supersample)]
    origins, dirs, _ = pixel_rays(camera, [(ox, oy) for oy in grid for ox in grid])
    color, _ = reference_cast(surfaces, origins, dirs, lighting)
    color = color.reshape(supersample * supersample, h, w, 3).mean(0)
    origins, dirs, z = pixel_rays(camera, [(0.5, 0.5)])
    _, t = reference_cast(surfaces, origins, dirs, lighting)
    depth = np.where(np.isfinite(t), t * z, 0.0).reshape(h, w)
    return (color * 255.0 + 0.5).astype(np.uint8), depth.astype(np.float32)


def scene_cameras(dataset: str, scene_id: str, width: int, height: int, count: int):
    options = specs.load_dataset(dataset).options
    spec = scene_spec_of(scene_id, options)
    focal = 0.5 * width / np.tan(np.radians(options["fov_x_degrees"]) / 2)
    K = intrinsics(focal, focal, width / 2, height / 2)
    poses = camera_path(spec["path"], options["frames"])
    picks = np.linspace(0, len(poses) - 1, count).astype(int)
    return build_surfaces(spec["primitives"]), [Camera(K, poses[i], width, height) for i in picks], \
        spec.get("lighting", options["lighting"])


@pytest.mark.parametrize("dataset,scene_id", [("synthetic", "tabletop"), ("synthetic", "room"),
                                              ("synthetic", "courtyard"), ("synthetic-train", "train-003")])
def test_frames_are_bit_identical_to_the_plain_caster(dataset, scene_id):
    surfaces, cameras, lighting = scene_cameras(dataset, scene_id, 80, 48, 2)
    for camera in cameras:
        image, depth = render_frame(surfaces, camera, 2, lighting)
        ref_image, ref_depth = reference_render(surfaces, camera, 2, lighting)
        assert np.array_equal(image, ref_image)
        assert depth.tobytes() == ref_depth.tobytes()


def test_rays_along_edges_and_a_lone_hit_are_bit_identical():
    """Rays aimed at the corners and edges of a box (where culling must keep every ray the plain test
    keeps), a sphere beside it, and shapes so small that one ray alone meets them (the
    product of a single row, which numpy computes differently from a many-row product)."""
    eye = np.array([0.3, -2.0, 0.7])
    box = build_surfaces([{"type": "box", "center": [0, 0, 0.5], "size": [1, 1, 1], "texture": {"image": "coffee"}},
                          {"type": "sphere", "center": [0.9, 0.2, 0.4], "radius": 0.3, "texture": {"image": "chelsea"}}])
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (0.0, 1.0)])
    targets = np.concatenate([corners, (corners[:, None] + corners[None]).reshape(-1, 3) / 2])
    dirs = targets - eye
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    rng = np.random.default_rng(5)
    jitter = dirs[:, None] + rng.normal(scale=1e-9, size=(len(dirs), 4, 3))
    dirs = np.concatenate([dirs, (jitter / np.linalg.norm(jitter, axis=2, keepdims=True)).reshape(-1, 3)])
    lighting = {"direction": [0.4, -0.3, 1.0], "ambient": 0.35, "diffuse": 0.65}
    origins = np.broadcast_to(eye, dirs.shape)
    color, t = cast(box, origins, dirs, lighting)
    ref_color, ref_t = reference_cast(box, origins, dirs, lighting)
    assert np.array_equal(color, ref_color) and np.array_equal(t, ref_t)
    assert np.isfinite(t).any()

    camera = Camera(intrinsics(40, 40, 32, 24), look_at([0.1, -3, 0.2], [0.2, 0, 0.1]), 64, 48)
    origins, dirs, _ = pixel_rays(camera, [(0.5, 0.5)])
    lone = []
    for index in rng.choice(len(dirs), 24, replace=False):
        point = origins[0] + 3.0 * dirs[index]
        tiny = [{"type": "rectangle", "origin": (point - [1e-4, 0.6e-4, 1e-4]).tolist(),  # tilted: no zero
                 "edge_u": [2e-4, 0.5e-4, 0.3e-4], "edge_v": [-0.2e-4, 0.7e-4, 2e-4],  # terms in its dots
                 "texture": {"image": "astronaut"}}]
        surfaces = build_surfaces(tiny)
        color, t = cast(surfaces, origins, dirs, lighting)
        ref_color, ref_t = reference_cast(surfaces, origins, dirs, lighting)
        assert np.array_equal(color, ref_color) and np.array_equal(t, ref_t)
        lone.append(np.isfinite(t).sum())
    assert max(lone) == 1 and min(lone) == 1  # each tiny square is met by exactly its own ray
