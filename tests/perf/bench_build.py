"""Build throughput of the COLMAP builder: frames per second on a synthetic capture.

Not a pytest module (pytest collects ``test_*.py`` only). Run:

    OMP_NUM_THREADS=2 .venv/bin/python tests/perf/bench_build.py [--frames 300] [--width 480 --height 270]

Writes a COLMAP capture (binary model written with pycolmap, JPEG images of smooth random texture, points
with tracks) once per camera model (PINHOLE, then OPENCV, which is undistorted at build time), then times
the stages of a build: reading the model, assembling the scene (decode, undistort) and writing the shard.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pycolmap
from PIL import Image

from gfbench.builders.colmap import find_model, read_colmap_capture
from gfbench.builders.common import assemble_scene
from gfbench.camera import look_at
from gfbench.shards import write_scene


def smooth_texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    coarse = Image.fromarray(rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8))
    return np.asarray(coarse.resize((width, height), Image.BICUBIC))


def write_capture(root: Path, model: str, frames: int, width: int, height: int, points: int) -> None:
    rng = np.random.default_rng(0)
    focal = 0.8 * width
    params = [focal, focal, width / 2, height / 2]
    if model == "OPENCV":
        params += [-0.08, 0.01, 0.001, -0.001]
    rec = pycolmap.Reconstruction()
    camera = pycolmap.Camera(model=model, width=width, height=height, params=params, camera_id=1)
    rec.add_camera_with_trivial_rig(camera)
    xyz = rng.uniform([-2, -2, -1], [2, 2, 1], (points, 3))
    tracks: dict[int, list[tuple[int, int]]] = {}
    (root / "images").mkdir(parents=True)
    for k in range(frames):
        angle = 2 * np.pi * k / frames
        c2w = look_at(np.array([6 * np.cos(angle), 6 * np.sin(angle), 1.0]), np.zeros(3))
        w2c = np.linalg.inv(c2w)[:3]
        cam_points = xyz @ w2c[:, :3].T + w2c[:, 3]
        uv = camera.img_from_cam(cam_points)
        seen = np.flatnonzero((cam_points[:, 2] > 0.1) & (uv[:, 0] > 0) & (uv[:, 0] < width) & (uv[:, 1] > 0)
                              & (uv[:, 1] < height) & (rng.random(points) < 0.05))
        name = f"frame_{k:05d}.jpg"
        rec.add_image_with_trivial_frame(pycolmap.Image(name=name, keypoints=uv[seen], camera_id=1, image_id=k + 1),
                                         pycolmap.Rigid3d(w2c))
        for keypoint, point in enumerate(seen):
            tracks.setdefault(int(point), []).append((k + 1, keypoint))
        Image.fromarray(smooth_texture(rng, width, height)).save(root / "images" / name, quality=90)
    for point, track in sorted(tracks.items()):
        point_id = rec.add_point3D(xyz[point], pycolmap.Track(), rng.integers(0, 256, 3).astype(np.uint8))
        for image_id, keypoint in track:
            rec.add_observation(point_id, pycolmap.TrackElement(image_id, keypoint))
    (root / "sparse" / "0").mkdir(parents=True)
    rec.write_binary(str(root / "sparse" / "0"))


def bench(root: Path, out: Path) -> dict[str, float]:
    start = time.perf_counter()
    capture = read_colmap_capture(find_model(root), root / "images", root)
    read = time.perf_counter()
    scene = assemble_scene("bench", root.name, capture)
    assembled = time.perf_counter()
    write_scene(scene, out)
    written = time.perf_counter()
    return {"frames": len(scene.frames), "observations": len(scene.points.obs_point), "read_s": read - start,
            "assemble_s": assembled - read, "write_s": written - assembled, "total_s": written - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=270)
    parser.add_argument("--points", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for model in ("PINHOLE", "OPENCV"):
            root = Path(tmp) / model.lower()
            write_capture(root, model, args.frames, args.width, args.height, args.points)
            r = bench(root, Path(tmp) / "out")
            print(f"{model:8s} {r['frames']} frames {args.width}x{args.height}, {r['observations']} observations: "
                  f"{r['frames'] / r['total_s']:.1f} frames/s overall (read {r['read_s']:.2f} s, "
                  f"decode+undistort {r['assemble_s']:.2f} s = {r['frames'] / r['assemble_s']:.0f} frames/s, "
                  f"write shard {r['write_s']:.2f} s)")


if __name__ == "__main__":
    main()
