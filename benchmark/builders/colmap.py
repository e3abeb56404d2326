"""COLMAP sparse models (binary or text) -> captures -> shards.

The reader is our own: ``cameras``, ``images`` and ``points3D`` in ``.bin`` or ``.txt`` (each file on its
own; COLMAP 3.12+'s ``rigs`` and ``frames`` files are not needed, since ``images`` keeps each image's pose).
Every parse problem is a ``BuildError`` naming the file and where in it. Camera models SIMPLE_PINHOLE,
PINHOLE, SIMPLE_RADIAL, RADIAL and OPENCV are taken (FULL_OPENCV when its rational terms are zero); the
others are refused. COLMAP gives world-to-camera ``q = (w, x, y, z), t``: ``c2w = [R^T | -R^T t]``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gfbench.builders.common import (
    BuildError, Capture, CaptureFrame, CapturePoints, build_and_write, check_pose, find_image, make_lens,
    relative_to_source, safe_id,
)
from gfbench.builders.undistort import Lens
from gfbench.paths import data_root

# model id -> (name, number of parameters), as COLMAP numbers them
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12), 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
    12: ("SIMPLE_DIVISION", 4), 13: ("DIVISION", 5), 14: ("SIMPLE_FISHEYE", 3), 15: ("FISHEYE", 4),
    16: ("EUCM", 6), 17: ("EQUIRECTANGULAR", 2),
}
PARAM_COUNT = {name: count for name, count in CAMERA_MODELS.values()}
SUPPORTED_MODELS = "SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, and FULL_OPENCV without k4..k6"
MODEL_FILES = ("cameras", "images", "points3D")


@dataclass
class ColmapCamera:
    camera_id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]


@dataclass
class ColmapImage:
    image_id: int
    qvec: np.ndarray  # (w, x, y, z), world-to-camera
    tvec: np.ndarray
    camera_id: int
    name: str
    xys: np.ndarray  # (N, 2) keypoints in pixels of the model's image size


@dataclass
class ColmapPoints:
    xyz: np.ndarray  # (P, 3)
    rgb: np.ndarray  # (P, 3) uint8
    track_point: np.ndarray  # (M,) index into xyz
    track_image: np.ndarray  # (M,) image id
    track_keypoint: np.ndarray  # (M,) index into that image's xys


@dataclass
class ColmapModel:
    directory: Path
    files: dict[str, Path]  # "cameras" / "images" / "points3D" -> the file read
    cameras: dict[int, ColmapCamera]
    images: list[ColmapImage]
    points: ColmapPoints

    @property
    def format(self) -> str:
        kinds = {path.suffix for path in self.files.values()}
        return {".bin": "binary", ".txt": "text"}[kinds.pop()] if len(kinds) == 1 else "mixed"


# ---------------------------------------------------------------- binary


class _Bytes:
    """Sequential little-endian reads that report truncation with the file name and offset."""

    def __init__(self, path: Path):
        self.path, self.data, self.offset = path, path.read_bytes(), 0

    def take(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.offset + size > len(self.data):
            raise BuildError(f"{self.path}: truncated at byte {len(self.data)} while reading {what}")
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += size
        return values

    def array(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if count < 0 or self.offset + size > len(self.data):
            raise BuildError(f"{self.path}: truncated at byte {len(self.data)} while reading {what}")
        values = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.offset)
        self.offset += size
        return values

    def name(self, what: str) -> str:
        end = self.data.find(b"\0", self.offset)
        if end < 0:
            raise BuildError(f"{self.path}: truncated at byte {len(self.data)} while reading {what}")
        raw, self.offset = self.data[self.offset:end], end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BuildError(f"{self.path}: {what} is not UTF-8: {raw!r}") from exc

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise BuildError(f"{self.path}: {len(self.data) - self.offset} unexpected bytes after the last record")


def _count(reader: _Bytes, what: str) -> int:
    (count,) = reader.take("Q", f"the number of {what}")
    if count > len(reader.data):  # every record takes at least a byte: a larger count is garbage
        raise BuildError(f"{reader.path}: claims {count} {what} in {len(reader.data)} bytes (corrupt)")
    return count


def read_cameras_binary(path: Path) -> list[ColmapCamera]:
    reader = _Bytes(path)
    cameras = []
    for index in range(_count(reader, "cameras")):
        camera_id, model_id, width, height = reader.take("iiQQ", f"camera {index}")
        if model_id not in CAMERA_MODELS:
            raise BuildError(f"{path}: camera {camera_id} has unknown model id {model_id}")
        model, count = CAMERA_MODELS[model_id]
        params = reader.array("<f8", count, f"the parameters of camera {camera_id}")
        cameras.append(ColmapCamera(camera_id, model, width, height, tuple(float(p) for p in params)))
    reader.finish()
    return cameras


_KEYPOINT = np.dtype([("x", "<f8"), ("y", "<f8"), ("point3D_id", "<i8")])


def read_images_binary(path: Path) -> list[ColmapImage]:
    reader = _Bytes(path)
    images = []
    for index in range(_count(reader, "images")):
        image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = reader.take("idddddddi", f"image {index}")
        name = reader.name(f"the name of image {image_id}")
        (count,) = reader.take("Q", f"the keypoint count of image {image_id} ({name})")
        keypoints = reader.array(_KEYPOINT, count, f"the keypoints of image {image_id} ({name})")
        xys = np.stack([keypoints["x"], keypoints["y"]], axis=1)
        images.append(ColmapImage(image_id, np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]), camera_id, name, xys))
    reader.finish()
    return images


_TRACK = np.dtype([("image_id", "<i4"), ("keypoint", "<i4")])


def read_points_binary(path: Path) -> ColmapPoints:
    reader = _Bytes(path)
    xyz, rgb, tracks = [], [], []
    for index in range(_count(reader, "points")):
        _, x, y, z, r, g, b, _, length = reader.take("QdddBBBdQ", f"point {index}")
        xyz.append((x, y, z))
        rgb.append((r, g, b))
        tracks.append(reader.array(_TRACK, length, f"the track of point {index}"))
    reader.finish()
    return _points(xyz, rgb, [t["image_id"] for t in tracks], [t["keypoint"] for t in tracks])


def _points(xyz: list, rgb: list, track_images: list, track_keypoints: list) -> ColmapPoints:
    lengths = np.array([len(t) for t in track_images], dtype=np.int64)
    return ColmapPoints(
        xyz=np.array(xyz, dtype=np.float64).reshape(-1, 3),
        rgb=np.array(rgb, dtype=np.uint8).reshape(-1, 3),
        track_point=np.repeat(np.arange(len(xyz)), lengths),
        track_image=np.concatenate([np.zeros(0, np.int64), *track_images]).astype(np.int64),
        track_keypoint=np.concatenate([np.zeros(0, np.int64), *track_keypoints]).astype(np.int64),
    )


# ---------------------------------------------------------------- text


def _data_lines(path: Path, keep_blank: bool = False) -> list[tuple[int, str]]:
    """(line number, text) of the lines that are not comments (nor blank, unless ``keep_blank``)."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise BuildError(f"{path}: not a text file: {exc}") from exc
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not keep_blank):
            continue
        lines.append((number, stripped))
    return lines


