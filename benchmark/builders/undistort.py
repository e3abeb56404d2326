"""Lenses with radial-tangential distortion, and their undistortion to a pinhole camera, by one of two named
options (``UNDISTORT_OPTIONS``):

- ``keep-size``: a pinhole camera of the same size and focal (numpy, and scipy.sparse for the remap); pixels
  that sample outside the raw image are zeroed and masked.
- ``opencv-alpha0``: exactly what GenFusion's official loader (gsplat's COLMAP parser) does: OpenCV's
  ``getOptimalNewCameraMatrix(K, dist, size, alpha=0)``, ``initUndistortRectifyMap`` + ``remap`` (bilinear),
  then a crop to the valid region OpenCV returns, keeping the new camera matrix as it is (the principal
  point is not shifted by the crop offset, as in the official code). Pixels whose bilinear sample reaches
  outside the raw image are masked.

Under either option masked pixels never reach a loss or a score.

Distortion acts on normalized coordinates ``(x, y) = ((u - cx) / fx, (v - cy) / fy)``::

    r2 = x^2 + y^2,  d = 1 + k1 r2 + k2 r2^2 + k3 r2^3 + k4 r2^4
    xd = x d + 2 p1 x y + p2 (r2 + 2 x^2),   yd = y d + p1 (r2 + 2 y^2) + 2 p2 x y

which is COLMAP's SIMPLE_RADIAL, RADIAL, OPENCV (k3 = k4 = 0) and FULL_OPENCV without its rational terms
(k4 = 0), and nerfstudio's OPENCV model.
Images are remapped with the forward model (bilinear, as a sparse matrix built once per lens); observed
pixels with its inverse (Newton's method). Pixel centers sit at integer + 0.5 throughout.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from scipy import sparse

from gfbench.camera import intrinsics

_NEWTON_STEPS = 20
_POINT_TOLERANCE_PX = 1e-4
_FOLD_CHECK_STRIDE = 2
_CACHED_MAPS = 4

UNDISTORT_OPTIONS = ("keep-size", "opencv-alpha0")


class DistortionError(ValueError):
    """A lens cannot be undistorted honestly (its model folds over inside the image, or does not invert)."""


@dataclass(frozen=True)
class Lens:
    """Intrinsics at ``width`` x ``height`` with distortion; ``model`` names where it came from."""

    model: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    radial: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    tangential: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy, *self.radial, *self.tangential)
        if not np.isfinite(values).all():
            raise DistortionError(f"{self.model} camera has non-finite parameters {values}")
        if self.fx <= 0 or self.fy <= 0 or self.width <= 0 or self.height <= 0:
            raise DistortionError(
                f"{self.model} camera has focal ({self.fx}, {self.fy}) and size {self.width}x{self.height}; "
                "both must be positive"
            )

    @property
    def distorted(self) -> bool:
        return any(self.radial) or any(self.tangential)

    @property
    def K(self) -> np.ndarray:
        return intrinsics(self.fx, self.fy, self.cx, self.cy)

    def scaled(self, width: int, height: int) -> "Lens":
        """The lens at another image size: focal and principal point scale per axis, distortion stays."""
        sx, sy = width / self.width, height / self.height
        return replace(self, width=width, height=height, fx=self.fx * sx, fy=self.fy * sy,
                       cx=self.cx * sx, cy=self.cy * sy)

    def to_pixels(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.stack([self.fx * x + self.cx, self.fy * y + self.cy], axis=-1)

    def to_normalized(self, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        uv = np.asarray(uv, dtype=np.float64)
        return (uv[..., 0] - self.cx) / self.fx, (uv[..., 1] - self.cy) / self.fy


def distort(lens: Lens, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalized pinhole coordinates -> normalized distorted coordinates."""
    k1, k2, k3, k4 = lens.radial
    p1, p2 = lens.tangential
    r2 = x * x + y * y
    d = 1.0 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
    xd = x * d + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * d + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return xd, yd


