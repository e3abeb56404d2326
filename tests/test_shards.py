import errno
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from gfbench import shards
from gfbench.shards import MANIFEST, ShardError, list_built_scenes, read_scene, write_scene
from gfbench.storage import DiskFull
from helpers import tiny_scene


def assert_same_scene(a, b):
    assert a.key == b.key and a.frame_names == b.frame_names and a.meta == b.meta
    for fa, fb in zip(a.frames, b.frames):
        np.testing.assert_array_equal(fa.image, fb.image)
        np.testing.assert_array_equal(fa.camera.K, fb.camera.K)
        np.testing.assert_array_equal(fa.camera.c2w, fb.camera.c2w)
        assert (fa.camera.width, fa.camera.height) == (fb.camera.width, fb.camera.height)
        for x, y in ((fa.depth, fb.depth), (fa.mask, fb.mask)):
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_array_equal(x, y)
    for name in ("xyz", "rgb", "obs_point", "obs_frame", "obs_uv"):
        np.testing.assert_array_equal(getattr(a.points, name), getattr(b.points, name))


def test_round_trip_keeps_pixels_cameras_depth_masks_points(tmp_path):
    scene = tiny_scene(mask=True)
    write_scene(scene, tmp_path)
    assert_same_scene(scene, read_scene(tmp_path, "testset", "tiny"))
    assert list_built_scenes(tmp_path, "testset") == ["tiny"]


def test_frames_come_back_sorted_by_name(tmp_path):
    scene = tiny_scene(frames=5)
    scene.frames.reverse()  # whatever order a builder produced
    write_scene(scene, tmp_path)
    back = read_scene(tmp_path, "testset", "tiny")
    assert back.frame_names == sorted(back.frame_names)


def test_manifest_records_counts_and_sha256(tmp_path):
    shard = write_scene(tiny_scene(frames=3), tmp_path)
    manifest = json.loads((tmp_path / "testset" / MANIFEST).read_text())
    entry = manifest["scenes"]["tiny"]
    assert entry["frames"] == 3 and entry["points"] == 20 and entry["samples"] == 4
    assert entry["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()


def test_altered_shard_is_an_error_naming_it(tmp_path):
    shard = write_scene(tiny_scene(), tmp_path)
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"tiny\.tar.*sha256"):
        read_scene(tmp_path, "testset", "tiny")


def test_truncated_shard_is_an_error_naming_it(tmp_path):
    shard = write_scene(tiny_scene(), tmp_path)
    shard.write_bytes(shard.read_bytes()[:-2048])
    with pytest.raises(ShardError, match=r"tiny\.tar.*truncated"):
        read_scene(tmp_path, "testset", "tiny")


def test_missing_scene_and_missing_manifest_are_clear(tmp_path):
    with pytest.raises(ShardError, match="no manifest"):
        read_scene(tmp_path, "testset", "tiny")
    write_scene(tiny_scene(), tmp_path)
    with pytest.raises(ShardError, match="no scene 'other'"):
        read_scene(tmp_path, "testset", "other")


def test_rewrite_is_byte_identical_and_leaves_no_temp_files(tmp_path):
    first = write_scene(tiny_scene(), tmp_path).read_bytes()
    second = write_scene(tiny_scene(), tmp_path).read_bytes()
    assert first == second
    assert not [p for p in (tmp_path / "testset").iterdir() if p.name.endswith(".tmp")]


def test_two_scenes_share_a_manifest(tmp_path):
    write_scene(tiny_scene(scene_id="a"), tmp_path)
    write_scene(tiny_scene(scene_id="b", seed=1), tmp_path)
    assert list_built_scenes(tmp_path, "testset") == ["a", "b"]
    assert read_scene(tmp_path, "testset", "a").frames[0].image.tobytes() != read_scene(tmp_path, "testset", "b").frames[0].image.tobytes()


