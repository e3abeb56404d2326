"""What every real-data builder shares: the error type, the capture model a reader produces (frames with
their lens and pose, points with tracks), and the assembly of a capture into a validated ``Scene``.

A reader only parses and checks its files; ``assemble_scene`` then checks every image (exists, decodes,
size consistent with its camera) and undistorts frames and observations. Nothing is written until the
whole scene is in memory, so a bad input never leaves a half-built shard behind.

A scene filed under a dataset id that has a spec (``datasets/<id>.yaml``) must be that dataset's scene: the
scene is listed in the spec, its frames have the spec's size, and its frames are those the suites' frozen
splits of that scene were made from (count and names). A generated dataset (``synthetic``) takes no
captures. Ids without a spec, such as the default ``custom``, take any capture.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from gfbench.builders.undistort import DistortionError, Lens, Undistorter, make_undistorter
from gfbench.camera import Camera
from gfbench.scene import Frame, PointCloud, Scene, natural_key
from gfbench.shards import SAFE_ID, frame_key, write_scene

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
_LOAD_THREADS = 4


class BuildError(RuntimeError):
    """A capture cannot be built honestly; the message names the file and the problem."""


@dataclass
class CaptureFrame:
    """One image of a capture as its reader found it: ``lens`` at the model's image size, ``c2w`` OpenCV."""

    name: str
    image_path: Path
    lens: Lens
    c2w: np.ndarray
    origin: str  # where the frame was declared, for messages ("sparse/0/images.bin, image 3")


@dataclass
class CapturePoints:
    """3D points and their tracks: point ``obs_point[i]`` seen in frame named ``obs_name[i]`` at ``obs_uv[i]``
    (pixels of the raw, possibly distorted image at the model's size; pixel centers at +0.5)."""

    xyz: np.ndarray
    rgb: np.ndarray
    obs_point: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    obs_name: list[str] = field(default_factory=list)
    obs_uv: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))


@dataclass
class Capture:
    """A parsed capture, ready to assemble: frames (any order), optional points, provenance for the meta."""

    frames: list[CaptureFrame]
    points: CapturePoints | None
    provenance: dict


# ---------------------------------------------------------------- small helpers


def safe_id(text: str) -> str:
    """A dataset or scene id from a folder name: unsafe characters become '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9_\-]", "_", text).lstrip("_-")
    return cleaned or "scene"


def relative_to_source(path: Path, provenance: dict) -> str:
    """``path`` relative to the capture's recorded source folder where it lies inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(provenance["source"]))
    except ValueError:
        return str(path)


def check_id(label: str, value: str) -> None:
    if not SAFE_ID.match(value):
        raise BuildError(f"{label} id {value!r} must be letters, digits, '_' or '-' (it names files and keys)")


def find_image(folder: Path, name: str) -> Path:
    """The image file for ``name`` in ``folder``: the exact path, else the one file with the same stem and
    another image suffix (downscaled folders are sometimes re-encoded, e.g. JPG -> PNG)."""
    exact = folder / name
    if exact.is_file():
        return exact
    parent = exact.parent
    if parent.is_dir():
        stem = exact.stem
        matches = sorted(p for p in parent.iterdir() if p.stem == stem and p.suffix.lower() in IMAGE_SUFFIXES)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise BuildError(f"{exact}: missing, and several images share its stem: {[m.name for m in matches]}")
    raise BuildError(f"{exact}: image file not found")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow reports some broken files as SyntaxError
        raise BuildError(f"{path}: not a readable image: {exc}") from exc


def load_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8 pixels as stored (no EXIF rotation: SfM tools read the raw pixel grid too)."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise BuildError(f"{path}: cannot decode the image: {exc}") from exc


def make_lens(where: str, **params) -> Lens:
    """A ``Lens`` whose problems are reported as ``BuildError`` naming ``where``."""
    try:
        return Lens(**params)
    except DistortionError as exc:
        raise BuildError(f"{where}: {exc}") from exc