def _jacobian(lens: Lens, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """d(xd, yd) / d(x, y), a symmetric matrix, as its entries (a, b; b, e)."""
    k1, k2, k3, k4 = lens.radial
    p1, p2 = lens.tangential
    r2 = x * x + y * y
    d = 1.0 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
    dd_dr2 = k1 + r2 * (2.0 * k2 + r2 * (3.0 * k3 + r2 * 4.0 * k4))
    a = d + 2.0 * x * x * dd_dr2 + 2.0 * p1 * y + 6.0 * p2 * x
    b = 2.0 * x * y * dd_dr2 + 2.0 * p1 * x + 2.0 * p2 * y
    e = d + 2.0 * y * y * dd_dr2 + 6.0 * p1 * y + 2.0 * p2 * x
    return a, b, e


def undistort_normalized(lens: Lens, xd: np.ndarray, yd: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Invert ``distort`` by Newton's method from (xd, yd); also returns the residual in pixels."""
    x, y = np.array(xd, dtype=np.float64), np.array(yd, dtype=np.float64)
    with np.errstate(all="ignore"):  # diverging points end with a non-finite residual, reported by the caller
        for _ in range(_NEWTON_STEPS):
            rx, ry = (value - target for value, target in zip(distort(lens, x, y), (xd, yd)))
            if np.all(np.hypot(rx * lens.fx, ry * lens.fy) < 1e-3 * _POINT_TOLERANCE_PX):
                break
            a, b, e = _jacobian(lens, x, y)
            det = a * e - b * b
            x, y = x - (e * rx - b * ry) / det, y - (a * ry - b * rx) / det
        rx, ry = (value - target for value, target in zip(distort(lens, x, y), (xd, yd)))
        residual = np.hypot(rx * lens.fx, ry * lens.fy)
    return x, y, np.where(np.isfinite(residual), residual, np.inf)


def _source_pixels(lens: Lens, u: np.ndarray, v: np.ndarray):
    """For pinhole pixels (u, v): normalized coordinates, the raw-image pixel they sample, and whether that
    pixel lies inside the raw image."""
    x, y = lens.to_normalized(np.stack([u, v], axis=-1))
    source = lens.to_pixels(*distort(lens, x, y))
    valid = ((source[..., 0] >= 0) & (source[..., 0] <= lens.width)
             & (source[..., 1] >= 0) & (source[..., 1] <= lens.height))
    return x, y, source, valid


def check_no_fold(lens: Lens, stride: int = _FOLD_CHECK_STRIDE) -> None:
    """Refuse a lens whose distortion folds over (Jacobian determinant <= 0) where the pinhole image samples
    the raw image: there the remap would duplicate content. Checked on a grid of ``stride`` pixels."""
    u = np.unique(np.r_[np.arange(0, lens.width, stride), lens.width - 1]) + 0.5
    v = np.unique(np.r_[np.arange(0, lens.height, stride), lens.height - 1]) + 0.5
    x, y, _, valid = _source_pixels(lens, *np.meshgrid(u, v))
    a, b, e = _jacobian(lens, x, y)
    if np.any((a * e - b * b)[valid] <= 0):
        raise DistortionError(
            f"{lens.model} distortion {lens.radial + lens.tangential} folds over inside the image, so the "
            "image cannot be undistorted to a pinhole camera of the same size"
        )


def _build_map(lens: Lens) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Bilinear sampling as a sparse (pixels x pixels) matrix, and the mask of pinhole pixels inside the
    raw image (outside ones are clamped to the border by the matrix, then zeroed)."""
    u, v = np.meshgrid(np.arange(lens.width) + 0.5, np.arange(lens.height) + 0.5)
    _, _, source, valid = _source_pixels(lens, u, v)
    col = np.clip(source[..., 0] - 0.5, 0, lens.width - 1).ravel()
    row = np.clip(source[..., 1] - 0.5, 0, lens.height - 1).ravel()
    c0, r0 = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
    c1, r1 = np.minimum(c0 + 1, lens.width - 1), np.minimum(r0 + 1, lens.height - 1)
    fc, fr = col - c0, row - r0
    columns = np.concatenate([r0 * lens.width + c0, r0 * lens.width + c1, r1 * lens.width + c0, r1 * lens.width + c1])
    weights = np.concatenate([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc]).astype(np.float32)
    pixels = lens.width * lens.height
    matrix = sparse.csr_matrix((weights, (np.tile(np.arange(pixels), 4), columns)), shape=(pixels, pixels))
    return matrix, valid


_MAP_LOCK = threading.Lock()


@lru_cache(maxsize=_CACHED_MAPS)
def _cached_map(lens: Lens) -> tuple[sparse.csr_matrix, np.ndarray]:
    return _build_map(lens)


def sampling_map(lens: Lens) -> tuple[sparse.csr_matrix, np.ndarray]:
    """The lens's sampling map, built once and kept for the next frames of the same lens (a few lenses are
    kept, so captures with one camera per image stay within memory)."""
    with _MAP_LOCK:  # threads loading frames of one lens wait for a single build
        return _cached_map(lens)


class Undistorter:
    """``keep-size``: remaps images and observed pixels of one lens to the pinhole camera ``K`` (same size and
    focal). Creating one checks that the lens can be undistorted (``check_no_fold``)."""

    option = "keep-size"

    def __init__(self, lens: Lens):
        self.lens = lens
        self.K = lens.K
        self.width, self.height = lens.width, lens.height
        if lens.distorted:
            check_no_fold(lens)

    def image(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The undistorted HxWx3 uint8 image and its validity mask (None when every pixel is valid)."""
        if not self.lens.distorted:
            return raw, None
        matrix, valid = sampling_map(self.lens)
        out = matrix @ raw.reshape(-1, raw.shape[-1]).astype(np.float32)
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(raw.shape)
        out[~valid] = 0
        return out, (None if valid.all() else valid.copy())

    def points(self, uv: np.ndarray) -> np.ndarray:
        """Observed (distorted) pixels -> pixels of the pinhole camera ``K``."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        if not self.lens.distorted or len(uv) == 0:
            return uv.copy()
        x, y, residual = undistort_normalized(self.lens, *self.lens.to_normalized(uv))
        bad = residual > _POINT_TOLERANCE_PX
        if bad.any():
            raise DistortionError(
                f"{self.lens.model} distortion does not invert at pixel {uv[bad][0].tolist()} "
                f"({int(bad.sum())} observed points); it cannot be undistorted honestly"
            )
        return self.lens.to_pixels(x, y)


# ---------------------------------------------------------------- opencv-alpha0 (the official code)


def opencv_coefficients(lens: Lens) -> np.ndarray:
    """OpenCV's ``(k1, k2, p1, p2[, k3])`` for ``lens``, as float32 like the official loader keeps them."""
    k1, k2, k3, k4 = lens.radial
    p1, p2 = lens.tangential
    if k4:
        raise DistortionError(f"{lens.model} distortion has an r^8 term (k4 = {k4}), which OpenCV's model lacks; "
                              "build with --undistort keep-size")
    return np.array([k1, k2, p1, p2, *([k3] if k3 else [])], dtype=np.float32)


@dataclass(frozen=True)
class OpenCVMap:
    """The official undistortion of one lens: new camera matrix, valid region (x, y, w, h), remap tables and
    which output pixels (of the cropped region) have a source wholly inside the raw image."""

    K: np.ndarray
    roi: tuple[int, int, int, int]
    map_x: np.ndarray
    map_y: np.ndarray
    sourced: np.ndarray


@lru_cache(maxsize=_CACHED_MAPS)
def _opencv_alpha0_map(lens: Lens) -> OpenCVMap:
    import cv2

    size = (lens.width, lens.height)
    coefficients = opencv_coefficients(lens)
    new_K, roi = cv2.getOptimalNewCameraMatrix(lens.K, coefficients, size, 0)
    x, y, w, h = (int(v) for v in roi)
    if w <= 0 or h <= 0:
        raise DistortionError(f"{lens.model} distortion {lens.radial + lens.tangential} leaves OpenCV no valid "
                              "region at alpha = 0; build with --undistort keep-size")
    map_x, map_y = cv2.initUndistortRectifyMap(lens.K, coefficients, None, new_K, size, cv2.CV_32FC1)
    # bilinear sampling reads (floor, floor + 1): wholly inside the raw image when 0 <= map <= size - 1
    sourced = (map_x >= 0) & (map_x <= lens.width - 1) & (map_y >= 0) & (map_y <= lens.height - 1)
    return OpenCVMap(new_K, (x, y, w, h), map_x, map_y, sourced[y:y + h, x:x + w].copy())


def opencv_alpha0_map(lens: Lens) -> OpenCVMap:
    with _MAP_LOCK:
        return _opencv_alpha0_map(lens)


class OpenCVAlpha0Undistorter:
    """``opencv-alpha0``: the official code's undistortion of one lens (see the module docstring). The output
    frame is the valid region, smaller than the raw image; a lens without distortion passes unchanged."""

    option = "opencv-alpha0"

    def __init__(self, lens: Lens):
        self.lens = lens
        self.map = opencv_alpha0_map(lens) if lens.distorted else None
        self.K = lens.K if self.map is None else self.map.K
        self.width, self.height = (lens.width, lens.height) if self.map is None else self.map.roi[2:]

    def image(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The undistorted, cropped HxWx3 uint8 image and its mask of sourced pixels (None when all are)."""
        if self.map is None:
            return raw, None
        import cv2

        x, y, w, h = self.map.roi
        out = cv2.remap(raw, self.map.map_x, self.map.map_y, cv2.INTER_LINEAR)[y:y + h, x:x + w]
        return np.ascontiguousarray(out), (None if self.map.sourced.all() else self.map.sourced.copy())

    def points(self, uv: np.ndarray) -> np.ndarray:
        """Observed (distorted) pixels -> pixels of ``K`` (not shifted by the crop, like the frame's camera)."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        if self.map is None or len(uv) == 0:
            return uv.copy()
        x, y, residual = undistort_normalized(self.lens, *self.lens.to_normalized(uv))
        bad = residual > _POINT_TOLERANCE_PX
        if bad.any():
            raise DistortionError(
                f"{self.lens.model} distortion does not invert at pixel {uv[bad][0].tolist()} "
                f"({int(bad.sum())} observed points); it cannot be undistorted honestly"
            )
        K = self.K
        return np.stack([K[0, 0] * x + K[0, 1] * y + K[0, 2], K[1, 1] * y + K[1, 2]], axis=-1)


def make_undistorter(lens: Lens, option: str) -> Undistorter | OpenCVAlpha0Undistorter:
    """The undistorter of ``lens`` under a named option (``UNDISTORT_OPTIONS``)."""
    if option == "keep-size":
        return Undistorter(lens)
    if option == "opencv-alpha0":
        return OpenCVAlpha0Undistorter(lens)
    raise ValueError(f"unknown undistortion {option!r}; options: {', '.join(UNDISTORT_OPTIONS)}")