def _numbers(path: Path, number: int, tokens: list[str], kind: type = float) -> list:
    try:
        return [kind(token) for token in tokens]
    except ValueError as exc:
        raise BuildError(f"{path}, line {number}: expected numbers: {exc}") from exc


def read_cameras_text(path: Path) -> list[ColmapCamera]:
    cameras = []
    for number, line in _data_lines(path):
        tokens = line.split()
        if len(tokens) < 4:
            raise BuildError(f"{path}, line {number}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[], got {line!r}")
        model = tokens[1]
        if model not in PARAM_COUNT:
            raise BuildError(f"{path}, line {number}: unknown camera model {model!r}")
        if len(tokens) != 4 + PARAM_COUNT[model]:
            raise BuildError(f"{path}, line {number}: model {model} takes {PARAM_COUNT[model]} parameters, "
                             f"got {len(tokens) - 4}")
        camera_id, width, height = _numbers(path, number, [tokens[0], tokens[2], tokens[3]], int)
        cameras.append(ColmapCamera(camera_id, model, width, height, tuple(_numbers(path, number, tokens[4:]))))
    return cameras


def read_images_text(path: Path) -> list[ColmapImage]:
    lines = _data_lines(path, keep_blank=True)
    images, position = [], 0
    while position < len(lines):
        number, line = lines[position]
        if not line:  # blank lines between records
            position += 1
            continue
        tokens = line.split(maxsplit=9)
        if len(tokens) != 10:
            raise BuildError(f"{path}, line {number}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, "
                             f"got {line!r}")
        if position + 1 >= len(lines):
            raise BuildError(f"{path}, line {number}: image {tokens[0]} has no POINTS2D line (truncated file?)")
        image_id, camera_id = _numbers(path, number, [tokens[0], tokens[8]], int)
        pose = np.array(_numbers(path, number, tokens[1:8]))
        points_number, points_line = lines[position + 1]
        values = _numbers(path, points_number, points_line.split())
        if len(values) % 3:
            raise BuildError(f"{path}, line {points_number}: POINTS2D must be (X, Y, POINT3D_ID) triples")
        xys = np.array(values, dtype=np.float64).reshape(-1, 3)[:, :2]
        images.append(ColmapImage(image_id, pose[:4], pose[4:], camera_id, tokens[9], xys))
        position += 2
    return images


