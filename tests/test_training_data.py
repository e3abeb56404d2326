"""Diffusion training data (issue 15): procedural training scenes disjoint from the evaluation scenes, and
corner-masked reconstruction clips as shards (round trip, resume, no evaluation frame inside)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import yaml

from gfbench import clips, methods, specs
from gfbench.data import build_synthetic, load_scene
from gfbench.methods import Render
from gfbench.synthetic import camera_path, procedural_scene, render_frame, build_surfaces

CALLS: list[tuple[str, int]] = []


class MeanColor:
    """A cheap stand-in reconstruction: renders the train views' mean color and a constant depth."""

    name = "mean-color"

    def __init__(self, device: str = "cpu"):
        self.color = None

    def fit(self, train_views, *, points, config, seed, workdir, progress=None):
        CALLS.append((train_views[0].name, seed))
        self.color = np.mean([v.image.reshape(-1, 3).mean(0) for v in train_views], axis=0) / 255.0
        self.seed = seed

    def render(self, cameras):
        return [Render(rgb=np.broadcast_to(self.color, (c.height, c.width, 3)).astype(np.float32),
                       depth=np.full((c.height, c.width), 2.0 + self.seed, np.float32)) for c in cameras]


class CrashesOnSceneB(MeanColor):
    def fit(self, train_views, *, points, config, seed, workdir, progress=None):
        if len(CALLS) >= 2:  # scene a's two seeds are done: crash on scene b
            raise RuntimeError("injected crash")
        super().fit(train_views, points=points, config=config, seed=seed, workdir=workdir, progress=progress)


def tiny_training_world(tmp_path, monkeypatch) -> dict:
    """``train-tiny``: the real synthetic-train generator settings on 2 scenes of 20 frames at 32x20, and a
    corner suite over it cutting clips of 16 frames every 4."""
    real = specs.load_dataset("synthetic-train")
    spec_dir = tmp_path / "specs"
    (spec_dir / "suites").mkdir(parents=True)
    options = {**real.options, "frames": 20, "points_per_scene": 300}
    dataset = {"id": "train-tiny", "kind": "dataset", "version": 1, "layout": "synthetic",
               "resolution": {"width": 32, "height": 20}, "options": options, "scenes": ["train-000", "train-001"]}
    (spec_dir / "train-tiny.yaml").write_text(yaml.safe_dump(dataset))
    suite = yaml.safe_load(specs.load_suite("synthetic-train-corner").path.read_text())
    suite.update(id="train-tiny-corner", dataset="train-tiny", seeds=[0, 1])
    suite["protocol"]["clip"] = {"frames": 16, "width": 32, "height": 20, "stride": 4}
    (spec_dir / "suites" / "train-tiny-corner.yaml").write_text(yaml.safe_dump(suite))
    monkeypatch.setenv("GFBENCH_SPEC_PATH", str(spec_dir))
    table = {"mean-color": f"{__name__}:MeanColor", "crashes": f"{__name__}:CrashesOnSceneB"}
    monkeypatch.setattr(methods, "_entry_points", lambda: table)
    CALLS.clear()
    data = tmp_path / "data"
    build_synthetic(data, dataset="train-tiny")
    return {"data": data, "suite": specs.load_suite("train-tiny-corner"), "out": tmp_path / "clips",
            "options": options}


