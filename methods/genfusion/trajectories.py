"""The cameras a GenFusion repair round renders, as pure functions over :class:`gfbench.camera.Camera`
(OpenCV axes, ``c2w``).

Masked protocol (official ``OutpaintCrop.sample_novel_views``): the train poses, in train order, with their
full-frame intrinsics (the patch's principal-point shift undone).

Sparse protocol (official ``OutpaintSparse.generate_360_degree_poses`` and ``sample_utils.generate_ellipse_path``,
itself after Zip-NeRF's ellipse path), round ``i``:
- frame: the code works in the world its data loader normalises (``datasets/normalize.py``, ``Parser(normalize=
  True)``): a similarity that rotates the mean camera up vector onto -y, moves the median over cameras of the
  point of each optical axis nearest the origin to the origin and scales the median camera distance to 1,
  followed by the principal axes of the SfM points (median to the origin, largest variance on x, smallest on z,
  so z is the normal of the dominant plane). The code normalises with every frame of the capture; here only
  the train cameras and the points a method is given are used. Without points, the up vector goes to +z.
- focus: the point nearest to every train camera's optical axis (least squares, ``focus_point_fn``).
- positions: ``frames`` (85) points on an ellipse in the x-y plane of that frame, ``theta`` evenly spaced over
  a turn; semi-axes: the 90th percentile over train cameras of ``|center - (focus_x, focus_y, 0)|`` per axis;
  the code multiplies both bounds by 1.2, which scales the semi-axes AND the ellipse's centre (1.2 x the
  focus's x-y) by 1.2; height: ``z = v_i * (z10 + (z90 - z10) * (cos(theta + 2 pi phase) / 2 + 1/2))`` with
  ``z10``, ``z90`` the 10th and 90th percentiles of the train cameras' z, ``phase`` uniform in [0, 1) drawn
  per round, and ``v_i = max(0.5, 1.5 - 0.2 i)`` (the code scales the absolute height, not its range).
- orientation: looking at the focus, the camera's y axis toward the world axis nearest the train cameras' mean
  y axis; then pitched by ``2 i`` degrees about its own x axis (the code draws a random sign it never uses).
- intrinsics: the first train camera's, at its size.

Before rendering, each clip is cropped to the prior's frame (``diffusion_crop``; code: 960x512 at an offset
drawn per clip, uniform in ``[0, W - 960)`` and ``[0, H - 512)``, or 0 where that range is empty).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np

from gfbench.camera import Camera

PROTOCOLS = ("masked", "sparse")


# --- the normalised frame ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Similarity:
    """``x_frame = scale * rotation @ x_world + translation``."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def points(self, world: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(world, float) @ self.rotation.T + self.translation

    def c2w(self, world_c2w: np.ndarray) -> np.ndarray:
        """A world camera-to-world matrix expressed in this frame."""
        out = np.eye(4)
        out[:3, :3] = self.rotation @ world_c2w[:3, :3]
        out[:3, 3] = self.points(world_c2w[:3, 3])
        return out

    def world_c2w(self, frame_c2w: np.ndarray) -> np.ndarray:
        """A camera-to-world matrix of this frame expressed in the world."""
        out = np.eye(4)
        out[:3, :3] = self.rotation.T @ frame_c2w[:3, :3]
        out[:3, 3] = self.rotation.T @ (frame_c2w[:3, 3] - self.translation) / self.scale
        return out

    def then(self, other: "Similarity") -> "Similarity":
        """This transform followed by ``other``."""
        return Similarity(
            scale=other.scale * self.scale,
            rotation=other.rotation @ self.rotation,
            translation=other.scale * other.rotation @ self.translation + other.translation,
        )


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation taking unit vector ``a`` onto unit vector ``b`` (Rodrigues; 180 degrees about x if
    opposite, as the code does)."""
    c = float(a @ b)
    if c <= -1.0 + 1e-12:
        return np.diag([1.0, -1.0, -1.0])
    v = np.cross(a, b)
    skew = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + skew + skew @ skew / (1.0 + c)


def camera_similarity(c2ws: np.ndarray) -> Similarity:
    """The loader's first normalisation: mean camera up onto -y, recentred, median distance 1."""
    rotations, centers = c2ws[:, :3, :3], c2ws[:, :3, 3]
    up = -rotations[:, :, 1].mean(axis=0)
    align = rotation_between(up / np.linalg.norm(up), np.array([0.0, -1.0, 0.0]))
    forwards = (align @ rotations)[:, :, 2]
    aligned = centers @ align.T
    nearest = aligned - np.sum(forwards * aligned, axis=1, keepdims=True) * forwards
    translate = -np.median(nearest, axis=0)
    scale = 1.0 / np.median(np.linalg.norm(aligned + translate, axis=1))
    return Similarity(scale=scale, rotation=align, translation=scale * translate)