def read_points_text(path: Path) -> ColmapPoints:
    xyz, rgb, track_images, track_keypoints = [], [], [], []
    for number, line in _data_lines(path):
        tokens = line.split()
        if len(tokens) < 8 or (len(tokens) - 8) % 2:
            raise BuildError(f"{path}, line {number}: expected POINT3D_ID X Y Z R G B ERROR TRACK[] pairs")
        xyz.append(_numbers(path, number, tokens[1:4]))
        color = _numbers(path, number, tokens[4:7], int)
        if not all(0 <= c <= 255 for c in color):
            raise BuildError(f"{path}, line {number}: color {color} is outside 0..255")
        rgb.append(color)
        track = np.array(_numbers(path, number, tokens[8:], int), dtype=np.int64).reshape(-1, 2)
        track_images.append(track[:, 0])
        track_keypoints.append(track[:, 1])
    return _points(xyz, rgb, track_images, track_keypoints)


# ---------------------------------------------------------------- model


_READERS = {
    ("cameras", ".bin"): read_cameras_binary, ("cameras", ".txt"): read_cameras_text,
    ("images", ".bin"): read_images_binary, ("images", ".txt"): read_images_text,
    ("points3D", ".bin"): read_points_binary, ("points3D", ".txt"): read_points_text,
}


def has_model(directory: Path) -> bool:
    return any((directory / f"cameras{suffix}").is_file() for suffix in (".bin", ".txt"))


def find_model(root: Path) -> Path:
    """The model folder of a capture: ``sparse/0``, ``sparse`` or the folder itself."""
    for candidate in (root / "sparse" / "0", root / "sparse", root):
        if has_model(candidate):
            return candidate
    raise BuildError(f"{root}: no COLMAP model (looked for cameras.bin or cameras.txt in sparse/0, sparse and "
                     "the folder itself)")


def _model_file(directory: Path, stem: str) -> Path:
    for suffix in (".bin", ".txt"):
        if (directory / f"{stem}{suffix}").is_file():
            return directory / f"{stem}{suffix}"
    raise BuildError(f"{directory / (stem + '.bin')}: missing (no {stem}.bin or {stem}.txt in the model)")