def _hash(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


# ---------------------------------------------------------------- the training scenes


def test_training_set_has_24_procedural_scenes_sharing_no_layout_with_evaluation():
    train, evaluation = specs.load_dataset("synthetic-train"), specs.load_dataset("synthetic")
    assert len(train.scenes) >= 24
    assert train.options["seed"] != evaluation.options["seed"]
    declared = [procedural_scene(s, train.options) for s in train.scenes]
    eval_specs = [evaluation.options["scenes"][s] for s in evaluation.scenes]
    for scene in declared:
        for other in eval_specs:
            assert scene["primitives"] != other["primitives"] and scene["path"] != other["path"]
    layouts = {json.dumps(s["primitives"], sort_keys=True) for s in declared}
    assert len(layouts) == len(declared)  # every training scene is its own layout
    assert procedural_scene("train-003", train.options) == declared[3]  # drawn from the seed, reproducibly


def test_a_scene_neither_declared_nor_procedural_is_a_clear_error():
    from gfbench.synthetic import scene_spec_of

    with pytest.raises(ValueError, match="'nope' is neither declared"):
        scene_spec_of("nope", specs.load_dataset("synthetic").options)


def test_no_evaluation_scene_or_frame_reaches_the_training_clips(tmp_path, monkeypatch):
    world = tiny_training_world(tmp_path, monkeypatch)
    clips.build_clips(world["suite"], world["out"], method="mean-color", data=world["data"])
    built = clips.read_clip_folder(world["out"])
    assert {c.info["dataset"] for c in built} == {"train-tiny"}
    clip_frames = {_hash(f) for c in built for f in (*c.target_rgb, c.reference)}
    # the oracle: every evaluation scene rendered exactly as the training scenes are (same size, frames, rays)
    evaluation = specs.load_dataset("synthetic")
    options = world["options"]
    from gfbench.camera import Camera, intrinsics

    focal = 0.5 * 32 / np.tan(np.radians(options["fov_x_degrees"]) / 2)
    K = intrinsics(focal, focal, 16, 10)
    eval_poses, eval_frames = [], set()
    for scene_id in evaluation.scenes:
        declared = evaluation.options["scenes"][scene_id]
        surfaces = build_surfaces(declared["primitives"])
        for c2w in camera_path(declared["path"], options["frames"]):
            eval_poses.append(c2w)
            image, _ = render_frame(surfaces, Camera(K, c2w, 32, 20), options["supersample"], options["lighting"])
            eval_frames.add(_hash(image))
    assert not clip_frames & eval_frames
    train_scene = load_scene("train-tiny", "train-000", world["data"])
    assert {_hash(f.image) for f in train_scene.frames} & clip_frames  # the hashes do see training frames
    for scene_id in ("train-000", "train-001"):
        for frame in load_scene("train-tiny", scene_id, world["data"]).frames:
            distance = min(np.abs(frame.camera.c2w - pose).max() for pose in eval_poses)
            assert distance > 1e-3


# ---------------------------------------------------------------- clips


def test_clip_shards_round_trip(tmp_path, monkeypatch):
    world = tiny_training_world(tmp_path, monkeypatch)
    written = clips.build_clips(world["suite"], world["out"], method="mean-color", data=world["data"])
    assert [p.name for p in written] == ["train-000.tar", "train-001.tar"]
    scene = load_scene("train-tiny", "train-000", world["data"])
    back = clips.read_clips(world["out"], "train-000")
    assert len(back) == 2 * 2  # two seeds x windows starting at frames 0 and 4
    settings = clips.ClipSettings.from_protocol(world["suite"].protocol, "test")
    for seed in (0, 1):
        method = MeanColor()
        from gfbench.splits import split_for_run

        split = split_for_run(world["suite"], scene, seed=seed)
        method.fit(split.train, points=None, config={}, seed=seed, workdir=tmp_path)
        expected = clips.make_clips(scene, method.render([f.camera for f in scene.frames]), settings, seed=seed,
                                    info={})
        stored = [c for c in back if c.info["seed"] == seed]
        for want, got in zip(expected, stored):
            for field in clips.CLIP_FIELDS:
                np.testing.assert_array_equal(getattr(got, field), want[field])
            np.testing.assert_array_equal(got.reference, want["reference"])
            assert got.info["reference_index"] in got.info["frame_indices"]
            assert got.info["corner"] == split.info["corner"]
    first = back[0]
    assert first.target_rgb.shape == (16, 20, 32, 3) and first.target_depth.shape == (16, 20, 32)
    np.testing.assert_array_equal(first.target_rgb[0], scene.frames[first.info["frame_indices"][0]].image)
    np.testing.assert_array_equal(first.target_depth[3], scene.frames[first.info["frame_indices"][3]].depth)
    manifest = json.loads((world["out"] / "manifest.json").read_text())
    assert manifest["scenes"]["train-000"]["clips"] == 4 and manifest["scenes"]["train-000"]["method"] == "mean-color"


def test_clip_building_resumes_per_scene_after_a_crash(tmp_path, monkeypatch):
    world = tiny_training_world(tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match="injected crash"):
        clips.build_clips(world["suite"], world["out"], method="crashes", data=world["data"])
    from gfbench.shards import list_built_scenes

    assert list_built_scenes(world["out"].parent, world["out"].name) == ["train-000"]
    CALLS.clear()
    monkeypatch.setattr(CrashesOnSceneB, "fit", MeanColor.fit)
    written = clips.build_clips(world["suite"], world["out"], method="crashes", data=world["data"])
    assert [p.name for p in written] == ["train-001.tar"]  # scene a was not reconstructed again
    assert len(CALLS) == 2
    with pytest.raises(clips.ClipError, match="built with .*use another --out folder"):
        clips.build_clips(world["suite"], world["out"], method="mean-color", data=world["data"])


def test_frames_are_cropped_to_the_clip_aspect_then_resized():
    image = np.zeros((90, 200, 3), np.uint8)
    image[:, 55:145] = 200  # the centred 144x90 crop (aspect 1.6) holds 90 bright columns of 144
    out = clips.fit_rgb(image, 16, 10)
    assert out.shape == (10, 16, 3)
    assert clips.aspect_crop_box(200, 90, 1.6) == (28, 0, 144, 90)
    assert out[:, 0].max() == 0 and out[:, 8].min() == 200
    depth = np.arange(90 * 200, dtype=np.float32).reshape(90, 200)
    assert set(np.unique(clips.fit_depth(depth, 16, 10))) <= set(depth[:, 28:172].ravel())  # nearest: no blends


def test_clip_settings_errors_name_the_suite():
    with pytest.raises(clips.ClipError, match="x.yaml: protocol.clip needs integer frames"):
        clips.ClipSettings.from_protocol({"clip": {"frames": 16}}, "x.yaml")
    with pytest.raises(clips.ClipError, match="shorter than a clip"):
        clips.clip_windows(8, clips.ClipSettings(16, 32, 20, 4))
