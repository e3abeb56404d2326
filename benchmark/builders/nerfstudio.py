"""nerfstudio captures (``transforms.json``) -> captures -> shards.

Intrinsics (``fl_x fl_y cx cy w h``, distortion ``k1 k2 k3 k4 p1 p2``, ``camera_model``) are global or per
frame (a frame's own value wins). ``transform_matrix`` is an OpenGL camera-to-world: OpenCV is
``c2w @ diag(1, -1, -1, 1)``. An ``applied_transform`` (nerfstudio's export from COLMAP) is already part of
every ``transform_matrix`` and of the ``ply_file_path`` points; it is recorded, not re-applied. Points come
from ``ply_file_path`` when present, without observations.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import numpy as np

from gfbench.builders.common import (
    BuildError, Capture, CaptureFrame, CapturePoints, build_and_write, check_pose, find_image, make_lens,
    relative_to_source, safe_id,
)
from gfbench.builders.undistort import Lens
from gfbench.camera import OPENGL_TO_OPENCV
from gfbench.paths import data_root

TRANSFORMS = "transforms.json"
INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")
PERSPECTIVE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "PERSPECTIVE")


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise BuildError(f"{path}: not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BuildError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BuildError(f"{path}: expected a JSON object at the top level")
    return data


def _field(frame: dict, meta: dict, name: str, where: str, default=None) -> float:
    """A numeric field from the frame, else the file's top level, else ``default`` (None: required)."""
    value = frame.get(name, meta.get(name, default))
    if value is None:
        raise BuildError(f"{where}: field {name!r} is missing (neither in the frame nor at the top level)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BuildError(f"{where}: field {name!r} must be a number, got {value!r}")
    return float(value)


def frame_lens(frame: dict, meta: dict, where: str) -> Lens:
    model = frame.get("camera_model", meta.get("camera_model", "OPENCV"))
    if model not in PERSPECTIVE_MODELS:
        raise BuildError(f"{where}: camera_model {model!r} cannot be undistorted by gfbench (it takes "
                         f"{', '.join(PERSPECTIVE_MODELS)}); undistort the capture first")
    fx, fy, cx, cy, width, height = (_field(frame, meta, name, where) for name in INTRINSICS)
    if width != int(width) or height != int(height):
        raise BuildError(f"{where}: image size w={width}, h={height} must be whole pixels")
    k1, k2, k3, k4, p1, p2 = (_field(frame, meta, name, where, 0.0) for name in DISTORTION)
    return make_lens(where, model=model, width=int(width), height=int(height), fx=fx, fy=fy, cx=cx, cy=cy,
                     radial=(k1, k2, k3, k4), tangential=(p1, p2))


def frame_pose(frame: dict, where: str) -> np.ndarray:
    if "transform_matrix" not in frame:
        raise BuildError(f"{where}: field 'transform_matrix' is missing")
    try:
        matrix = np.array(frame["transform_matrix"], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BuildError(f"{where}: transform_matrix is not a numeric matrix: {exc}") from exc
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    if matrix.shape != (4, 4):
        raise BuildError(f"{where}: transform_matrix has shape {matrix.shape}, expected 4x4 (or 3x4)")
    return check_pose(matrix, where) @ OPENGL_TO_OPENCV


def frame_image(frame: dict, root: Path, images: str | None, where: str) -> tuple[str, Path]:
    """(frame name, image file). The name is ``file_path`` below its image folder; with ``images`` set, the
    file is looked up in that folder instead (nerfstudio's way to use ``images_4`` with one transforms.json)."""
    file_path = frame.get("file_path")
    if not isinstance(file_path, str) or not file_path:
        raise BuildError(f"{where}: field 'file_path' is missing or not a string")
    parts = PurePosixPath(file_path).parts
    name = "/".join(parts[1:]) if len(parts) > 1 else parts[0]
    folder = root / images if images else root / Path(*parts[:-1])
    return name, find_image(folder, name if images else parts[-1])


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2", "ushort": "u2",
    "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4", "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}


def _ply_header(path: Path, data: bytes) -> tuple[str, int, list[tuple[str, str]], int]:
    """(format, vertex count, vertex properties, header length); the vertex element must come first."""
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply") or end < 0:
        raise BuildError(f"{path}: not a PLY file (no 'ply' magic or no end_header)")
    lines = data[:end].decode("ascii", errors="replace").splitlines()
    fmt, count, properties, element = None, 0, [], None
    for line in lines[1:]:
        tokens = line.split()
        if not tokens or tokens[0] in ("comment", "obj_info"):
            continue
        if tokens[0] == "format":
            fmt = tokens[1]
        elif tokens[0] == "element":
            if element == "vertex":
                break  # later elements (faces) are not needed
            element, count = tokens[1], int(tokens[2])
            if element != "vertex":
                raise BuildError(f"{path}: element {element!r} comes before 'vertex'; gfbench reads vertex-first PLYs")
        elif tokens[0] == "property" and element == "vertex":
            if tokens[1] == "list" or tokens[1] not in _PLY_TYPES:
                raise BuildError(f"{path}: vertex property {' '.join(tokens[1:])!r} is not supported")
            properties.append((tokens[2], _PLY_TYPES[tokens[1]]))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian") or element != "vertex":
        raise BuildError(f"{path}: PLY header has format {fmt!r} and no vertex element")
    return fmt, count, properties, end + len(b"end_header\n")


def read_ply_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(xyz float64 (N, 3), rgb uint8 (N, 3)) of a PLY point cloud; points without colors are gray."""
    data = path.read_bytes()
    fmt, count, properties, start = _ply_header(path, data)
    names = [name for name, _ in properties]
    if not {"x", "y", "z"} <= set(names):
        raise BuildError(f"{path}: vertices have no x, y, z properties (they have {names})")
    if fmt == "ascii":
        rows = data[start:].decode("ascii", errors="replace").split("\n")[:count]
        try:
            table = np.array([row.split()[:len(names)] for row in rows], dtype=np.float64).reshape(-1, len(names))
        except ValueError as exc:
            raise BuildError(f"{path}: malformed vertex rows: {exc}") from exc
        columns = {name: table[:, i] for i, name in enumerate(names)}
        actual = len(table)
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(name, order + code) for name, code in properties])
        actual = min(count, (len(data) - start) // dtype.itemsize)
        vertices = np.frombuffer(data, dtype=dtype, count=actual, offset=start)
        columns = {name: vertices[name] for name in names}
    if actual != count:
        raise BuildError(f"{path}: header declares {count} vertices, the file holds {actual} (truncated)")
    xyz = np.stack([columns[c].astype(np.float64) for c in "xyz"], axis=1)
    if not np.isfinite(xyz).all():
        raise BuildError(f"{path}: some vertex positions are not finite")
    if {"red", "green", "blue"} <= set(names):
        rgb = np.stack([columns[c] for c in ("red", "green", "blue")], axis=1).astype(np.float64)
        if dict(properties)["red"].startswith("f"):  # float colors are in [0, 1]
            rgb *= 255.0
        rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    else:
        rgb = np.full((len(xyz), 3), 128, dtype=np.uint8)
    return xyz, rgb


def read_nerfstudio_capture(path: Path, images: str | None = None, layout: str = "nerfstudio") -> Capture:
    """A nerfstudio capture from its folder (or its ``transforms.json``); ``images`` picks another image
    folder (e.g. ``images_4``) for the frames' ``file_path``s."""
    path = Path(path)
    transforms = path if path.is_file() else path / TRANSFORMS
    root = transforms.parent
    meta = _load_json(transforms)
    entries = meta.get("frames")
    if not isinstance(entries, list) or not entries:
        raise BuildError(f"{transforms}: field 'frames' is missing or empty")
    if images and not (root / images).is_dir():
        raise BuildError(f"{root / images}: image folder not found")
    frames = []
    for index, entry in enumerate(entries):
        where = f"{transforms}, frames[{index}]"
        if not isinstance(entry, dict):
            raise BuildError(f"{where}: expected an object")
        name, image_path = frame_image(entry, root, images, where)
        frames.append(CaptureFrame(name, image_path, frame_lens(entry, meta, where), frame_pose(entry, where),
                                   f"{where} ({entry.get('file_path')})"))
    points = None
    provenance = {"builder": "gfbench.builders.nerfstudio", "layout": layout, "source": str(root.resolve()),
                  "model": TRANSFORMS, "model_path": TRANSFORMS, "images": images or "file_path"}
    if "applied_transform" in meta:
        provenance["applied_transform"] = meta["applied_transform"]
    if meta.get("ply_file_path"):
        ply = root / meta["ply_file_path"]
        if not ply.is_file():
            raise BuildError(f"{transforms}: ply_file_path {meta['ply_file_path']!r} does not exist ({ply})")
        points = CapturePoints(*read_ply_points(ply))
        provenance["points"] = relative_to_source(ply, provenance)
    return Capture(frames, points, provenance)


def build_nerfstudio(path: Path, images: str | None = None, dataset: str = "custom", scene_id: str | None = None,
                     out: Path | None = None, progress: bool = False) -> Path:
    """Build the nerfstudio capture at ``path`` into ``<out>/<dataset>/<scene_id>.tar`` (scene id defaults
    to the folder name)."""
    path = Path(path)
    capture = read_nerfstudio_capture(path, images)
    folder = path.parent if path.is_file() else path
    scene_id = scene_id or safe_id(folder.resolve().name)
    return build_and_write(dataset, scene_id, capture, data_root(out), progress=progress)