def _unique_by_id(items: list, key: str, path: Path) -> dict:
    table = {}
    for item in items:
        item_id = getattr(item, key)
        if item_id in table:
            raise BuildError(f"{path}: {key} {item_id} appears twice")
        table[item_id] = item
    return table


def read_model(directory: Path) -> ColmapModel:
    """Read and cross-check a COLMAP model folder (binary or text files)."""
    directory = Path(directory)
    files = {stem: _model_file(directory, stem) for stem in MODEL_FILES}
    parsed = {stem: _READERS[stem, path.suffix](path) for stem, path in files.items()}
    cameras = _unique_by_id(parsed["cameras"], "camera_id", files["cameras"])
    images = parsed["images"]
    _unique_by_id(images, "image_id", files["images"])
    if not images:
        raise BuildError(f"{files['images']}: the model has no images (empty model)")
    for image in images:
        if image.camera_id not in cameras:
            raise BuildError(f"{files['images']}: image {image.image_id} ({image.name}) uses camera "
                             f"{image.camera_id}, which {files['cameras'].name} does not define")
    points = parsed["points3D"]
    if not np.isfinite(points.xyz).all():
        raise BuildError(f"{files['points3D']}: point {int(np.argwhere(~np.isfinite(points.xyz))[0, 0])} "
                         "has a non-finite position")
    return ColmapModel(directory, files, cameras, images, points)


# ---------------------------------------------------------------- model -> capture


def lens_from_camera(camera: ColmapCamera, where: str) -> Lens:
    """COLMAP intrinsics as a ``Lens`` (principal point in the same +0.5 pixel-center convention)."""
    p, model = camera.params, camera.model
    size = {"model": model, "width": camera.width, "height": camera.height}
    if model == "SIMPLE_PINHOLE":
        return make_lens(where, **size, fx=p[0], fy=p[0], cx=p[1], cy=p[2])
    if model == "PINHOLE":
        return make_lens(where, **size, fx=p[0], fy=p[1], cx=p[2], cy=p[3])
    if model == "SIMPLE_RADIAL":
        return make_lens(where, **size, fx=p[0], fy=p[0], cx=p[1], cy=p[2], radial=(p[3], 0.0, 0.0, 0.0))
    if model == "RADIAL":
        return make_lens(where, **size, fx=p[0], fy=p[0], cx=p[1], cy=p[2], radial=(p[3], p[4], 0.0, 0.0))
    if model == "OPENCV":
        return make_lens(where, **size, fx=p[0], fy=p[1], cx=p[2], cy=p[3], radial=(p[4], p[5], 0.0, 0.0),
                         tangential=(p[6], p[7]))
    if model == "FULL_OPENCV" and not any(p[9:12]):
        return make_lens(where, **size, fx=p[0], fy=p[1], cx=p[2], cy=p[3], radial=(p[4], p[5], p[8], 0.0),
                         tangential=(p[6], p[7]))
    raise BuildError(
        f"{where}: camera {camera.camera_id} uses the {model} model"
        + (" with rational terms k4..k6" if model == "FULL_OPENCV" else "")
        + f", which gfbench cannot undistort (it takes {SUPPORTED_MODELS}); undistort the capture first, "
        "e.g. with `colmap image_undistorter`"
    )


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def camera_to_world(qvec: np.ndarray, tvec: np.ndarray, where: str) -> np.ndarray:
    """COLMAP world-to-camera (q, t) -> OpenCV c2w = [R^T | -R^T t]."""
    norm = np.linalg.norm(qvec)
    if not (np.isfinite(qvec).all() and np.isfinite(tvec).all()) or norm < 1e-8:
        raise BuildError(f"{where}: pose is not finite or its quaternion is zero (q={qvec.tolist()}, "
                         f"t={tvec.tolist()})")
    rotation = quaternion_to_matrix(qvec / norm)
    c2w = np.eye(4)
    c2w[:3, :3] = rotation.T
    c2w[:3, 3] = -rotation.T @ tvec
    return check_pose(c2w, where)