def principal_axes(points: np.ndarray) -> Similarity:
    """The loader's second normalisation: points' median to the origin, principal axes onto x, y, z by
    decreasing variance (first axis flipped if that would mirror)."""
    centroid = np.median(points, axis=0)
    values, vectors = np.linalg.eigh(np.cov(points - centroid, rowvar=False))
    vectors = vectors[:, np.argsort(values)[::-1]]
    if np.linalg.det(vectors) < 0:
        vectors[:, 0] *= -1
    rotation = vectors.T
    return Similarity(scale=1.0, rotation=rotation, translation=-rotation @ centroid)


def path_frame(cameras: list[Camera], points: np.ndarray | None = None) -> Similarity:
    """The normalised frame the ellipse is built in (see the module docstring)."""
    c2ws = np.stack([c.c2w for c in cameras])
    first = camera_similarity(c2ws)
    if points is not None and len(points) >= 3:
        return first.then(principal_axes(first.points(points)))
    to_z = rotation_between(np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, 1.0]))
    return first.then(Similarity(scale=1.0, rotation=to_z, translation=np.zeros(3)))


def focus_point(c2ws: np.ndarray) -> np.ndarray:
    """The point nearest (least squares) to every camera's optical axis."""
    directions, origins = c2ws[:, :3, 2], c2ws[:, :3, 3]
    projectors = np.eye(3)[None] - directions[:, :, None] * directions[:, None, :]  # onto each axis' normal plane
    lhs = projectors.mean(axis=0)  # each projector is symmetric and idempotent: P^T P = P
    rhs = (projectors @ origins[:, :, None]).mean(axis=0)[:, 0]
    if np.linalg.cond(lhs) > 1e10:
        raise ValueError("ellipse trajectory: the train cameras' optical axes are parallel, so they have no focus")
    return np.linalg.solve(lhs, rhs)


# --- the sparse protocol's ellipse ---------------------------------------------------------------------------
@dataclass(frozen=True)
class EllipseSettings:
    """The ellipse's numbers (preset keys ``ellipse_<field>``)."""

    frames: int = 85
    radius_percentile: float = 90.0
    radius_scale: float = 1.2
    height_low_percentile: float = 10.0
    height_high_percentile: float = 90.0
    height_variation_start: float = 1.5
    height_variation_step: float = 0.2
    height_variation_min: float = 0.5
    tilt_degrees_per_round: float = 2.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "EllipseSettings":
        keys = [f"ellipse_{f.name}" for f in fields(cls)]
        missing = [key for key in keys if key not in config]
        if missing:
            raise KeyError(f"ellipse trajectory: the config lacks {', '.join(missing)}")
        return cls(**{f.name: type(f.default)(config[f"ellipse_{f.name}"]) for f in fields(cls)})

    def height_variation(self, round_index: int) -> float:
        return max(self.height_variation_min, self.height_variation_start - self.height_variation_step * round_index)


def look_at_focus(position: np.ndarray, focus: np.ndarray, up: np.ndarray) -> np.ndarray:
    """c2w at ``position`` looking at ``focus``, its y axis toward ``up`` (the code's ``viewmatrix``)."""
    forward = focus - position
    forward /= np.linalg.norm(forward)
    right = np.cross(up, forward)
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, np.cross(forward, right), forward], axis=1)
    c2w[:3, 3] = position
    return c2w


def pitch(degrees: float) -> np.ndarray:
    """Rotation about the x axis by ``degrees`` (applied on the camera side: the camera pitches)."""
    a = np.radians(degrees)
    return np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])


