"""Real-data builders: COLMAP (binary and text) and nerfstudio captures written here, built into shards and
checked against pycolmap as the independent reader (and, for distortion, pycolmap's camera models)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pycolmap
import pytest
from click.testing import CliRunner
from PIL import Image

from gfbench.builders.colmap import build_colmap, read_model
from gfbench.builders.common import BuildError
from gfbench.builders.known import build_known, download_dl3dv
from gfbench.builders.nerfstudio import build_nerfstudio
from gfbench.builders.undistort import Lens, Undistorter, distort
from gfbench.camera import OPENGL_TO_OPENCV, look_at
from gfbench.cli.build_real import (
    colmap_command, dl3dv_command, mipnerf360_command, nerfstudio_command, tnt_command,
)
from gfbench.shards import read_manifest, read_scene

W, H = 40, 30
OPENCV_PARAMS = [30.0, 31.0, 20.3, 14.8, -0.12, 0.03, 0.002, -0.003]
DL3DV_HASH = "06da796666297fe4c683c231edf56ec00148a6a52ab5bb159fe1be31f53a58df"


# ---------------------------------------------------------------- writing captures


def make_camera(model: str, params: list[float], camera_id: int = 1, width: int = W, height: int = H):
    return pycolmap.Camera(model=model, width=width, height=height, params=params, camera_id=camera_id)


def ring_poses(count: int) -> list[np.ndarray]:
    """OpenCV c2w looking at the origin from an arc in front of the points."""
    poses = []
    for k in range(count):
        angle = -0.35 + 0.7 * k / max(count - 1, 1)
        eye = np.array([4.0 * np.sin(angle), -4.0 * np.cos(angle), 0.6 + 0.1 * k])
        poses.append(look_at(eye, np.array([0.0, 0.0, 0.1])))
    return poses


def random_points(count: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform([-1, -0.4, -0.6], [1, 0.4, 0.6], (count, 3)), rng.integers(0, 256, (count, 3), dtype=np.uint8)


def write_colmap(model_dir: Path, cameras: list, names: list[str], c2ws: list[np.ndarray], xyz: np.ndarray,
                 rgb: np.ndarray, fmt: str = "binary") -> pycolmap.Reconstruction:
    """A pycolmap reconstruction: frame k uses ``cameras[k % len(cameras)]``; images are stored in reverse
    name order, with ids running backwards, so that neither file order nor ids are the name order; every
    visible point is observed."""
    rec = pycolmap.Reconstruction()
    for camera in cameras:
        rec.add_camera_with_trivial_rig(camera)
    tracks: dict[int, list[tuple[int, int]]] = {}
    for k in reversed(range(len(names))):
        name, c2w = names[k], c2ws[k]
        camera, image_id = cameras[k % len(cameras)], len(names) - k
        w2c = np.linalg.inv(c2w)[:3]
        cam_points = xyz @ w2c[:, :3].T + w2c[:, 3]
        uv = camera.img_from_cam(cam_points)
        inside = (cam_points[:, 2] > 0.1) & (uv[:, 0] > 0) & (uv[:, 0] < camera.width) & (uv[:, 1] > 0) \
            & (uv[:, 1] < camera.height)
        seen = np.flatnonzero(inside)
        image = pycolmap.Image(name=name, keypoints=uv[seen], camera_id=camera.camera_id, image_id=image_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(w2c))
        for keypoint, point in enumerate(seen):
            tracks.setdefault(int(point), []).append((image_id, keypoint))
    for point, track in sorted(tracks.items()):
        point_id = rec.add_point3D(xyz[point], pycolmap.Track(), rgb[point])
        for image_id, keypoint in track:
            rec.add_observation(point_id, pycolmap.TrackElement(image_id, keypoint))
    model_dir.mkdir(parents=True, exist_ok=True)
    (rec.write_binary if fmt == "binary" else rec.write_text)(str(model_dir))
    return rec


def write_images(folder: Path, names: list[str], size: tuple[int, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)


def colmap_capture(root: Path, model: str = "OPENCV", params: list[float] = OPENCV_PARAMS, frames: int = 4,
                   fmt: str = "binary", per_image_cameras: bool = False, model_size: tuple[int, int] = (W, H),
                   folders: dict[str, tuple[int, int]] | None = None) -> pycolmap.Reconstruction:
    """A capture folder: ``sparse/0`` (cameras at ``model_size``) plus image folders (name -> size; default
    ``images`` at the model size)."""
    names = [f"frame_{k:03d}.png" for k in range(frames)]
    if per_image_cameras:  # the focal grows 5% per image
        cameras = [make_camera(model, [p * (1 + 0.05 * k) if i < 2 else p for i, p in enumerate(params)], k + 1,
                               *model_size) for k in range(frames)]
    else:
        cameras = [make_camera(model, params, 1, *model_size)]
    xyz, rgb = random_points()
    rec = write_colmap(root / "sparse" / "0", cameras, names, ring_poses(frames), xyz, rgb, fmt)
    for seed, (folder, size) in enumerate((folders or {"images": model_size}).items()):
        write_images(root / folder, names, size, seed)
    return rec


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray, binary: bool = True) -> None:
    header = (f"ply\nformat {'binary_little_endian' if binary else 'ascii'} 1.0\nelement vertex {len(xyz)}\n"
              "property double x\nproperty double y\nproperty double z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    if binary:
        table = np.zeros(len(xyz), dtype=[("p", "<f8", 3), ("c", "u1", 3)])
        table["p"], table["c"] = xyz, rgb
        path.write_bytes(header.encode() + table.tobytes())
    else:
        rows = "".join(f"{x!r} {y!r} {z!r} {r} {g} {b}\n" for (x, y, z), (r, g, b) in zip(xyz.tolist(), rgb.tolist()))
        path.write_text(header + rows)


def nerfstudio_from_colmap(root: Path, rec: pycolmap.Reconstruction, binary_ply: bool = True) -> dict:
    """transforms.json for the same capture (OpenGL c2w, OPENCV intrinsics, a PLY of the points)."""
    camera = rec.cameras[1]
    fx, fy, cx, cy = camera.focal_length_x, camera.focal_length_y, camera.principal_point_x, camera.principal_point_y
    k1, k2, p1, p2 = camera.params[4:] if camera.model_name == "OPENCV" else (0.0, 0.0, 0.0, 0.0)
    frames = []
    for image in rec.images.values():
        c2w = np.linalg.inv(np.vstack([image.cam_from_world().matrix(), [0, 0, 0, 1]]))
        frames.append({"file_path": f"images/{image.name}", "transform_matrix": (c2w @ OPENGL_TO_OPENCV).tolist()})
    points = sorted(rec.points3D.items())
    write_ply(root / "sparse_pc.ply", np.array([p.xyz for _, p in points]), np.array([p.color for _, p in points]),
              binary_ply)
    meta = {"camera_model": "OPENCV", "fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": camera.width,
            "h": camera.height, "k1": k1, "k2": k2, "p1": p1, "p2": p2, "frames": frames,
            "applied_transform": [[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0]], "ply_file_path": "sparse_pc.ply"}
    (root / "transforms.json").write_text(json.dumps(meta))
    return meta


def reference_observations(rec: pycolmap.Reconstruction, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(xyz, raw keypoint) of every triangulated keypoint of image ``name``, sorted by xyz."""
    image = next(image for image in rec.images.values() if image.name == name)
    pairs = [(rec.points3D[p.point3D_id].xyz, p.xy) for p in image.points2D if p.has_point3D()]
    xyz, uv = (np.array(column) for column in zip(*pairs))
    order = np.lexsort(xyz.T)
    return xyz[order], uv[order]


