"""Pinhole cameras in the OpenCV convention (x right, y down, z forward)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Camera:
    """An undistorted pinhole camera.

    ``K`` is 3x3 in pixels at (``width``, ``height``); ``c2w`` is the 4x4 camera-to-world
    transform with OpenCV axes. Pixel centers sit at integer + 0.5 (pixel (0, 0) covers [0, 1)).
    """

    K: np.ndarray
    c2w: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "K", np.asarray(self.K, dtype=np.float64).reshape(3, 3))
        object.__setattr__(self, "c2w", np.asarray(self.c2w, dtype=np.float64).reshape(4, 4))
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")
        if not (np.isfinite(self.K).all() and np.isfinite(self.c2w).all()):
            raise ValueError("camera has non-finite intrinsics or pose")

    @property
    def w2c(self) -> np.ndarray:
        return np.linalg.inv(self.c2w)

    @property
    def center(self) -> np.ndarray:
        return self.c2w[:3, 3].copy()

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) -> pixel coordinates (N, 2) and camera-space depth z (N,)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        w2c = self.w2c
        cam = points @ w2c[:3, :3].T + w2c[:3, 3]
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (cam[:, :2] / z[:, None]) @ self.K[:2, :2].T + self.K[:2, 2]
        return uv, z

    def crop(self, x: int, y: int, width: int, height: int) -> "Camera":
        """The camera seeing only the pixel box [x, x+width) x [y, y+height) of this one."""
        if x < 0 or y < 0 or x + width > self.width or y + height > self.height:
            raise ValueError(
                f"crop box ({x}, {y}, {width}x{height}) does not lie inside a {self.width}x{self.height} frame"
            )
        K = self.K.copy()
        K[0, 2] -= x
        K[1, 2] -= y
        return Camera(K=K, c2w=self.c2w, width=width, height=height)

    def scaled(self, width: int, height: int) -> "Camera":
        """The same camera at another image size (intrinsics scaled per axis)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, :] *= sx
        K[1, :] *= sy
        return Camera(K=K, c2w=self.c2w, width=width, height=height)

    def to_json(self) -> dict:
        return {
            "K": self.K.tolist(),
            "c2w": self.c2w.tolist(),
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_json(cls, data: dict) -> "Camera":
        return cls(K=np.array(data["K"]), c2w=np.array(data["c2w"]), width=data["width"], height=data["height"])


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """OpenCV c2w looking from ``eye`` at ``target``; ``up`` is the world direction that appears up."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(-up, forward)  # OpenCV: right = down x forward
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w