def ellipse_positions(centers: np.ndarray, focus: np.ndarray, settings: EllipseSettings, round_index: int,
                      phase: float) -> np.ndarray:
    """The ellipse's camera positions in the normalised frame."""
    offset = np.array([focus[0], focus[1], 0.0])
    semi = np.percentile(np.abs(centers - offset), settings.radius_percentile, axis=0)
    low, high = (offset - semi) * settings.radius_scale, (offset + semi) * settings.radius_scale
    z_low, z_high = np.percentile(centers[:, 2], [settings.height_low_percentile, settings.height_high_percentile])
    theta = np.linspace(0.0, 2.0 * np.pi, settings.frames + 1)[:-1]
    x = low[0] + (high[0] - low[0]) * (np.cos(theta) * 0.5 + 0.5)
    y = low[1] + (high[1] - low[1]) * (np.sin(theta) * 0.5 + 0.5)
    wave = np.cos(theta + 2.0 * np.pi * phase) * 0.5 + 0.5
    z = settings.height_variation(round_index) * (z_low + (z_high - z_low) * wave)
    return np.stack([x, y, z], axis=-1)


def ellipse_trajectory(
    cameras: list[Camera],
    round_index: int,
    rng: np.random.Generator,
    settings: EllipseSettings = EllipseSettings(),
    points: np.ndarray | None = None,
) -> list[Camera]:
    """The sparse protocol's repair trajectory of round ``round_index`` (0 for the first round) around the
    train ``cameras`` (full frames) and the initial ``points`` (N x 3, world)."""
    if len(cameras) < 2:
        raise ValueError(f"ellipse trajectory: needs at least 2 train cameras, got {len(cameras)}")
    frame = path_frame(cameras, points)
    c2ws = np.stack([frame.c2w(c.c2w) for c in cameras])
    focus = focus_point(c2ws)
    positions = ellipse_positions(c2ws[:, :3, 3], focus, settings, round_index, phase=float(rng.random()))
    mean_y = c2ws[:, :3, 1].mean(axis=0)
    axis = int(np.argmax(np.abs(mean_y)))
    up = np.eye(3)[axis] * np.sign(mean_y[axis])
    tilt = pitch(settings.tilt_degrees_per_round * round_index)
    first = cameras[0]
    out = []
    for position in positions:
        c2w = look_at_focus(position, focus, up)
        c2w[:3, :3] = c2w[:3, :3] @ tilt
        out.append(Camera(K=first.K, c2w=frame.world_c2w(c2w), width=first.width, height=first.height))
    return out


# --- per protocol ----------------------------------------------------------------------------------------------
def repair_trajectory(
    protocol: str,
    full_frame_cameras: list[Camera],
    round_index: int,
    rng: np.random.Generator,
    settings: EllipseSettings = EllipseSettings(),
    points: np.ndarray | None = None,
) -> list[Camera]:
    """The cameras of a repair round: ``masked`` renders the train poses at full frame (in train order),
    ``sparse`` the ellipse of round ``round_index``."""
    if protocol == "masked":
        return list(full_frame_cameras)
    if protocol == "sparse":
        return ellipse_trajectory(full_frame_cameras, round_index, rng, settings, points)
    raise ValueError(f"repair trajectory: protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")


def diffusion_crop(cameras: list[Camera], width: int | None, height: int | None,
                   rng: np.random.Generator) -> list[Camera]:
    """One clip's cameras cut to the prior's ``width`` x ``height`` at one offset drawn for the clip, uniform
    in ``[0, W - width)`` x ``[0, H - height)`` (0 where empty; the code's ``randint(0, max(W - w, 1))``).
    ``None`` keeps the frame's size. A crop larger than the frame extends it right and down, as in the code."""
    out = []
    base = cameras[0]
    crop_w = base.width if width is None else int(width)
    crop_h = base.height if height is None else int(height)
    x = int(rng.integers(0, max(base.width - crop_w, 1)))
    y = int(rng.integers(0, max(base.height - crop_h, 1)))
    for camera in cameras:
        if (camera.width, camera.height) != (base.width, base.height):
            raise ValueError(f"diffusion crop: one clip mixes {base.width}x{base.height} and "
                             f"{camera.width}x{camera.height} cameras")
        K = camera.K.copy()
        K[0, 2] -= x
        K[1, 2] -= y
        out.append(Camera(K=K, c2w=camera.c2w, width=crop_w, height=crop_h))
    return out


__all__ = [
    "PROTOCOLS",
    "EllipseSettings",
    "Similarity",
    "diffusion_crop",
    "ellipse_trajectory",
    "focus_point",
    "look_at_focus",
    "path_frame",
    "repair_trajectory",
]
