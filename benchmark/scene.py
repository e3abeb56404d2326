"""The in-memory scene model: frames in natural order of their image names, OpenCV cameras, optional depth
and masks, and 3D points with per-frame observations."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from gfbench.camera import Camera


_DIGITS = re.compile(r"([0-9]+)")


def natural_key(name: str) -> tuple:
    """Sort key under which numbers inside a name compare as numbers (``2.jpg`` before ``10.jpg``).

    Text and digit runs alternate (the split always starts with text), so keys compare element by element
    without mixing types; ties such as ``1.png`` / ``01.png`` fall back to the plain name. Names whose numbers
    are zero-padded to one width sort exactly as plain string order."""
    parts = _DIGITS.split(name)
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts)), name


def natural_sorted(names):
    """``names`` in natural order (see :func:`natural_key`)."""
    return sorted(names, key=natural_key)


@dataclass
class Frame:
    """One captured frame. ``image`` is HxWx3 uint8; ``depth`` is HxW float32 camera-space z
    (0 where unknown); ``mask`` is HxW bool (True = valid pixel). ``source_jpeg`` optionally holds the JPEG
    file whose decode ``image`` is, so a shard can store it as captured instead of a ~5x larger PNG."""

    name: str
    image: np.ndarray
    camera: Camera
    depth: np.ndarray | None = None
    mask: np.ndarray | None = None
    source_jpeg: bytes | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        h, w = self.image.shape[:2]
        if self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(f"frame {self.name!r}: image must be HxWx3 uint8, got {self.image.dtype} {self.image.shape}")
        if (w, h) != (self.camera.width, self.camera.height):
            raise ValueError(
                f"frame {self.name!r}: image is {w}x{h} but its camera says {self.camera.width}x{self.camera.height}"
            )
        for label, extra in (("depth", self.depth), ("mask", self.mask)):
            if extra is not None and extra.shape != (h, w):
                raise ValueError(f"frame {self.name!r}: {label} is {extra.shape}, expected {(h, w)}")


@dataclass
class PointCloud:
    """3D points with colors and, where known, observations: point ``obs_point[i]`` is seen in frame
    ``obs_frame[i]`` (index into the scene's sorted frames) at pixel ``obs_uv[i]``."""

    xyz: np.ndarray
    rgb: np.ndarray
    obs_point: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    obs_frame: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    obs_uv: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))

    def __post_init__(self) -> None:
        self.xyz = np.asarray(self.xyz, np.float32).reshape(-1, 3)
        self.rgb = np.asarray(self.rgb, np.uint8).reshape(-1, 3)
        self.obs_point = np.asarray(self.obs_point, np.int32).reshape(-1)
        self.obs_frame = np.asarray(self.obs_frame, np.int32).reshape(-1)
        self.obs_uv = np.asarray(self.obs_uv, np.float32).reshape(-1, 2)
        if len(self.xyz) != len(self.rgb):
            raise ValueError(f"point cloud has {len(self.xyz)} positions but {len(self.rgb)} colors")
        if not (len(self.obs_point) == len(self.obs_frame) == len(self.obs_uv)):
            raise ValueError("point observations: obs_point, obs_frame and obs_uv differ in length")
        if len(self.obs_point) and (self.obs_point.min() < 0 or self.obs_point.max() >= len(self.xyz)):
            raise ValueError("point observations name a point index outside the cloud")

    def __len__(self) -> int:
        return len(self.xyz)

    @property
    def has_observations(self) -> bool:
        return len(self.obs_point) > 0

    def subset(self, keep: np.ndarray) -> "PointCloud":
        """The points where ``keep`` (bool, one per point) holds, with their observations renumbered."""
        keep = np.asarray(keep, bool)
        new_index = np.cumsum(keep) - 1
        obs_keep = keep[self.obs_point] if self.has_observations else np.zeros(0, bool)
        return PointCloud(
            xyz=self.xyz[keep],
            rgb=self.rgb[keep],
            obs_point=new_index[self.obs_point[obs_keep]],
            obs_frame=self.obs_frame[obs_keep],
            obs_uv=self.obs_uv[obs_keep],
        )


@dataclass
class Scene:
    """A scene: frames in natural order of their image names (frame index k is the position in that order)."""

    dataset: str
    scene_id: str
    frames: list[Frame]
    points: PointCloud | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [f.name for f in self.frames]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"scene {self.key}: duplicate frame names {dup[:5]}")
        self.frames = sorted(self.frames, key=lambda f: natural_key(f.name))

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.scene_id}"

    @property
    def frame_names(self) -> list[str]:
        return [f.name for f in self.frames]

    def __len__(self) -> int:
        return len(self.frames)
