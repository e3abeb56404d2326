"""Frame order: numbers inside names compare as numbers (``2.png`` before ``10.png``) in scenes, shards and
frozen splits, while zero-padded names keep plain sorted order exactly (golden checks on the names the
synthetic scenes, the COLMAP fixtures and the benchmark datasets use)."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest

from gfbench import scene as scene_module
from gfbench import specs
from gfbench.builders.colmap import build_colmap
from gfbench.paths import splits_root
from gfbench.scene import natural_key, natural_sorted
from gfbench.shards import ShardError, read_scene, write_scene
from gfbench.splits import freeze_split
from helpers import tiny_scene
from test_builders import W, H, make_camera, random_points, ring_poses, write_colmap, write_images


def test_numbers_inside_names_compare_as_numbers():
    names = [f"{i}.jpg" for i in range(1, 78)]
    shuffled = random.Random(0).sample(names, len(names))
    assert natural_sorted(shuffled) == names
    assert sorted(shuffled)[:4] == ["1.jpg", "10.jpg", "11.jpg", "12.jpg"]  # what plain sorting did
    assert natural_sorted(["img10_b2.png", "img10_b10.png", "img9_b1.png", "IMG1.png"]) == \
        ["IMG1.png", "img9_b1.png", "img10_b2.png", "img10_b10.png"]
    assert natural_sorted(["01.png", "1.png", "001.png"]) == ["001.png", "01.png", "1.png"]  # ties: plain order
    assert natural_key("a1") < natural_key("a1.png") < natural_key("a2")


def frozen_frames(suite_id: str) -> list[list[tuple[int, str]]]:
    """(frame index, name) of every frozen split of a suite, each list in frame-index order."""
    out = []
    for path in sorted((splits_root() / suite_id).glob("*.json")):
        frozen = json.loads(path.read_text())
        for entry in frozen["splits"]:
            items = sorted(entry["train"] + entry["test"], key=lambda item: item["index"])
            out.append([(item["index"], item["name"]) for item in items])
    return out


GOLDEN_NAME_SETS = {
    "synthetic": [f"frame_{k:05d}.png" for k in range(48)],
    "colmap fixture": [f"frame_{k:03d}.png" for k in range(12)],
    "dl3dv": [f"frame_{k:05d}.png" for k in range(1, 301)],
    "tnt": [f"{k:06d}.jpg" for k in range(1, 400)],
    "mipnerf360": [f"DSC{k:05d}.JPG" for k in range(7956, 8151)],
    "nerfstudio": [f"images/frame_{k:05d}.jpg" for k in range(1, 160)],
}


@pytest.mark.parametrize("label", sorted(GOLDEN_NAME_SETS))
def test_zero_padded_names_keep_plain_sorted_order(label):
    names = GOLDEN_NAME_SETS[label]
    shuffled = random.Random(1).sample(names, len(names))
    assert natural_sorted(shuffled) == sorted(shuffled) == sorted(names)


def test_zero_padded_names_of_random_shapes_keep_plain_sorted_order():
    rng = random.Random(2)
    for _ in range(200):
        width, prefix = rng.randint(1, 6), rng.choice(["", "frame_", "IMG", "a1b_", "x.y-"])
        numbers = rng.sample(range(10 ** width), min(40, 10 ** width))
        names = [f"{prefix}{n:0{width}d}{rng.choice(['.png', '.jpg', '_0.png'])}" for n in numbers]
        assert natural_sorted(names) == sorted(names)


def test_the_frozen_synthetic_splits_are_in_plain_and_natural_order():
    for suite_id in ("synthetic-masked", "synthetic-masked-4x", "synthetic-sparse-3"):
        for frames in frozen_frames(suite_id):
            names = [name for _, name in frames]
            assert names == sorted(names) == natural_sorted(names)
            assert all(GOLDEN_NAME_SETS["synthetic"][index] == name for index, name in frames)


def unpadded_capture(root, names):
    cameras = [make_camera("PINHOLE", [30.0, 31.0, W / 2, H / 2])]
    xyz, rgb = random_points()
    write_colmap(root / "sparse" / "0", cameras, names, ring_poses(len(names)), xyz, rgb)
    write_images(root / "images", names, (W, H))


def test_a_capture_named_1_to_12_is_built_and_split_in_natural_order(tmp_path):
    plain = [f"{k}.png" for k in range(1, 13)]
    padded = [f"{k:02d}.png" for k in range(1, 13)]  # the same capture, named so that both orders agree
    unpadded_capture(tmp_path / "plain", plain)
    unpadded_capture(tmp_path / "padded", padded)
    build_colmap(tmp_path / "plain", out=tmp_path / "data", scene_id="plain")
    build_colmap(tmp_path / "padded", out=tmp_path / "data", scene_id="padded")
    a, b = read_scene(tmp_path / "data", "custom", "plain"), read_scene(tmp_path / "data", "custom", "padded")
    assert a.frame_names == plain
    for fa, fb in zip(a.frames, b.frames):  # frame k is the same picture and camera in both
        np.testing.assert_array_equal(fa.image, fb.image)
        np.testing.assert_array_equal(fa.camera.c2w, fb.camera.c2w)
    np.testing.assert_array_equal(a.points.obs_frame, b.points.obs_frame)
    np.testing.assert_array_equal(a.points.obs_uv, b.points.obs_uv)

    frozen = freeze_split(dataclasses.replace(specs.load_suite("synthetic-masked"), dataset="custom"), a)
    train = [item["name"] for item in frozen["splits"][0]["train"]]
    assert train == plain[::2] == ["1.png", "3.png", "5.png", "7.png", "9.png", "11.png"]


def test_a_shard_stored_in_plain_string_order_is_refused(tmp_path, monkeypatch):
    names_scene = tiny_scene(frames=12)
    for k, frame in enumerate(names_scene.frames):
        frame.name = f"{k + 1}.png"
    monkeypatch.setattr(scene_module, "natural_key", lambda name: name)  # what an older gfbench did
    write_scene(names_scene, tmp_path)
    monkeypatch.undo()
    with pytest.raises(ShardError, match=r"tiny\.tar: frames are not stored in natural name order .* rebuild"):
        read_scene(tmp_path, "testset", "tiny")