def fit_lens(lens: Lens, width: int, height: int, where: str) -> Lens:
    """``lens`` at an image of ``width`` x ``height``: intrinsics scaled per axis. The image must be the
    model's image scaled by one factor, up to the rounding of each side (less than one pixel)."""
    if (width, height) == (lens.width, lens.height):
        return lens
    low = max((width - 1) / lens.width, (height - 1) / lens.height)
    high = min((width + 1) / lens.width, (height + 1) / lens.height)
    if low >= high:
        raise BuildError(
            f"{where}: image is {width}x{height} but its camera is {lens.width}x{lens.height}; the aspect "
            f"ratios differ (x{width / lens.width:.4f} horizontally, x{height / lens.height:.4f} vertically), "
            "so this is not a downscaled copy of the modelled image"
        )
    return lens.scaled(width, height)


def normalization(c2ws: list[np.ndarray]) -> dict:
    centers = np.stack([c2w[:3, 3] for c2w in c2ws])
    mean = centers.mean(0)
    return {"center": mean.tolist(), "radius": float(np.linalg.norm(centers - mean, axis=1).max())}


def check_pose(c2w: np.ndarray, where: str) -> np.ndarray:
    """A finite rigid camera-to-world 4x4 (rotation orthonormal with determinant +1)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if not np.isfinite(c2w).all():
        raise BuildError(f"{where}: pose is not finite (NaN or inf)")
    rotation = c2w[:3, :3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-3) or np.linalg.det(rotation) <= 0:
        raise BuildError(f"{where}: pose rotation is not a proper rotation (scaled, sheared or mirrored)")
    if not np.allclose(c2w[3], [0, 0, 0, 1]):
        raise BuildError(f"{where}: pose last row is {c2w[3].tolist()}, expected [0, 0, 0, 1]")
    return c2w


# ---------------------------------------------------------------- assembly


@dataclass
class _PlannedFrame:
    capture: CaptureFrame
    undistorter: Undistorter


def _plan_frames(frames: list[CaptureFrame], undistort: str = "keep-size") -> list[_PlannedFrame]:
    """Sorted frames with their lens fitted to the image size; every image is checked before any is decoded."""
    frames = sorted(frames, key=lambda f: natural_key(f.name))
    for a, b in zip(frames, frames[1:]):
        if a.name == b.name:
            raise BuildError(f"{b.origin}: duplicate image name {b.name!r} (also {a.origin})")
    keys: dict[str, str] = {}
    for frame in frames:
        key = frame_key(frame.name)
        if key in keys:
            raise BuildError(f"{frame.origin}: image names {keys[key]!r} and {frame.name!r} give the same "
                             f"sample key {key!r}")
        keys[key] = frame.name
    undistorters: dict[Lens, Undistorter] = {}
    planned = []
    for frame in frames:
        width, height = image_size(frame.image_path)
        lens = fit_lens(frame.lens, width, height, f"{frame.image_path} ({frame.origin})")
        if lens not in undistorters:
            try:
                undistorters[lens] = make_undistorter(lens, undistort)
            except DistortionError as exc:
                raise BuildError(f"{frame.origin}: {exc}") from exc
        planned.append(_PlannedFrame(frame, undistorters[lens]))
    return planned


def _observations(points: CapturePoints, planned: list[_PlannedFrame]) -> PointCloud:
    """Tracks on built frames become observations at the undistorted, image-size pixel; the rest are dropped."""
    index = {p.capture.name: k for k, p in enumerate(planned)}
    frame_of = np.array([index.get(name, -1) for name in points.obs_name], dtype=np.int64)
    keep = frame_of >= 0
    obs_point, obs_frame, raw_uv = points.obs_point[keep], frame_of[keep], points.obs_uv[keep]
    obs_uv = np.zeros_like(raw_uv, dtype=np.float64)
    for k in np.unique(obs_frame):
        rows = obs_frame == k
        model, fitted = planned[k].capture.lens, planned[k].undistorter.lens
        scale = np.array([fitted.width / model.width, fitted.height / model.height])
        try:
            obs_uv[rows] = planned[k].undistorter.points(raw_uv[rows] * scale)
        except DistortionError as exc:
            raise BuildError(f"{planned[k].capture.origin}: {exc}") from exc
    return PointCloud(points.xyz, points.rgb, obs_point=obs_point, obs_frame=obs_frame, obs_uv=obs_uv)


def _load_frame(plan: _PlannedFrame) -> Frame:
    capture, undistorter = plan.capture, plan.undistorter
    raw = load_rgb(capture.image_path)
    if raw.shape[:2] != (undistorter.lens.height, undistorter.lens.width):
        raise BuildError(f"{capture.image_path}: decoded to {raw.shape[1]}x{raw.shape[0]}, its header said "
                         f"{undistorter.lens.width}x{undistorter.lens.height}")
    image, valid = undistorter.image(raw)
    camera = Camera(undistorter.K, capture.c2w, undistorter.width, undistorter.height)
    return Frame(name=capture.name, image=image, camera=camera, mask=valid, source_jpeg=_jpeg_bytes(capture.image_path))


def _jpeg_bytes(path: Path) -> bytes | None:
    """The file's bytes when it is a JPEG (the shard keeps them if the frame's pixels are their decode)."""
    data = path.read_bytes()
    return data if data[:3] == b"\xff\xd8\xff" else None


def _load_frames(planned: list[_PlannedFrame], label: str, progress: bool) -> list[Frame]:
    """Decode and undistort on a few threads (decoding and the sparse remap release the GIL); the first
    failure cancels the frames not started yet."""
    pool = ThreadPoolExecutor(_LOAD_THREADS)
    try:
        loaded = pool.map(_load_frame, planned)
        return list(tqdm(loaded, total=len(planned), unit="frame", desc=label, disable=not progress, leave=False))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def assemble_scene(dataset: str, scene_id: str, capture: Capture, progress: bool = False,
                   expect_size: tuple[int, int] | None = None, undistort: str = "keep-size",
                   extra_meta: dict | None = None) -> Scene:
    """Check, undistort and load a capture into a ``Scene`` (frames in natural name order).

    Distorted frames are remapped to a pinhole camera by the named ``undistort`` option (see
    ``gfbench.builders.undistort``); pixels without a source get a mask (False). ``expect_size`` (width,
    height), when given, must be every raw frame's size. ``extra_meta`` joins the scene's meta.
    """
    check_id("dataset", dataset)
    check_id("scene", scene_id)
    if not capture.frames:
        raise BuildError(f"{capture.provenance.get('model_path', capture.provenance.get('source'))}: "
                         "the model has no images")
    planned = _plan_frames(capture.frames, undistort)
    if expect_size is not None:
        for plan in planned:
            size = (plan.undistorter.lens.width, plan.undistorter.lens.height)
            if size != tuple(expect_size):
                raise BuildError(f"{plan.capture.image_path}: image is {size[0]}x{size[1]}, the dataset spec "
                                 f"expects {expect_size[0]}x{expect_size[1]}")
    points = _observations(capture.points, planned) if capture.points is not None else None
    frames = _load_frames(planned, f"{dataset}/{scene_id}", progress)
    lenses = {p.undistorter.lens for p in planned}
    provenance = {
        **capture.provenance,
        "camera_models": sorted({lens.model for lens in lenses}),
        "undistorted": any(lens.distorted for lens in lenses),
    }
    if provenance["undistorted"]:
        provenance["undistort"] = undistort
    meta = {**(extra_meta or {}), "provenance": provenance,
            "normalization": normalization([f.camera.c2w for f in frames])}
    return Scene(dataset, scene_id, frames, points, meta)


# ---------------------------------------------------------------- datasets with a spec


@dataclass
class SpecExpectations:
    """What a scene filed under a specified dataset must match: ``size`` (width, height) when the spec
    gives one; ``frames``: per frozen split file of the scene, its frame count and frame names."""

    spec_path: Path
    size: tuple[int, int] | None
    frames: dict[Path, tuple[int, set[str]]] = field(default_factory=dict)


def _frozen_frames(dataset: str, scene_id: str) -> dict[Path, tuple[int, set[str]]]:
    """Frame count and names of every readable frozen split of ``scene_id`` in a suite over ``dataset``."""
    from gfbench import specs, splits

    found = {}
    for suite_id in specs.list_suites():
        try:
            suite = specs.load_suite(suite_id)
            if suite.dataset != dataset:
                continue
            frozen = splits.load_frozen_split(suite_id, scene_id, suite.splits_dir)
        except (FileNotFoundError, ValueError):  # no split, or a broken one (gfbench validate reports those)
            continue
        names = {item["name"] for entry in frozen.get("splits", []) for role in ("train", "test")
                 for item in entry.get(role, [])}
        found[splits.frozen_split_path(suite_id, scene_id, suite.splits_dir)] = (frozen.get("frames"), names)
    return found


def spec_expectations(dataset: str, scene_id: str) -> SpecExpectations | None:
    """The checks for a scene built into ``dataset``; None when the id has no spec (it takes any capture).
    Refuses at once a generated dataset and a scene the spec does not list."""
    from gfbench import specs

    if not specs.dataset_path(dataset).exists():
        return None
    try:
        spec = specs.load_dataset(dataset)
    except specs.SpecError as exc:
        raise BuildError(str(exc)) from exc
    if spec.layout == "synthetic":
        raise BuildError(f"{spec.path}: dataset {dataset!r} is generated by 'gfbench build-data {dataset}', not "
                         "built from a capture; file the capture under its own id (e.g. --dataset custom)")
    if scene_id not in spec.scenes:
        shown = ", ".join(spec.scenes[:8]) + (" ..." if len(spec.scenes) > 8 else "")
        raise BuildError(f"{spec.path}: dataset {dataset!r} has no scene {scene_id!r} (scenes: {shown}); pass "
                         "--scene with one of them, or file the capture under its own id (e.g. --dataset custom)")
    return SpecExpectations(spec.path, spec.resolution, _frozen_frames(dataset, scene_id))


def check_capture_frames(expect: SpecExpectations, dataset: str, scene_id: str, capture: Capture) -> None:
    """The capture has the frames its dataset's frozen splits were made from (count and names)."""
    names = {frame.name for frame in capture.frames}
    for split_path, (count, frozen_names) in expect.frames.items():
        if count is not None and count != len(names):
            raise BuildError(f"{dataset}/{scene_id}: the capture has {len(names)} frames, but {split_path} was "
                             f"frozen from {count}; this is not the {dataset} scene {scene_id!r} (file it under "
                             "its own id, e.g. --dataset custom)")
        missing = sorted(frozen_names - names, key=natural_key)
        if missing:
            raise BuildError(f"{dataset}/{scene_id}: the capture lacks frame {missing[0]!r} named in {split_path} "
                             f"({len(missing)} missing); this is not the {dataset} scene {scene_id!r}")


def build_and_write(dataset: str, scene_id: str, capture: Capture, out: Path, progress: bool = False,
                    expect_size: tuple[int, int] | None = None, undistort: str = "keep-size",
                    extra_meta: dict | None = None) -> Path:
    """Check the capture against its dataset's spec (when the dataset id has one), assemble it completely,
    then write its shard (crash-safely) under ``out``."""
    check_id("dataset", dataset)
    check_id("scene", scene_id)
    expect = spec_expectations(dataset, scene_id)
    if expect is not None:
        check_capture_frames(expect, dataset, scene_id, capture)
        expect_size = expect_size or expect.size
    scene = assemble_scene(dataset, scene_id, capture, progress=progress, expect_size=expect_size,
                           undistort=undistort, extra_meta=extra_meta)
    return write_scene(scene, out)
