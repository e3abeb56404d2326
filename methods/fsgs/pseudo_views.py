"""FSGS's pseudo views: unseen cameras near the train cameras, rendered for the depth loss only (they have no
image). Pure functions of the train cameras, a numpy ``Generator`` and the preset's numbers.

- ``interpolate`` (the paper, Sec. 3.3): a pseudo camera between a train camera and its nearest other train
  camera (by centre distance): centre and rotation interpolated with one fraction ``s`` (linear / slerp),
  plus Gaussian noise on the centre. The paper writes the pose as ``(t + eps, q)`` with ``q`` the average of the
  two rotations; ``interpolation_range`` picks ``s`` (``[0.5, 0.5]`` is the literal midpoint-average).
- ``random-around-mean`` (the official code, ``utils/pose_utils.py`` ``generate_random_poses_llff``, which
  ``scene/__init__.py`` uses for every dataset because its ``str.find`` test is always truthy): centres uniform
  in the box, aligned with the mean camera, that holds the train centres; every camera looks at a focus point
  ahead of the mean camera, at a depth blended from the scene's near and far bounds in disparity.

All cameras are OpenCV (x right, y down, z forward), as :class:`gfbench.camera.Camera`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from gfbench.camera import Camera

RULES = ("interpolate", "random-around-mean")


def camera_centers(cameras: Sequence[Camera]) -> np.ndarray:
    return np.stack([camera.center for camera in cameras])


def nearest_other(centers: np.ndarray) -> np.ndarray:
    """For each centre, the index of the closest other centre (lowest index on ties)."""
    distances = np.linalg.norm(centers[:, None, :] - centers[None, :, :], axis=-1)
    np.fill_diagonal(distances, np.inf)
    return distances.argmin(axis=1)


def interpolated_pseudo_cameras(
    cameras: Sequence[Camera],
    rng: np.random.Generator,
    count: int,
    *,
    interpolation_range: tuple[float, float] = (0.0, 1.0),
    noise: float = 0.1,
) -> list[Camera]:
    """``count`` pseudo cameras by the paper's rule.

    Each: a train camera ``a`` drawn uniformly, ``b`` its nearest other train camera, ``s`` uniform in
    ``interpolation_range``; centre ``(1 - s) c_a + s c_b + eps`` with ``eps ~ N(0, (noise |c_a - c_b|)^2 I)``
    (noise relative to the pair's baseline), rotation ``slerp(R_a, R_b, s)``; intrinsics and size of the
    nearer of the two (``a`` when ``s < 0.5``).
    """
    if len(cameras) < 2:
        raise ValueError(f"interpolated pseudo views need at least two train cameras, got {len(cameras)}")
    low, high = (float(v) for v in interpolation_range)
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"pseudo_interpolation must satisfy 0 <= low <= high <= 1, got [{low}, {high}]")
    if noise < 0:
        raise ValueError(f"pseudo_noise must be non-negative, got {noise}")
    centers = camera_centers(cameras)
    rotations = np.stack([camera.c2w[:3, :3] for camera in cameras])
    a = rng.integers(len(cameras), size=count)
    b = nearest_other(centers)[a]
    s = rng.uniform(low, high, size=count)
    baselines = np.linalg.norm(centers[b] - centers[a], axis=1)
    pseudo_centers = (1.0 - s)[:, None] * centers[a] + s[:, None] * centers[b]
    pseudo_centers += rng.normal(size=(count, 3)) * (noise * baselines)[:, None]
    pseudo_rotations = slerp(rotations[a], rotations[b], s)
    pseudo = []
    for i in range(count):
        c2w = np.eye(4)
        c2w[:3, :3], c2w[:3, 3] = pseudo_rotations[i], pseudo_centers[i]
        template = cameras[a[i]] if s[i] < 0.5 else cameras[b[i]]
        pseudo.append(Camera(K=template.K, c2w=c2w, width=template.width, height=template.height))
    return pseudo


def slerp(start: np.ndarray, end: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Rotation matrices a fraction of the way along the shortest arc from ``start`` to ``end`` ([M, 3, 3]
    each, fractions [M]): ``start exp(s log(start^T end))``, what scipy's ``Slerp`` does for one pair."""
    start_rotation = Rotation.from_matrix(start)
    relative = (start_rotation.inv() * Rotation.from_matrix(end)).as_rotvec()
    return (start_rotation * Rotation.from_rotvec(fractions[:, None] * relative)).as_matrix()


def depth_bounds(
    cameras: Sequence[Camera], points: np.ndarray, percentiles: tuple[float, float] = (0.1, 99.9)
) -> tuple[float, float]:
    """Near and far scene depth, as LLFF's ``poses_bounds``: per camera the ``percentiles`` of the depths of
    the points in front of it and inside its frame; near is the smallest low one, far the largest high one."""
    points = np.asarray(points, np.float64).reshape(-1, 3)
    nears, fars = [], []
    for camera in cameras:
        uv, z = camera.project(points)
        with np.errstate(invalid="ignore"):
            seen = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < camera.width) & (uv[:, 1] >= 0) & (uv[:, 1] < camera.height)
        if seen.any():
            low, high = np.percentile(z[seen], percentiles)
            nears.append(low)
            fars.append(high)
    if not nears:
        raise ValueError("depth_bounds: no point lies in front of and inside any train camera")
    return float(min(nears)), float(max(fars))