def _observations(model: ColmapModel) -> CapturePoints:
    """Tracks -> (point, image name, keypoint pixel); track entries naming images not in the model are dropped."""
    points = model.points
    images = sorted(model.images, key=lambda image: image.image_id)
    ids = np.array([image.image_id for image in images], dtype=np.int64)
    counts = np.array([len(image.xys) for image in images], dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.minimum(np.searchsorted(ids, points.track_image), len(ids) - 1)
    known = ids[slot] == points.track_image
    slot, keypoint, obs_point = slot[known], points.track_keypoint[known], points.track_point[known]
    bad = (keypoint < 0) | (keypoint >= counts[slot])
    if bad.any():
        image = images[slot[bad][0]]
        raise BuildError(f"{model.files['points3D']}: point #{int(obs_point[bad][0])} names keypoint "
                         f"{int(keypoint[bad][0])} of image {image.image_id} ({image.name}), which has "
                         f"{len(image.xys)} keypoints in {model.files['images'].name}")
    all_xys = np.concatenate([np.zeros((0, 2)), *(image.xys for image in images)])
    names = np.array([image.name for image in images], dtype=object)
    return CapturePoints(xyz=points.xyz, rgb=points.rgb, obs_point=obs_point, obs_name=list(names[slot]),
                         obs_uv=all_xys[first[slot] + keypoint])


def capture_from_model(model: ColmapModel, image_dir: Path, provenance: dict) -> Capture:
    """Frames (image file, lens, pose) and points with tracks of a COLMAP model."""
    images_file = model.files["images"]
    lenses = {cid: lens_from_camera(cam, str(model.files["cameras"])) for cid, cam in model.cameras.items()}
    frames = []
    for image in model.images:
        where = f"{images_file}, image {image.image_id} ({image.name})"
        frames.append(CaptureFrame(
            name=image.name,
            image_path=find_image(image_dir, image.name),
            lens=lenses[image.camera_id],
            c2w=camera_to_world(image.qvec, image.tvec, where),
            origin=where,
        ))
    provenance = {**provenance, "model": model.format, "model_path": relative_to_source(model.directory, provenance)}
    return Capture(frames, _observations(model), provenance)


def read_colmap_capture(model_dir: Path, image_dir: Path, source: Path, layout: str = "colmap") -> Capture:
    """A COLMAP capture from its model folder and image folder (``source`` is recorded as provenance)."""
    if not image_dir.is_dir():
        raise BuildError(f"{image_dir}: image folder not found")
    model = read_model(model_dir)
    provenance = {"builder": "gfbench.builders.colmap", "layout": layout, "source": str(Path(source).resolve())}
    provenance["images"] = relative_to_source(image_dir, provenance)
    return capture_from_model(model, image_dir, provenance)


def build_colmap(path: Path, images: str = "images", dataset: str = "custom", scene_id: str | None = None,
                 out: Path | None = None, progress: bool = False, undistort: str = "keep-size",
                 splits: Path | None = None) -> Path:
    """Build the COLMAP capture at ``path`` (``sparse/0`` or ``sparse`` beside an image folder) into a shard
    ``<out>/<dataset>/<scene_id>.tar``; ``scene_id`` defaults to the folder name. Split files
    (``train_test_split_{n}.json``) in ``path``, or in ``splits`` when given, go into the shard."""
    from gfbench.builders.known import split_files_meta  # late: known imports this module

    path = Path(path)
    if not path.is_dir():
        raise BuildError(f"{path}: capture folder not found")
    if splits is not None and not Path(splits).is_dir():
        raise BuildError(f"{splits}: split file folder not found")
    capture = read_colmap_capture(find_model(path), path / images, path)
    scene_id = scene_id or safe_id(path.resolve().name)
    extra = split_files_meta(Path(splits or path), len(capture.frames), f"{dataset}/{scene_id}")
    return build_and_write(dataset, scene_id, capture, data_root(out), progress=progress, undistort=undistort,
                           extra_meta=extra)