def test_one_scene_is_one_shard_with_scene_sample_last(tmp_path):
    shard = write_scene(tiny_scene(frames=3), tmp_path)
    with tarfile.open(shard) as tar:
        names = tar.getnames()
    assert names[-2:] == ["testset/tiny/__scene__.scene.json", "testset/tiny/__scene__.points.npz"]
    assert names[0] == "testset/tiny/img_000.image.png"


def test_bad_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="scene id"):
        write_scene(tiny_scene(scene_id="a/b"), tmp_path)


def test_loads_with_webdataset(tmp_path):
    import webdataset as wds

    scene = tiny_scene(frames=3)
    shard = write_scene(scene, tmp_path)
    samples = list(wds.WebDataset(str(shard), shardshuffle=False).decode("rgb8"))
    frames = [s for s in samples if "image.png" in s]
    assert [s["__key__"] for s in frames] == [f"testset/tiny/img_{i:03d}" for i in range(3)]
    np.testing.assert_array_equal(frames[1]["image.png"], scene.frames[1].image)
    assert frames[1]["camera.json"]["name"] == "img_001.jpg"
    np.testing.assert_array_equal(frames[2]["depth.npy"], scene.frames[2].depth)
    points = [s for s in samples if "points.npz" in s][0]["points.npz"]
    np.testing.assert_array_equal(points["xyz"], scene.points.xyz)