def scene_observations(scene, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(xyz, uv) of the observations in frame ``k`` of a built scene, sorted by xyz."""
    rows = scene.points.obs_frame == k
    xyz = scene.points.xyz[scene.points.obs_point[rows]].astype(np.float64)
    order = np.lexsort(xyz.T)
    return xyz[order], scene.points.obs_uv[rows][order].astype(np.float64)


def shard_sha(out: Path, dataset: str, scene: str) -> str:
    return hashlib.sha256((out / dataset / f"{scene}.tar").read_bytes()).hexdigest()


def pinhole_projection(camera, xyz: np.ndarray) -> np.ndarray:
    uv, _ = camera.project(xyz)
    return uv


# ---------------------------------------------------------------- COLMAP against pycolmap


@pytest.mark.parametrize("fmt, per_image", [("binary", False), ("text", True)])
def test_colmap_build_matches_pycolmap(tmp_path, fmt, per_image):
    colmap_capture(tmp_path / "cap", model="PINHOLE", params=[30.0, 31.0, 20.3, 14.8], fmt=fmt,
                   per_image_cameras=per_image)
    build_colmap(tmp_path / "cap", out=tmp_path / "out", scene_id="cap")
    scene = read_scene(tmp_path / "out", "custom", "cap")
    reference = pycolmap.Reconstruction(str(tmp_path / "cap" / "sparse" / "0"))
    by_name = {image.name: image for image in reference.images.values()}
    assert scene.frame_names == sorted(by_name)
    for frame in scene.frames:
        image = by_name[frame.name]
        np.testing.assert_allclose(frame.camera.K, reference.cameras[image.camera_id].calibration_matrix(), atol=1e-12)
        w2c = np.vstack([image.cam_from_world().matrix(), [0, 0, 0, 1]])
        np.testing.assert_allclose(frame.camera.c2w, np.linalg.inv(w2c), atol=1e-9)
        np.testing.assert_array_equal(frame.image, np.asarray(Image.open(tmp_path / "cap" / "images" / frame.name)))
        assert frame.mask is None
    points = list(reference.points3D.values())
    ours, theirs = np.lexsort(scene.points.xyz.T), np.lexsort(np.array([p.xyz for p in points]).T)
    np.testing.assert_allclose(scene.points.xyz[ours], [points[i].xyz for i in theirs], atol=1e-6)
    np.testing.assert_array_equal(scene.points.rgb[ours], [points[i].color for i in theirs])
    for k, name in enumerate(scene.frame_names):  # every track entry, as (point, frame, keypoint)
        xyz, uv = scene_observations(scene, k)
        ref_xyz, ref_uv = reference_observations(reference, name)
        np.testing.assert_allclose(xyz, ref_xyz, atol=1e-6)
        np.testing.assert_allclose(uv, ref_uv, atol=1e-4)
    assert len(scene.points.obs_point) == sum(len(p.track.elements) for p in points)
    provenance = scene.meta["provenance"]
    assert provenance["model"] == fmt and provenance["camera_models"] == ["PINHOLE"]
    assert provenance["undistorted"] is False
    assert scene.meta["normalization"]["radius"] > 0


def test_reader_parses_binary_and_text_alike(tmp_path):
    rec = colmap_capture(tmp_path / "cap", frames=3)
    (tmp_path / "txt").mkdir()
    rec.write_text(str(tmp_path / "txt"))
    binary, text = read_model(tmp_path / "cap" / "sparse" / "0"), read_model(tmp_path / "txt")
    assert (binary.format, text.format) == ("binary", "text")
    assert binary.cameras == text.cameras
    for a, b in zip(binary.images, text.images):
        assert (a.image_id, a.name, a.camera_id) == (b.image_id, b.name, b.camera_id)
        np.testing.assert_allclose(a.qvec, b.qvec, atol=1e-12)
        np.testing.assert_allclose(a.xys, b.xys, atol=1e-9)
    np.testing.assert_allclose(binary.points.xyz, text.points.xyz, atol=1e-9)
    np.testing.assert_array_equal(binary.points.track_image, text.points.track_image)


@pytest.mark.parametrize("model, params", [
    ("SIMPLE_PINHOLE", [30.0, 20.3, 14.8]),
    ("PINHOLE", [30.0, 31.0, 20.3, 14.8]),
    ("SIMPLE_RADIAL", [30.0, 20.3, 14.8, -0.1]),
    ("RADIAL", [30.0, 20.3, 14.8, -0.1, 0.02]),
    ("OPENCV", OPENCV_PARAMS),
])
def test_camera_models_undistort_like_pycolmap(tmp_path, model, params):
    """Observations come out where pycolmap's own inverse of the model puts them, under the pinhole K."""
    rec = colmap_capture(tmp_path / "cap", model=model, params=params, frames=3)
    build_colmap(tmp_path / "cap", out=tmp_path / "out", scene_id="cap")
    scene = read_scene(tmp_path / "out", "custom", "cap")
    camera = rec.cameras[1]
    for k, frame in enumerate(scene.frames):
        xyz, uv = scene_observations(scene, k)
        _, raw = reference_observations(rec, frame.name)
        expected = camera.cam_from_img(raw) @ frame.camera.K[:2, :2].T + frame.camera.K[:2, 2]
        np.testing.assert_allclose(uv, expected, atol=2e-3)
        # and the pinhole camera projects each observed point onto its observation
        np.testing.assert_allclose(pinhole_projection(frame.camera, xyz), uv, atol=2e-3)
    assert scene.meta["provenance"]["undistorted"] is (model not in ("SIMPLE_PINHOLE", "PINHOLE"))


def test_distortion_model_matches_pycolmap():
    camera = make_camera("OPENCV", OPENCV_PARAMS)
    lens = Lens("OPENCV", W, H, *OPENCV_PARAMS[:4], radial=(*OPENCV_PARAMS[4:6], 0, 0),
                tangential=tuple(OPENCV_PARAMS[6:]))
    normalized = np.random.default_rng(1).uniform(-0.7, 0.7, (50, 2))
    expected = camera.img_from_cam(np.hstack([normalized, np.ones((50, 1))]))
    np.testing.assert_allclose(lens.to_pixels(*distort(lens, normalized[:, 0], normalized[:, 1])), expected, atol=1e-9)
    np.testing.assert_allclose(Undistorter(lens).points(expected), lens.to_pixels(*normalized.T), atol=1e-6)


def test_pixels_sampling_outside_the_raw_image_are_masked():
    pincushion = Lens("RADIAL", W, H, 20.0, 20.0, 20.0, 15.0, radial=(0.2, 0.0, 0.0, 0.0))
    image, mask = Undistorter(pincushion).image(np.full((H, W, 3), 200, np.uint8))
    assert not mask[0, 0] and not mask[-1, -1] and mask[H // 2, W // 2]
    assert (image[~mask] == 0).all() and (image[mask] == 200).all()
    _, no_mask = Undistorter(Lens("RADIAL", W, H, 20.0, 20.0, 20.0, 15.0, radial=(-0.05, 0.0, 0.0, 0.0))).image(image)
    assert no_mask is None  # barrel distortion at the same focal stays inside the raw image


def blob_image(centers: np.ndarray, width: int, height: int, sigma: float = 1.1) -> np.ndarray:
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    value = sum(np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * sigma ** 2)) for cu, cv in centers)
    return np.repeat((np.clip(value, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def centroid(image: np.ndarray, near: np.ndarray, radius: int = 4) -> np.ndarray:
    col, row = int(near[0]), int(near[1])
    window = image[row - radius:row + radius + 1, col - radius:col + radius + 1, 0].astype(np.float64)
    v, u = np.mgrid[row - radius:row + radius + 1, col - radius:col + radius + 1] + 0.5
    return np.array([(window * u).sum(), (window * v).sum()]) / window.sum()


def test_opencv_undistortion_moves_image_content_to_the_pinhole_projection(tmp_path):
    """Blobs drawn where the distorted model (pycolmap) projects known points land, after undistortion,
    where the built pinhole camera projects them."""
    width, height = 80, 60
    params = [60.0, 61.0, 40.4, 29.6, -0.2, 0.04, 0.003, -0.004]
    camera = make_camera("OPENCV", params, width=width, height=height)
    c2ws = [look_at(np.array([0.1 * k, -3.0, 0.3]), np.array([0.1 * k, 0.0, 0.3])) for k in range(2)]
    grid = np.array([[x, 0.0, z] for x in (-1.5, 0.0, 1.5) for z in (-0.8, 0.3, 1.4)])
    rec = write_colmap(tmp_path / "cap" / "sparse" / "0", [camera], ["a.png", "b.png"], c2ws, grid,
                       np.full((9, 3), 255, np.uint8))
    (tmp_path / "cap" / "images").mkdir()
    raw_centers = {}
    for image in rec.images.values():
        raw_centers[image.name] = np.array([p.xy for p in image.points2D])
        blobs = blob_image(raw_centers[image.name], width, height)
        Image.fromarray(blobs).save(tmp_path / "cap" / "images" / image.name)
    build_colmap(tmp_path / "cap", out=tmp_path / "out", scene_id="blobs")
    scene = read_scene(tmp_path / "out", "custom", "blobs")
    assert scene.meta["provenance"] == {**scene.meta["provenance"], "undistorted": True, "camera_models": ["OPENCV"]}
    moved = 0.0
    for frame in scene.frames:
        np.testing.assert_array_equal(frame.camera.K, camera.calibration_matrix())  # same focal and center
        target = pinhole_projection(frame.camera, grid)
        for point, raw in zip(target, raw_centers[frame.name]):
            np.testing.assert_allclose(centroid(frame.image, point), point, atol=0.15)
            moved = max(moved, float(np.linalg.norm(raw - point)))
    assert moved > 2.0  # the distortion was large enough for the check to mean something


def test_distortion_that_folds_inside_the_image_is_refused(tmp_path):
    colmap_capture(tmp_path / "cap", params=[12.0, 12.0, 20.0, 15.0, -0.9, 0.0, 0.0, 0.0], frames=2)
    with pytest.raises(BuildError, match="folds over"):
        build_colmap(tmp_path / "cap", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_downscaled_image_folder_scales_intrinsics_and_observations(tmp_path):
    colmap_capture(tmp_path / "cap", model="PINHOLE", params=[30.0, 31.0, 20.3, 14.8],
                   folders={"images": (W, H), "images_2": (W // 2, H // 2)})
    build_colmap(tmp_path / "cap", out=tmp_path / "out", scene_id="full")
    build_colmap(tmp_path / "cap", images="images_2", out=tmp_path / "out", scene_id="half")
    full, half = (read_scene(tmp_path / "out", "custom", s) for s in ("full", "half"))
    for a, b in zip(full.frames, half.frames):
        assert (b.camera.width, b.camera.height) == (W // 2, H // 2)
        np.testing.assert_allclose(b.camera.K, np.diag([0.5, 0.5, 1.0]) @ a.camera.K)
        np.testing.assert_array_equal(a.camera.c2w, b.camera.c2w)
    np.testing.assert_allclose(half.points.obs_uv, full.points.obs_uv / 2, atol=1e-5)
    assert half.meta["provenance"]["images"] == "images_2"


def test_image_folder_with_another_aspect_is_an_error(tmp_path):
    colmap_capture(tmp_path / "cap", folders={"images": (W, H), "images_x": (20, 20)})
    with pytest.raises(BuildError, match="aspect") as error:
        build_colmap(tmp_path / "cap", images="images_x", out=tmp_path / "out")
    assert str(tmp_path / "cap" / "images_x" / "frame_000.png") in str(error.value)
    assert not (tmp_path / "out").exists()


def test_building_twice_gives_identical_shards(tmp_path):
    colmap_capture(tmp_path / "cap")  # OPENCV: the undistortion must be deterministic too
    build_colmap(tmp_path / "cap", out=tmp_path / "a", scene_id="cap")
    build_colmap(tmp_path / "cap", out=tmp_path / "b", scene_id="cap")
    assert shard_sha(tmp_path / "a", "custom", "cap") == shard_sha(tmp_path / "b", "custom", "cap")
    assert read_manifest(tmp_path / "a", "custom") == read_manifest(tmp_path / "b", "custom")


# ---------------------------------------------------------------- bad input


def _truncate(path: Path, keep: int = 20) -> None:
    path.write_bytes(path.read_bytes()[:-keep])


def _edit_text(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def _first_image_line(model: Path) -> str:
    return next(line for line in (model / "images.txt").read_text().splitlines() if line and not line.startswith("#"))


def _nan_pose(model: Path) -> None:
    line = _first_image_line(model)
    tokens = line.split()
    _edit_text(model / "images.txt", line, " ".join([tokens[0], "nan", *tokens[2:]]))


def _duplicate_name(model: Path) -> None:
    _edit_text(model / "images.txt", " frame_001.png", " frame_002.png")


def _empty_model(model: Path) -> None:
    (model / "images.txt").write_text("# Image list\n")


BAD_COLMAP = {
    "missing image": ("binary", lambda cap: (cap / "images" / "frame_002.png").unlink(), "images/frame_002.png",
                      "not found"),
    "corrupt image": ("binary", lambda cap: _truncate(cap / "images" / "frame_001.png", 2000), "images/frame_001.png",
                      "cannot decode"),
    "truncated images.bin": ("binary", lambda cap: _truncate(cap / "sparse/0/images.bin"), "images.bin", "truncated"),
    "truncated points3D.bin": ("binary", lambda cap: _truncate(cap / "sparse/0/points3D.bin", 3), "points3D.bin",
                               "truncated"),
    "NaN pose": ("text", lambda cap: _nan_pose(cap / "sparse/0"), "images.txt", "not finite"),
    "duplicate names": ("text", lambda cap: _duplicate_name(cap / "sparse/0"), "images.txt", "duplicate image name"),
    "empty model": ("text", lambda cap: _empty_model(cap / "sparse/0"), "images.txt", "no images"),
    "missing points3D": ("binary", lambda cap: (cap / "sparse/0/points3D.bin").unlink(), "points3D.bin", "missing"),
    "unknown camera": ("text", lambda cap: _edit_text(cap / "sparse/0/images.txt", " 1 frame_000.png",
                                                      " 7 frame_000.png"), "images.txt", "camera 7"),
}


@pytest.mark.parametrize("case", sorted(BAD_COLMAP))
def test_bad_colmap_input_raises_naming_the_file_and_writes_nothing(tmp_path, case):
    fmt, damage, file_part, problem = BAD_COLMAP[case]
    colmap_capture(tmp_path / "cap", fmt=fmt)
    build_colmap(tmp_path / "cap", out=tmp_path / "out", scene_id="good")  # an earlier good shard stays
    before = shard_sha(tmp_path / "out", "custom", "good")
    damage(tmp_path / "cap")
    with pytest.raises(BuildError, match=problem) as error:
        build_colmap(tmp_path / "cap", out=tmp_path / "out", scene_id="bad")
    assert file_part in str(error.value)
    assert sorted(p.name for p in (tmp_path / "out" / "custom").iterdir() if not p.name.startswith(".")) == \
        ["good.tar", "manifest.json"]
    assert shard_sha(tmp_path / "out", "custom", "good") == before
    assert list(read_manifest(tmp_path / "out", "custom")["scenes"]) == ["good"]


def test_fisheye_camera_is_refused_with_the_model_named(tmp_path):
    colmap_capture(tmp_path / "cap", model="OPENCV_FISHEYE", params=[30.0, 31.0, 20.0, 15.0, 0.1, 0.0, 0.0, 0.0])
    with pytest.raises(BuildError, match="OPENCV_FISHEYE.*cannot undistort") as error:
        build_colmap(tmp_path / "cap", out=tmp_path / "out")
    assert "cameras.bin" in str(error.value)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- nerfstudio


@pytest.mark.parametrize("binary_ply", [True, False])
def test_nerfstudio_build_matches_the_colmap_build_of_the_same_capture(tmp_path, binary_ply):
    rec = colmap_capture(tmp_path / "cap")
    nerfstudio_from_colmap(tmp_path / "cap", rec, binary_ply)
    build_colmap(tmp_path / "cap", out=tmp_path / "out", scene_id="colmap")
    build_nerfstudio(tmp_path / "cap", out=tmp_path / "out", scene_id="ns")
    colmap_scene, ns = (read_scene(tmp_path / "out", "custom", s) for s in ("colmap", "ns"))
    assert ns.frame_names == colmap_scene.frame_names
    for a, b in zip(colmap_scene.frames, ns.frames):
        np.testing.assert_allclose(b.camera.K, a.camera.K, atol=1e-12)
        np.testing.assert_allclose(b.camera.c2w, a.camera.c2w, atol=1e-9)
        np.testing.assert_array_equal(b.image, a.image)
    np.testing.assert_allclose(ns.points.xyz, colmap_scene.points.xyz, atol=1e-6)
    np.testing.assert_array_equal(ns.points.rgb, colmap_scene.points.rgb)
    assert not ns.points.has_observations
    provenance = ns.meta["provenance"]
    assert provenance["undistorted"] is True and provenance["applied_transform"][1] == [0, 0, 1, 0]


def test_nerfstudio_per_frame_intrinsics_and_downscaled_folder(tmp_path):
    rec = colmap_capture(tmp_path / "cap", model="PINHOLE", params=[30.0, 31.0, 20.3, 14.8],
                         folders={"images": (W, H), "images_2": (W // 2, H // 2)})
    meta = nerfstudio_from_colmap(tmp_path / "cap", rec)
    for key in ("k1", "k2", "p1", "p2", "ply_file_path"):
        meta.pop(key)
    meta["frames"][0]["fl_x"] = 40.0
    (tmp_path / "cap" / "transforms.json").write_text(json.dumps(meta))
    build_nerfstudio(tmp_path / "cap" / "transforms.json", images="images_2", out=tmp_path / "out", scene_id="ns")
    scene = read_scene(tmp_path / "out", "custom", "ns")
    assert scene.points is None
    first = meta["frames"][0]["file_path"].split("/")[-1]
    for frame in scene.frames:
        fx = 40.0 if frame.name == first else 30.0
        np.testing.assert_allclose(np.diag(frame.camera.K)[:2], [fx / 2, 31.0 / 2])
        assert (frame.camera.width, frame.camera.height) == (W // 2, H // 2)
    assert scene.meta["provenance"]["undistorted"] is False


def _drop_frame_field(meta: dict, field: str) -> None:
    del meta["frames"][1][field]


BAD_NERFSTUDIO = {
    "missing fl_x": (lambda meta: meta.pop("fl_x"), "'fl_x' is missing"),
    "missing transform_matrix": (lambda meta: _drop_frame_field(meta, "transform_matrix"),
                                 "frames\\[1\\].*transform_matrix"),
    "missing file_path": (lambda meta: _drop_frame_field(meta, "file_path"), "frames\\[1\\].*file_path"),
    "NaN pose": (lambda meta: meta["frames"][2]["transform_matrix"][0].__setitem__(3, float("nan")), "not finite"),
    "fisheye": (lambda meta: meta.__setitem__("camera_model", "OPENCV_FISHEYE"), "OPENCV_FISHEYE"),
    "no frames": (lambda meta: meta.__setitem__("frames", []), "'frames' is missing or empty"),
    "missing ply": (lambda meta: meta.__setitem__("ply_file_path", "nowhere.ply"), "nowhere.ply"),
}


@pytest.mark.parametrize("case", sorted(BAD_NERFSTUDIO))
def test_bad_nerfstudio_input_raises_naming_the_file(tmp_path, case):
    damage, problem = BAD_NERFSTUDIO[case]
    rec = colmap_capture(tmp_path / "cap", frames=3)
    meta = nerfstudio_from_colmap(tmp_path / "cap", rec)
    damage(meta)
    (tmp_path / "cap" / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(BuildError, match=problem) as error:
        build_nerfstudio(tmp_path / "cap", out=tmp_path / "out")
    assert "transforms.json" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_missing_transforms_json_and_truncated_ply(tmp_path):
    colmap_capture(tmp_path / "cap", frames=2)
    with pytest.raises(BuildError, match="transforms.json: not found"):
        build_nerfstudio(tmp_path / "cap", out=tmp_path / "out")
    rec = pycolmap.Reconstruction(str(tmp_path / "cap" / "sparse" / "0"))
    nerfstudio_from_colmap(tmp_path / "cap", rec)
    _truncate(tmp_path / "cap" / "sparse_pc.ply", 5)
    with pytest.raises(BuildError, match="sparse_pc.ply.*truncated"):
        build_nerfstudio(tmp_path / "cap", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- known layouts


def test_tnt_and_mipnerf360_layouts(tmp_path):
    colmap_capture(tmp_path / "tnt_src" / "tandt" / "Truck", model="PINHOLE", params=[30.0, 31.0, 20.3, 14.8])
    # the Mip-NeRF 360 model is at 80x60 and only images_4 (20x15) is there
    colmap_capture(tmp_path / "m360" / "garden", model="SIMPLE_RADIAL", params=[60.0, 40.0, 30.0, -0.05],
                   model_size=(80, 60), folders={"images_4": (20, 15)})
    written = build_known("tnt", tmp_path / "tnt_src", ["truck"], out=tmp_path / "out")
    written += build_known("mipnerf360", tmp_path / "m360", ["garden"], out=tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == ["tnt/truck.tar", "mipnerf360/garden.tar"]
    garden = read_scene(tmp_path / "out", "mipnerf360", "garden")
    np.testing.assert_allclose(garden.frames[0].camera.K, [[15.0, 0, 10.0], [0, 15.0, 7.5], [0, 0, 1]])
    assert garden.meta["provenance"]["layout"] == "mipnerf360/colmap"
    assert read_scene(tmp_path / "out", "tnt", "truck").meta["provenance"]["dataset_spec"] == "tnt v1"
    with pytest.raises(BuildError, match="6 of 7 tnt scenes not found: barn, ignatius"):
        build_known("tnt", tmp_path / "tnt_src", out=tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


DL3DV_PARAMS = [3000.0, 3000.0, 1920.0, 1080.0, -0.02, 0.001, 0.0, 0.0]


def write_dl3dv_scene(scene_dir: Path, layout: str, scratch: Path) -> None:
    """A DL3DV scene at 960x540 images_4 from a 3840x2160 model: GenFusion's release (``nerfstudio/`` with
    ``colmap/sparse/0`` and ``images_4``), COLMAP in ``gaussian_splat/``, or ``transforms.json`` in
    ``nerfstudio/`` (its model then goes to ``scratch``)."""
    names = [f"frame_{k:05d}.png" for k in range(1, 4)]
    camera = make_camera("OPENCV", DL3DV_PARAMS, width=3840, height=2160)
    sub = scene_dir / {"genfusion": "nerfstudio", "colmap": "gaussian_splat", "nerfstudio": "nerfstudio"}[layout]
    model_dir = {"genfusion": sub / "colmap" / "sparse" / "0", "colmap": sub / "sparse" / "0",
                 "nerfstudio": scratch}[layout]
    rec = write_colmap(model_dir, [camera], names, ring_poses(3), *random_points())
    (sub / "images_4").mkdir(parents=True)
    for k, name in enumerate(names):
        Image.fromarray(np.full((540, 960, 3), 40 * k, np.uint8)).save(sub / "images_4" / name)
    if layout == "nerfstudio":
        nerfstudio_from_colmap(sub, rec)


def official_undistortion(raw: np.ndarray, K: np.ndarray, coefficients: list[float]):
    """GenFusion's colmap_debug.py, written out from its Parser and load_image_into_memory: float32
    coefficients, getOptimalNewCameraMatrix at alpha 0, initUndistortRectifyMap (CV_32FC1), remap (bilinear),
    crop to the ROI; K is the new matrix as it is."""
    import cv2

    height, width = raw.shape[:2]
    dist = np.array(coefficients, dtype=np.float32)
    new_K, (x, y, w, h) = cv2.getOptimalNewCameraMatrix(K, dist, (width, height), 0)
    map_x, map_y = cv2.initUndistortRectifyMap(K, dist, None, new_K, (width, height), cv2.CV_32FC1)
    return cv2.remap(raw, map_x, map_y, cv2.INTER_LINEAR)[y:y + h, x:x + w], new_K, (x, y, w, h)


@pytest.mark.parametrize("layout", ["genfusion", "colmap", "nerfstudio"])
def test_dl3dv_layouts_build_undistorted_as_the_official_code(tmp_path, layout):
    write_dl3dv_scene(tmp_path / "src" / "1K" / DL3DV_HASH, layout, tmp_path / "scratch")
    build_known("dl3dv", tmp_path / "src", [DL3DV_HASH], out=tmp_path / "out")
    scene = read_scene(tmp_path / "out", "dl3dv", DL3DV_HASH)
    raw = np.full((540, 960, 3), 40, np.uint8)
    K = np.array([[750.0, 0, 480.0], [0, 750.0, 270.0], [0, 0, 1]])  # the 3840x2160 model at 960x540
    image, new_K, (_, _, w, h) = official_undistortion(raw, K, DL3DV_PARAMS[4:])
    assert [(f.camera.width, f.camera.height) for f in scene.frames] == [(w, h)] * 3 and (w, h) != (960, 540)
    np.testing.assert_allclose(scene.frames[0].camera.K, new_K, rtol=1e-12)
    np.testing.assert_array_equal(scene.frames[1].image, image)
    assert scene.meta["provenance"]["layout"] == f"dl3dv/{layout}"
    assert scene.meta["provenance"]["undistort"] == "opencv-alpha0"
    build_known("dl3dv", tmp_path / "src", [DL3DV_HASH], out=tmp_path / "kept", undistort="keep-size")
    kept = read_scene(tmp_path / "kept", "dl3dv", DL3DV_HASH)
    assert [(f.camera.width, f.camera.height) for f in kept.frames] == [(960, 540)] * 3
    np.testing.assert_allclose(np.diag(kept.frames[0].camera.K), [750.0, 750.0, 1.0])
    for image in (tmp_path / "src").rglob("images_4/*.png"):  # images_8 sizes where images_4 should be
        Image.open(image).resize((480, 270)).save(image)
    with pytest.raises(BuildError, match="480x270, the dataset spec expects 960x540"):
        build_known("dl3dv", tmp_path / "src", [DL3DV_HASH], out=tmp_path / "out")


def smooth_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Low-frequency color waves: bilinear sampling differences stay well below a gray level."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [127 + 100 * np.sin(2 * np.pi * (a * u + b * v) + c) for a, b, c in rng.uniform(0.5, 2.0, (3, 3))]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def test_opencv_alpha0_undistortion_matches_opencv_on_a_fixture(tmp_path):
    """Golden test of the official option against OpenCV itself: the same new camera matrix and valid region
    as getOptimalNewCameraMatrix, pixels bit-equal to the official code's remap and within a gray level of
    cv2.undistort (which samples with fixed-point maps), observations where cv2.undistortPoints puts them,
    and the pixels whose bilinear sample leaves the raw image masked."""
    import cv2

    width, height = 160, 120
    params = [120.0, 122.0, 80.4, 59.6, -0.25, 0.06, 0.002, -0.003]
    camera = make_camera("OPENCV", params, width=width, height=height)
    names = ["a.png", "b.png"]
    rec = write_colmap(tmp_path / "cap" / "sparse" / "0", [camera], names, ring_poses(2), *random_points(60))
    (tmp_path / "cap" / "images").mkdir()
    raws = {name: smooth_image(width, height, seed) for seed, name in enumerate(names)}
    for name, raw in raws.items():
        Image.fromarray(raw).save(tmp_path / "cap" / "images" / name)
    build_colmap(tmp_path / "cap", out=tmp_path / "out", scene_id="cv", undistort="opencv-alpha0")
    scene = read_scene(tmp_path / "out", "custom", "cv")
    K, dist = camera.calibration_matrix(), np.array(params[4:], np.float32)
    for k, frame in enumerate(scene.frames):
        image, new_K, (x, y, w, h) = official_undistortion(raws[frame.name], K, params[4:])
        assert (frame.camera.width, frame.camera.height) == (w, h)
        np.testing.assert_array_equal(frame.camera.K, new_K)  # the principal point is not shifted by (x, y)
        np.testing.assert_array_equal(frame.image, image)
        fixed_point = cv2.undistort(raws[frame.name], K, dist, None, new_K)[y:y + h, x:x + w].astype(int)
        sourced = frame.mask if frame.mask is not None else np.ones((h, w), bool)
        difference = np.abs(fixed_point - frame.image)[sourced]
        assert difference.max() <= 2 and difference.mean() < 0.3
        # which pixels have a source, from the forward model (pycolmap-checked) rather than OpenCV's maps
        lens = Lens("OPENCV", width, height, *params[:4], radial=(params[4], params[5], 0, 0), tangential=tuple(params[6:]))
        u, v = np.meshgrid(np.arange(w) + x, np.arange(h) + y)
        xd, yd = distort(lens, (u - new_K[0, 2]) / new_K[0, 0], (v - new_K[1, 2]) / new_K[1, 1])
        su, sv = K[0, 0] * xd + K[0, 2], K[1, 1] * yd + K[1, 2]
        expected = (su >= 0) & (su <= width - 1) & (sv >= 0) & (sv <= height - 1)
        near_edge = np.minimum.reduce([np.abs(su), np.abs(su - width + 1), np.abs(sv), np.abs(sv - height + 1)]) < 1e-3
        assert (~expected).any() and ((sourced == expected) | near_edge).all()
        _, raw_uv = reference_observations(rec, frame.name)
        xyz, built_uv = scene_observations(scene, k)
        oracle = cv2.undistortPoints(raw_uv.reshape(-1, 1, 2), K, dist, None, None, new_K,
                                     (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)).reshape(-1, 2)
        np.testing.assert_allclose(built_uv, oracle, atol=2e-3)
    assert scene.meta["provenance"]["undistort"] == "opencv-alpha0"


def test_opencv_alpha0_refuses_what_opencv_cannot_model():
    from gfbench.builders.undistort import DistortionError, OpenCVAlpha0Undistorter

    with pytest.raises(DistortionError, match="r\\^8 term.*--undistort keep-size"):
        OpenCVAlpha0Undistorter(Lens("nerfstudio", W, H, 30.0, 30.0, 20.0, 15.0, radial=(0.0, 0.0, 0.0, 0.01)))
    pinhole = Lens("PINHOLE", W, H, 30.0, 30.0, 20.0, 15.0)
    raw = np.zeros((H, W, 3), np.uint8)
    undistorter = OpenCVAlpha0Undistorter(pinhole)
    assert undistorter.image(raw)[0] is raw and (undistorter.width, undistorter.height) == (W, H)


# ---------------------------------------------------------------- split files (ReconFusion's)


def write_split(folder: Path, n: int, train: list[int], test: list[int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"train_test_split_{n}.json"
    path.write_text(json.dumps({"train_ids": train, "test_ids": test}))
    return path


def test_mipnerf360_build_stores_the_split_files_of_the_scene_folder_or_of_splits(tmp_path):
    colmap_capture(tmp_path / "m360" / "garden", model="PINHOLE", params=[60.0, 60.0, 40.0, 30.0], frames=10,
                   model_size=(80, 60), folders={"images_4": (20, 15)})
    colmap_capture(tmp_path / "m360" / "room", model="PINHOLE", params=[60.0, 60.0, 40.0, 30.0], frames=10,
                   model_size=(80, 60), folders={"images_4": (20, 15)})
    path = write_split(tmp_path / "m360" / "garden", 3, [1, 4, 9], [0, 8])
    notes: list[str] = []
    build_known("mipnerf360", tmp_path / "m360", ["garden", "room"], out=tmp_path / "out", notes=notes)
    stored = read_scene(tmp_path / "out", "mipnerf360", "garden").meta["train_test_splits"]
    assert stored == {"3": {"train_ids": [1, 4, 9], "test_ids": [0, 8], "file": "train_test_split_3.json",
                            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}
    assert "train_test_splits" not in read_scene(tmp_path / "out", "mipnerf360", "room").meta
    assert len(notes) == 1 and notes[0].startswith("mipnerf360/room: no train_test_split_{n}.json")
    assert "drive.google.com" in notes[0]
    write_split(tmp_path / "reconfusion" / "room", 6, [1, 2, 3, 5, 6, 7], [0, 8])
    write_split(tmp_path / "reconfusion" / "room", 3, [1, 2, 3], [0, 8])
    build_known("mipnerf360", tmp_path / "m360", ["room"], out=tmp_path / "out", splits=tmp_path / "reconfusion")
    assert sorted(read_scene(tmp_path / "out", "mipnerf360", "room").meta["train_test_splits"]) == ["3", "6"]
    with pytest.raises(BuildError, match=r"reconfusion/garden: no split files for scene 'garden'"):
        build_known("mipnerf360", tmp_path / "m360", ["garden"], out=tmp_path / "out", splits=tmp_path / "reconfusion")


@pytest.mark.parametrize("content,message", [
    ({"train_ids": [1, 2, 40], "test_ids": [0]}, r"names frame 40, but the scene has 4 frames"),
    ({"train_ids": [1, 2], "test_ids": [0]}, r"2 train_ids in a 3-view split file"),
    ({"train_ids": [1, 2, 3], "test_ids": [0, 3]}, r"frame 3 is both a train and a test id"),
    ({"train_ids": [1, 2, 2], "test_ids": [0]}, r"train_ids must be a list of distinct frame indices"),
    ({"train_ids": [1, 2, 3]}, r"test_ids must be a list"),
])
def test_bad_split_files_are_refused_at_build_naming_the_file(tmp_path, content, message):
    colmap_capture(tmp_path / "cap")
    (tmp_path / "cap" / "train_test_split_3.json").write_text(json.dumps(content))
    with pytest.raises(BuildError, match=message) as info:
        build_colmap(tmp_path / "cap", out=tmp_path / "out")
    assert "train_test_split_3.json" in str(info.value)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the hub


def test_hub_offline_fails_fast_with_a_way_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(BuildError, match="HF_HUB_OFFLINE.*--source PATH"):
        download_dl3dv([DL3DV_HASH])
    assert time.monotonic() - start < 2


def _run_hub_download(endpoint: str, timeout: float, hf_home: Path) -> tuple[float, subprocess.CompletedProcess]:
    """``download_dl3dv`` in a fresh interpreter (huggingface_hub reads HF_* at import), hub mode on."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(hf_home))
    code = ("import sys\nfrom gfbench.builders.known import download_dl3dv\n"
            "from gfbench.builders.common import BuildError\n"
            f"try:\n    download_dl3dv(timeout={timeout})\nexcept BuildError as e:\n    print(e); sys.exit(3)\n")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    return time.monotonic() - start, result


def test_hub_unreachable_endpoint_fails_fast(tmp_path):
    elapsed, result = _run_hub_download("http://127.0.0.1:9", 5.0, tmp_path)
    assert result.returncode == 3, result.stderr
    assert "unreachable" in result.stdout and "--source PATH" in result.stdout and "127.0.0.1:9" in result.stdout
    assert elapsed < 8


def test_hub_that_never_answers_times_out(tmp_path):
    """Bounded by our probe's timeout (plus huggingface_hub's own 3 s agent-registry request)."""
    with socket.socket() as silent:  # the kernel accepts connections; nothing ever replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        elapsed, result = _run_hub_download(f"http://127.0.0.1:{silent.getsockname()[1]}", 1.0, tmp_path)
    assert result.returncode == 3, result.stderr
    assert "unreachable" in result.stdout and "Timeout" in result.stdout
    assert elapsed < 15


# ---------------------------------------------------------------- CLI


def cli() -> click.Group:
    group = click.Group("build-data")
    for command in (colmap_command, nerfstudio_command, dl3dv_command, tnt_command, mipnerf360_command):
        group.add_command(command)
    return group


def test_cli_builds_and_refuses(tmp_path):
    rec = colmap_capture(tmp_path / "my capture", frames=3)
    nerfstudio_from_colmap(tmp_path / "my capture", rec)
    runner = CliRunner()
    result = runner.invoke(cli(), ["colmap", str(tmp_path / "my capture"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and (tmp_path / "out" / "custom" / "my_capture.tar").exists()
    result = runner.invoke(cli(), ["nerfstudio", str(tmp_path / "my capture"), "--dataset", "mine", "--scene", "s1",
                                   "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert read_scene(tmp_path / "out", "mine", "s1").meta["provenance"]["layout"] == "nerfstudio"
    result = runner.invoke(cli(), ["colmap", str(tmp_path / "my capture"), "--images", "images_8",
                                   "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "images_8: image folder not found" in result.output
    result = runner.invoke(cli(), ["dl3dv", "--from-hub", "--out", str(tmp_path / "out")], env={"HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 1 and "--source PATH" in result.output
    result = runner.invoke(cli(), ["dl3dv", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--source" in result.output
    result = runner.invoke(cli(), ["mipnerf360", "--source", str(tmp_path), "--scene", "nowhere"])
    assert result.exit_code == 1 and "no scene 'nowhere'" in result.output


# ---------------------------------------------------------------- a capture filed under a specified dataset


def test_a_capture_cannot_replace_a_built_in_or_unlisted_scene(tmp_path):
    colmap_capture(tmp_path / "capture", frames=3)
    runner = CliRunner()
    out = ["--out", str(tmp_path / "out")]
    result = runner.invoke(cli(), ["colmap", str(tmp_path / "capture"), "--dataset", "synthetic", "--scene", "room", *out])
    assert result.exit_code == 1
    assert "dataset 'synthetic' is generated by 'gfbench build-data synthetic', not built from a capture" in result.output
    result = runner.invoke(cli(), ["colmap", str(tmp_path / "capture"), "--dataset", "tnt", "--scene", "mine", *out])
    assert result.exit_code == 1
    assert "tnt.yaml: dataset 'tnt' has no scene 'mine' (scenes: barn, ignatius" in result.output
    result = runner.invoke(cli(), ["colmap", str(tmp_path / "capture"), "--dataset", "dl3dv", "--scene", DL3DV_HASH, *out])
    assert result.exit_code == 1 and "image is 40x30, the dataset spec expects 960x540" in result.output
    assert not (tmp_path / "out").exists()
    # a listed scene of a dataset without a size or frozen splits, and any id without a spec, are taken
    result = runner.invoke(cli(), ["colmap", str(tmp_path / "capture"), "--dataset", "tnt", "--scene", "barn", *out])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli(), ["colmap", str(tmp_path / "capture"), "--scene", "anything", *out])
    assert result.exit_code == 0, result.output


def test_a_capture_must_have_the_frames_its_frozen_splits_were_made_from(tmp_path, monkeypatch):
    from gfbench import specs
    from gfbench.splits import freeze_split, write_frozen_split

    spec_dir = tmp_path / "specs"
    (spec_dir / "suites").mkdir(parents=True)
    (spec_dir / "mini.yaml").write_text("id: mini\nkind: dataset\nversion: 1\nlayout: colmap\nscenes: [s1]\n")
    protocol = specs.load_suite("synthetic-masked").protocol  # read before the specs folder moves
    suite = {"id": "mini-masked", "kind": "suite", "version": 1, "dataset": "mini", "protocol": protocol,
             "metrics": ["psnr"]}
    (spec_dir / "suites" / "mini-masked.yaml").write_text(json.dumps(suite))
    monkeypatch.setenv("GFBENCH_SPECS", str(spec_dir))
    colmap_capture(tmp_path / "six", frames=6)
    build_colmap(tmp_path / "six", out=tmp_path / "out", dataset="mini", scene_id="s1")  # no split yet: taken
    suite = specs.load_suite("mini-masked")
    write_frozen_split(freeze_split(suite, read_scene(tmp_path / "out", "mini", "s1")), suite.splits_dir)
    split_file = spec_dir / "splits" / "mini-masked" / "s1.json"

    build_colmap(tmp_path / "six", out=tmp_path / "out", dataset="mini", scene_id="s1")  # the same capture again
    colmap_capture(tmp_path / "four", frames=4)
    with pytest.raises(BuildError, match=rf"mini/s1: the capture has 4 frames, but {split_file} was frozen from 6"):
        build_colmap(tmp_path / "four", out=tmp_path / "out", dataset="mini", scene_id="s1")
    renamed = tmp_path / "renamed"
    colmap_capture(renamed, frames=6)
    for image in sorted((renamed / "images").iterdir()):
        image.rename(image.with_name(image.name.replace("frame_", "shot_")))
    rec = pycolmap.Reconstruction(str(renamed / "sparse" / "0"))
    for image in rec.images.values():
        image.name = image.name.replace("frame_", "shot_")
    rec.write_binary(str(renamed / "sparse" / "0"))
    with pytest.raises(BuildError, match=rf"lacks frame 'frame_000.png' named in {split_file} \(6 missing\)"):
        build_colmap(renamed, out=tmp_path / "out", dataset="mini", scene_id="s1")
    assert build_colmap(renamed, out=tmp_path / "out", dataset="custom", scene_id="s1").exists()
