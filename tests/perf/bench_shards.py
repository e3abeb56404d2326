"""Shard write/read throughput against the same frames as loose PNG and JPEG files.

Run: OMP_NUM_THREADS=2 .venv/bin/python tests/perf/bench_shards.py [--frames 200] [--width 960 --height 540]
Measured side by side in one run; compare the ratios, not the absolute times (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from gfbench.camera import Camera, intrinsics, look_at
from gfbench.scene import Frame, Scene
from gfbench.shards import read_scene, write_scene


def photo_like_frames(count: int, width: int, height: int) -> list[Frame]:
    """Frames cut from scikit-image photographs (compressible like real captures, unlike noise)."""
    import skimage.data
    from skimage.transform import resize

    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    K = intrinsics(width, width, width / 2, height / 2)
    frames = []
    for i in range(count):
        base = resize(sources[i % len(sources)], (height + 40, width + 40), preserve_range=True).astype(np.uint8)
        dy, dx = i % 40, (3 * i) % 40
        image = np.ascontiguousarray(base[dy : dy + height, dx : dx + width])
        frames.append(Frame(f"frame_{i:05d}.png", image, Camera(K, look_at([i * 0.01, -3, 1], [0, 0, 0]), width, height)))
    return frames


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def write_loose(frames: list[Frame], folder: Path, suffix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for frame in frames:
        options = {"quality": 95} if suffix == ".jpg" else {"compress_level": 1}
        Image.fromarray(frame.image).save(folder / f"{Path(frame.name).stem}{suffix}", **options)
        (folder / f"{Path(frame.name).stem}.json").write_text(json.dumps(frame.camera.to_json()))


def read_loose(folder: Path, suffix: str) -> list[np.ndarray]:
    out = []
    for path in sorted(folder.glob(f"*{suffix}")):
        out.append(np.asarray(Image.open(path).convert("RGB")))
        json.loads(path.with_suffix(".json").read_text())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--width", type=int, default=960)
    parser.add_argument("--height", type=int, default=540)
    args = parser.parse_args()
    frames = photo_like_frames(args.frames, args.width, args.height)
    scene = Scene("bench", "photos", frames)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = {
            "shard write": timed(lambda: write_scene(scene, tmp / "shards")),
            "shard read (verified)": timed(lambda: read_scene(tmp / "shards", "bench", "photos")),
            "loose PNG write": timed(lambda: write_loose(frames, tmp / "png", ".png")),
            "loose PNG read": timed(lambda: read_loose(tmp / "png", ".png")),
            "loose JPEG write": timed(lambda: write_loose(frames, tmp / "jpg", ".jpg")),
            "loose JPEG read": timed(lambda: read_loose(tmp / "jpg", ".jpg")),
        }
        size = {
            "shard": (tmp / "shards" / "bench" / "photos.tar").stat().st_size,
            "loose PNG": sum(p.stat().st_size for p in (tmp / "png").iterdir()),
            "loose JPEG": sum(p.stat().st_size for p in (tmp / "jpg").iterdir()),
        }
    print(f"{args.frames} frames at {args.width}x{args.height}")
    for name, seconds in rows.items():
        print(f"  {name:24s} {args.frames / seconds:7.1f} frames/s  ({seconds:.2f} s)")
    for name, nbytes in size.items():
        print(f"  {name:24s} {nbytes / 2**20:7.1f} MiB")
    print(f"  shard read / loose PNG read speed: {rows['loose PNG read'] / rows['shard read (verified)']:.2f}x")
    print(f"  shard write / loose PNG write speed: {rows['loose PNG write'] / rows['shard write']:.2f}x")


if __name__ == "__main__":
    main()