def test_loads_with_hugging_face_datasets(tmp_path):
    import datasets

    scene = tiny_scene(frames=6)
    shard = write_scene(scene, tmp_path)
    loaded = datasets.load_dataset("webdataset", data_files={"train": str(shard)}, split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
    frames = [row for row in loaded if row["image.png"] is not None]
    assert len(frames) == 6
    np.testing.assert_array_equal(np.array(frames[4]["image.png"].convert("RGB")), scene.frames[4].image)
    assert frames[4]["camera.json"]["K"] == scene.frames[4].camera.K.tolist()
    depth = np.load(io.BytesIO(frames[0]["depth.npy"])) if isinstance(frames[0]["depth.npy"], bytes) else np.asarray(frames[0]["depth.npy"])
    np.testing.assert_allclose(depth, scene.frames[0].depth)


def test_source_jpeg_is_stored_as_captured_and_reads_back_exactly(tmp_path):
    from PIL import Image

    scene = tiny_scene(frames=2, width=32, height=24)
    buffer = io.BytesIO()
    Image.fromarray(scene.frames[0].image).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    decoded = np.array(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    scene.frames[0].image, scene.frames[0].source_jpeg = decoded, jpeg
    scene.frames[1].source_jpeg = jpeg  # not this frame's pixels: must fall back to PNG
    shard = write_scene(scene, tmp_path)
    with tarfile.open(shard) as tar:
        names = tar.getnames()
        assert tar.extractfile("testset/tiny/img_000.image.jpg").read() == jpeg
    assert "testset/tiny/img_001.image.png" in names
    back = read_scene(tmp_path, "testset", "tiny")
    np.testing.assert_array_equal(back.frames[0].image, decoded)
    np.testing.assert_array_equal(back.frames[1].image, scene.frames[1].image)


# ---------------------------------------------------------------- crash consistency and a full disk


def leftovers(root, dataset="testset"):
    return sorted(p.name for p in (root / dataset).iterdir() if p.name.startswith(".") and p.suffix == ".tmp")


def first_pixels(root, scene_id="tiny"):
    return read_scene(root, "testset", scene_id).frames[0].image.tobytes()


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_the_shard_keeps_the_old_one(tmp_path, monkeypatch):
    write_scene(tiny_scene(seed=0), tmp_path)
    old = first_pixels(tmp_path)
    original = shards._write_tar

    def half_then_full(path, members):
        original(path, members[: len(members) // 2])  # half a shard reached the disk
        no_space()

    monkeypatch.setattr(shards, "_write_tar", half_then_full)
    with pytest.raises(DiskFull) as caught:
        write_scene(tiny_scene(seed=1), tmp_path)
    assert str(caught.value) == (f"{tmp_path / 'testset' / 'tiny.tar'}: disk full (no space left on device) while "
                                 "writing the shard; nothing was changed (an earlier shard of the scene is intact)")
    assert first_pixels(tmp_path) == old and leftovers(tmp_path) == []


@pytest.mark.parametrize("failing_call", [1, 2])
def test_disk_full_while_writing_the_manifest_leaves_a_whole_scene(tmp_path, monkeypatch, failing_call):
    """Call 1 records the new shard as pending (before it is renamed into place), call 2 commits it."""
    write_scene(tiny_scene(seed=0), tmp_path)
    old, calls, original = first_pixels(tmp_path), [], shards._update_manifest

    def update(*args, **kwargs):
        calls.append(1)
        if len(calls) == failing_call:
            no_space()
        return original(*args, **kwargs)

    monkeypatch.setattr(shards, "_update_manifest", update)
    with pytest.raises(DiskFull, match=r"manifest\.json: disk full .* while writing the manifest"):
        write_scene(tiny_scene(seed=1), tmp_path)
    monkeypatch.setattr(shards, "_update_manifest", original)
    new = tiny_scene(seed=1).frames[0].image.tobytes()
    assert first_pixels(tmp_path) == (old if failing_call == 1 else new)
    assert list_built_scenes(tmp_path, "testset") == ["tiny"] and leftovers(tmp_path) == []
    write_scene(tiny_scene(scene_id="other"), tmp_path)  # the next build settles what the crash left
    manifest = json.loads((tmp_path / "testset" / MANIFEST).read_text())
    assert shards.PENDING not in manifest and sorted(manifest["scenes"]) == ["other", "tiny"]
    assert first_pixels(tmp_path) == (old if failing_call == 1 else new)


def test_a_new_scene_is_not_listed_until_its_shard_is_in_place(tmp_path, monkeypatch):
    write_scene(tiny_scene(scene_id="a"), tmp_path)
    monkeypatch.setattr(shards.os, "replace", no_space)  # the rename never happens
    with pytest.raises(OSError):
        write_scene(tiny_scene(scene_id="b"), tmp_path)
    monkeypatch.undo()
    assert list_built_scenes(tmp_path, "testset") == ["a"]
    with pytest.raises(ShardError, match="no scene 'b'"):
        read_scene(tmp_path, "testset", "b")


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, sys.argv[3])
from gfbench import shards
from helpers import tiny_scene
point = sys.argv[2]
original_replace, original_sync = shards.os.replace, shards._sync_directory
renamed = []
def replace(src, dst):
    if str(dst).endswith(".tar"):
        if point == "before-rename":  # the manifest already lists the new shard as pending
            os.kill(os.getpid(), signal.SIGKILL)
        renamed.append(dst)
    original_replace(src, dst)
def sync(directory):
    original_sync(directory)
    if point == "after-rename" and renamed:  # the new shard is in place, its entry still pending
        os.kill(os.getpid(), signal.SIGKILL)
shards.os.replace, shards._sync_directory = replace, sync
shards.write_scene(tiny_scene(seed=1, scene_id=sys.argv[4]), sys.argv[1])
"""


@pytest.mark.parametrize("scene_id", ["tiny", "fresh"])
@pytest.mark.parametrize("point", ["before-rename", "after-rename"])
def test_sigkill_at_any_point_of_a_build_leaves_the_old_scene_or_the_new_one(tmp_path, point, scene_id):
    write_scene(tiny_scene(seed=0), tmp_path)
    old = first_pixels(tmp_path)
    child = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path), point, str(Path(__file__).parent),
                            scene_id], capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stderr
    new = tiny_scene(seed=1).frames[0].image.tobytes()
    if point == "before-rename":
        assert first_pixels(tmp_path) == old and list_built_scenes(tmp_path, "testset") == ["tiny"]
    else:
        assert first_pixels(tmp_path, scene_id) == new
        assert list_built_scenes(tmp_path, "testset") == sorted({"tiny", scene_id})
        if scene_id != "tiny":
            assert first_pixels(tmp_path) == old