def focus_depth(near: float, far: float, *, near_factor: float, far_factor: float, disparity_weight: float) -> float:
    """The code's focus depth: ``1 / ((1 - w) / (near_factor near) + w / (far_factor far))``
    (``pose_utils.py``: 0.9, 5 and 0.75)."""
    if not 0 < near <= far:
        raise ValueError(f"depth bounds must satisfy 0 < near <= far, got near={near}, far={far}")
    close, infinity = near_factor * near, far_factor * far
    return 1.0 / ((1.0 - disparity_weight) / close + disparity_weight / infinity)


def mean_camera_frame(cameras: Sequence[Camera]) -> np.ndarray:
    """3x3 rotation (OpenCV columns) of the mean camera: forward = mean forward, right and down completed
    from the mean down vector (``poses_avg``)."""
    forward = np.mean([camera.c2w[:3, 2] for camera in cameras], axis=0)
    down = np.mean([camera.c2w[:3, 1] for camera in cameras], axis=0)
    forward /= np.linalg.norm(forward)
    right = np.cross(down, forward)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(forward, right), forward], axis=1)


def random_pseudo_cameras_around_mean(
    cameras: Sequence[Camera],
    rng: np.random.Generator,
    count: int,
    *,
    near: float,
    far: float,
    near_factor: float = 0.9,
    far_factor: float = 5.0,
    disparity_weight: float = 0.75,
) -> list[Camera]:
    """``count`` pseudo cameras by the official code's rule (``generate_random_poses_llff``).

    Centres ``mean + R (radii * u)``, ``u`` uniform in [-1, 1]^3, with ``R`` the mean camera's rotation and
    ``radii`` the largest absolute train-centre offset along each of its axes; each camera looks at the focus
    point :func:`focus_depth` ahead of the mean camera, with the mean up vector. Intrinsics and size are the
    first train camera's (``scene/__init__.py``).
    """
    if not cameras:
        raise ValueError("random pseudo views need at least one train camera")
    centers = camera_centers(cameras)
    mean = centers.mean(axis=0)
    frame = mean_camera_frame(cameras)
    radii = np.abs((centers - mean) @ frame).max(axis=0)
    depth = focus_depth(near, far, near_factor=near_factor, far_factor=far_factor, disparity_weight=disparity_weight)
    target = mean + depth * frame[:, 2]
    up = -np.mean([camera.c2w[:3, 1] for camera in cameras], axis=0)
    centers = mean + (radii * rng.uniform(-1.0, 1.0, size=(count, 3))) @ frame.T
    template = cameras[0]
    return [Camera(K=template.K, c2w=c2w, width=template.width, height=template.height)
            for c2w in look_at_many(centers, target, up)]


def look_at_many(eyes: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """:func:`gfbench.camera.look_at` for many eyes [M, 3] at once: OpenCV c2w [M, 4, 4]."""
    forward = target - eyes
    forward /= np.linalg.norm(forward, axis=1, keepdims=True)
    right = np.cross(-up, forward)
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    c2w = np.tile(np.eye(4), (len(eyes), 1, 1))
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, np.cross(forward, right), forward, eyes
    return c2w


def pseudo_cameras(
    cameras: Sequence[Camera], rng: np.random.Generator, config: dict[str, Any], points: np.ndarray | None = None
) -> list[Camera]:
    """The preset's pool of ``pseudo_pool_size`` pseudo cameras by its ``pseudo_view_rule``. The code's rule
    needs scene ``points`` (world xyz [N, 3]) for its depth bounds."""
    rule, count = config["pseudo_view_rule"], int(config["pseudo_pool_size"])
    if rule == "interpolate":
        return interpolated_pseudo_cameras(
            cameras, rng, count,
            interpolation_range=(float(config["pseudo_interpolation_min"]), float(config["pseudo_interpolation_max"])),
            noise=float(config["pseudo_noise"]),
        )
    if rule == "random-around-mean":
        if points is None or len(points) == 0:
            raise ValueError("pseudo_view_rule 'random-around-mean' needs scene points for its depth bounds")
        percentiles = (float(config["pseudo_depth_percentile_low"]), float(config["pseudo_depth_percentile_high"]))
        near, far = depth_bounds(cameras, points, percentiles)
        return random_pseudo_cameras_around_mean(
            cameras, rng, count, near=near, far=far,
            near_factor=float(config["pseudo_focus_near_factor"]),
            far_factor=float(config["pseudo_focus_far_factor"]),
            disparity_weight=float(config["pseudo_focus_disparity_weight"]),
        )
    raise ValueError(f"unknown pseudo_view_rule {rule!r}; use one of {', '.join(RULES)}")


__all__ = [
    "RULES",
    "depth_bounds",
    "focus_depth",
    "interpolated_pseudo_cameras",
    "look_at_many",
    "mean_camera_frame",
    "nearest_other",
    "pseudo_cameras",
    "random_pseudo_cameras_around_mean",
    "slerp",
]
