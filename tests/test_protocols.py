"""Protocols (masked, corner, sparse), coverage, point filtering, frozen splits and their CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from gfbench import specs
from gfbench.camera import Camera, intrinsics, look_at
from gfbench.protocols import (
    SplitFileMissing,
    corner_box,
    make_split,
    masked_box,
    parse_protocol,
    sparse_pool_choice,
    validate_protocol,
)
from gfbench.scene import Frame, PointCloud, Scene
from gfbench.splits import (
    SplitMismatch,
    checksum,
    freeze_split,
    load_frozen_split,
    verify_frozen_split,
    write_frozen_split,
)

SUITES = [
    "dl3dv-masked", "dl3dv-masked-4x", "tnt-masked", "tnt-masked-4x",
    "mipnerf360-sparse-3", "mipnerf360-sparse-6", "mipnerf360-sparse-9",
    "mipnerf360-sparse-3-fsgs-rule", "mipnerf360-sparse-6-fsgs-rule", "mipnerf360-sparse-9-fsgs-rule",
    "synthetic-masked", "synthetic-masked-4x", "synthetic-sparse-3", "synthetic-corner",
]
FSGS = {"type": "sparse", "test_every": 8, "n_views": 3, "train_views": "fsgs-rule"}
SPLIT_FILE = {"type": "sparse", "test_every": 8, "n_views": 3, "train_views": "split-file"}
UP = (0.0, -1.0, 0.0)  # with this up vector, look_at along +z gives the identity rotation


def suite_block(suite_id: str) -> dict:
    """A suite's protocol block with its includes resolved (no metrics module needed)."""
    return specs._read_with_includes(specs.suite_path(suite_id))["protocol"]


def paper_corner(k: int) -> tuple[int, int]:
    """PROTOCOL.md's closed form, written out independently of the suite file."""
    return 2 + 5 * (95 - abs(((20 + k) % 190) - 95)), 1 + 5 * (53 - abs(((21 + k) % 106) - 53))


def fixed_patch_block(**overrides) -> dict:
    """Masked protocol at a 16x12 reference with a patch that never moves: (4, 3, 8, 6)."""
    block = {
        "type": "masked",
        "downsample": 2,
        "reference": {"width": 16, "height": 12},
        "patch_divisor": 2,
        "trajectory": {"x": {"offset": 4, "step": 0, "half_period": 1, "phase": 0},
                       "y": {"offset": 3, "step": 0, "half_period": 1, "phase": 0}},
    }
    block.update(overrides)
    return block


def make_frame(name: str, width: int, height: int, eye=(0.0, 0.0, 0.0), depth=None, rng=None) -> Frame:
    rng = rng or np.random.default_rng(0)
    eye = np.asarray(eye, float)
    K = intrinsics(10.0, 10.0, width / 2, height / 2)
    camera = Camera(K, look_at(eye, eye + [0, 0, 1], np.array(UP)), width, height)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    depth_map = None if depth is None else np.full((height, width), depth, np.float32)
    return Frame(name=name, image=image, camera=camera, depth=depth_map)


def make_scene(count: int, width: int = 16, height: int = 12, depth=None, points=None, scene_id="s",
               meta=None) -> Scene:
    rng = np.random.default_rng(count)
    # handed over in reverse: the scene sorts by name, and frame index k follows that order
    frames = [make_frame(f"f{k:03d}.png", width, height, eye=(0.1 * k, 0, 0), depth=depth, rng=rng)
              for k in reversed(range(count))]
    return Scene("toy", scene_id, frames, points, meta=meta or {})


def toy_suite(block: dict, suite_id: str = "toy-suite", seeds=(0,)) -> specs.SuiteSpec:
    return specs.SuiteSpec(id=suite_id, version=1, dataset="toy", scenes=("s",), protocol=block, metrics=(),
                           path=Path(f"{suite_id}.yaml"), seeds=tuple(seeds))


# ---------------------------------------------------------------- masked: trajectory and patches


def test_paper_trajectory_matches_closed_form_for_1000_frames():
    protocol = parse_protocol(suite_block("dl3dv-masked"))
    assert masked_box(protocol, 0, 960, 540) == (102, 106, 480, 270)
    assert masked_box(protocol, 1, 960, 540) == (107, 111, 480, 270)
    for k in range(1000):
        assert masked_box(protocol, k, 960, 540) == (*paper_corner(k), 480, 270), k


@pytest.mark.parametrize("width,height", [(256, 144), (480, 270), (1297, 840), (961, 541), (255, 143), (7, 5),
                                          (2, 2), (1920, 1080)])
def test_paper_patch_lies_inside_frames_of_other_sizes(width, height):
    protocol = parse_protocol(suite_block("dl3dv-masked"))
    for k in range(400):
        x, y, w, h = masked_box(protocol, k, width, height)
        ref_x, ref_y = paper_corner(k)
        assert (x, y) == (round(ref_x * width / 960), round(ref_y * height / 540))
        assert (w, h) == (width // 2, height // 2)
        assert 0 <= x and x + w <= width and 0 <= y and y + h <= height


def test_masked_split_partitions_frames_and_crops_source_pixels():
    scene = make_scene(10, 64, 36)
    split = make_split(scene, suite_block("dl3dv-masked"))
    assert [v.frame_index for v in split.train] == [0, 2, 4, 6, 8]
    assert [v.frame_index for v in split.test] == [1, 3, 5, 7, 9]
    assert [v.name for v in split.train] == ["f000.png", "f002.png", "f004.png", "f006.png", "f008.png"]
    for view in split.train:
        x, y, w, h = view.box
        assert (w, h) == (32, 18)
        assert view.box == masked_box(parse_protocol(suite_block("dl3dv-masked")), view.frame_index, 64, 36)
        np.testing.assert_array_equal(view.image, scene.frames[view.frame_index].image[y:y + h, x:x + w])
        assert (view.camera.width, view.camera.height) == (w, h)
    for view in split.test:
        assert view.box is None
        np.testing.assert_array_equal(view.image, scene.frames[view.frame_index].image)


def test_masked_4x_suite_takes_every_fourth_frame():
    split = make_split(make_scene(10, 64, 36), suite_block("dl3dv-masked-4x"))
    assert [v.frame_index for v in split.train] == [0, 4, 8]
    assert [v.frame_index for v in split.test] == [1, 2, 3, 5, 6, 7, 9]


def test_cropped_camera_projects_a_point_where_the_frame_camera_does():
    scene = make_scene(4, 64, 36)
    view = make_split(scene, suite_block("dl3dv-masked")).train[1]
    frame_camera = scene.frames[view.frame_index].camera
    x, y, w, h = view.box
    # world points through three pixels inside the patch, at different depths
    pixels = np.array([[x + 1.25, y + 2.5], [x + w - 0.5, y + h - 0.5], [x + w / 2, y + h / 3]])
    rays = np.c_[pixels, np.ones(3)] @ np.linalg.inv(frame_camera.K).T * np.array([[2.0], [3.5], [7.0]])
    world = rays @ frame_camera.c2w[:3, :3].T + frame_camera.c2w[:3, 3]
    uv_frame, z_frame = frame_camera.project(world)
    uv_crop, z_crop = view.camera.project(world)
    np.testing.assert_allclose(uv_frame, pixels, atol=1e-9)
    np.testing.assert_allclose(uv_crop + [x, y], uv_frame, atol=1e-9)
    np.testing.assert_allclose(z_crop, z_frame)


def test_frame_smaller_than_its_patch_is_an_error():
    # train frames are a.png and c.png (downsample 2); c.png is too small for any patch
    scene = Scene("toy", "s", [make_frame("a.png", 16, 12), make_frame("b.png", 16, 12), make_frame("c.png", 1, 1)])
    with pytest.raises(ValueError, match=r"frame 'c.png' \(1x1\) is too small for its patch: 0x0 at \(0, 0\)"):
        make_split(scene, fixed_patch_block())


# ---------------------------------------------------------------- corner


def corner_block() -> dict:
    return {"type": "corner", "downsample": 1, "patch_divisor": 2,
            "corners": ["top_left", "top_right", "bottom_left", "bottom_right"]}


def test_corner_boxes_by_hand():
    assert corner_box("top_left", 65, 37, 2) == (0, 0, 32, 18)
    assert corner_box("top_right", 65, 37, 2) == (33, 0, 32, 18)
    assert corner_box("bottom_left", 65, 37, 2) == (0, 19, 32, 18)
    assert corner_box("bottom_right", 65, 37, 2) == (33, 19, 32, 18)


def test_corner_is_deterministic_per_seed_and_covers_all_corners():
    scene = make_scene(3, 65, 37)
    corners = {seed: make_split(scene, corner_block(), seed=seed).info["corner"] for seed in range(40)}
    assert corners == {seed: make_split(scene, corner_block(), seed=seed).info["corner"] for seed in range(40)}
    assert set(corners.values()) == {"top_left", "top_right", "bottom_left", "bottom_right"}


def test_corner_split_crops_every_frame_to_one_corner_and_tests_all_frames_whole():
    scene = make_scene(5, 65, 37)
    split = make_split(scene, corner_block(), seed=3)
    box = corner_box(split.info["corner"], 65, 37, 2)
    assert [v.frame_index for v in split.train] == [0, 1, 2, 3, 4]
    assert {v.box for v in split.train} == {box}
    assert [v.frame_index for v in split.test] == [0, 1, 2, 3, 4]
    assert all(v.box is None and v.image.shape == (37, 65, 3) for v in split.test)


# ---------------------------------------------------------------- sparse


@pytest.mark.parametrize("pool,n,expected", [
    (7, 3, [0, 3, 6]),
    (7, 4, [0, 2, 4, 6]),
    (6, 3, [0, 2, 5]),     # linspace gives 2.5: Python's round goes to the even 2
    (4, 3, [0, 2, 3]),     # 1.5 -> 2
    (12, 3, [0, 6, 11]),   # 5.5 -> 6
    (10, 4, [0, 3, 6, 9]),
    (5, 2, [0, 4]),
    (8, 1, [0]),
    (3, 3, [0, 1, 2]),
])
def test_sparse_rule_on_small_pools(pool, n, expected):
    assert sparse_pool_choice(pool, n) == expected


def test_sparse_split_on_scenes_by_hand():
    block = FSGS
    split = make_split(make_scene(20), block)
    assert [v.frame_index for v in split.test] == [0, 8, 16]
    # pool = 1..7, 9..15, 17..19 (17 frames); positions 0, 8, 16
    assert [v.frame_index for v in split.train] == [1, 10, 19]
    assert all(v.box is None for v in split.train)
    split = make_split(make_scene(48), {**block, "n_views": 6})
    assert [v.frame_index for v in split.test] == [0, 8, 16, 24, 32, 40]
    # pool of 42 (blocks of 7: 1..7, 9..15, ...), positions round(0, 8.2, 16.4, 24.6, 32.8, 41)
    # = 0, 8, 16, 25, 33, 41 -> block 0 #0, block 1 #1, block 2 #2, block 3 #4, block 4 #5, block 5 #6
    assert [v.frame_index for v in split.train] == [1, 10, 19, 29, 38, 47]


def test_sparse_n_larger_than_pool_is_an_error():
    with pytest.raises(ValueError, match=r"n_views = 9 is larger than the train pool \(7 of 9 frames"):
        make_split(make_scene(9), {**FSGS, "n_views": 9})


def stored(train_ids, test_ids=None, name="train_test_split_3.json") -> dict:
    """A scene meta holding one split file, as a builder stores it."""
    entry = {"train_ids": train_ids, "file": name, "sha256": "0" * 64}
    if test_ids is not None:
        entry["test_ids"] = test_ids
    return {"train_test_splits": {"3": entry}}


def test_sparse_split_file_stored_in_the_scene_is_used():
    split = make_split(make_scene(12, meta=stored([11, 2, 5], [0, 8])), SPLIT_FILE)
    assert [v.frame_index for v in split.train] == [2, 5, 11]
    assert [v.frame_index for v in split.test] == [0, 8]
    assert split.info["split_file"] == "train_test_split_3.json"


@pytest.mark.parametrize("meta,message", [
    (stored([2, 5, 40]), r"train id 40 names a frame the scene lacks \(it has 12 frames\)"),
    (stored([2, 5]), r"2 train_ids, the protocol asks for n_views = 3"),
    (stored([2, 5, 8]), r"train id 8 is a test frame"),
    (stored([2, 5, 7], [0, 9]), r"test_ids differ"),
    (stored([2, 5, 5]), r"train_ids must be distinct integers"),
])
def test_bad_split_files_are_clear_errors(meta, message):
    with pytest.raises(ValueError, match=message) as info:
        make_split(make_scene(12, meta=meta), SPLIT_FILE)
    assert "scene toy/s: train_test_split_3.json" in str(info.value)


def test_missing_split_file_names_the_file_and_what_to_do():
    with pytest.raises(SplitFileMissing, match=r"toy/s was built without train_test_split_6.json \(it has: "
                                               r"train_test_split_3.json\).*build the scene again"):
        make_split(make_scene(12, meta=stored([1, 2, 3])), {**SPLIT_FILE, "n_views": 6})


# ---------------------------------------------------------------- points


def cloud(count: int, observations: list[tuple[int, int, float, float]]) -> PointCloud:
    xyz = np.arange(count * 3, dtype=np.float32).reshape(count, 3)
    rgb = np.zeros((count, 3), np.uint8)
    if not observations:
        return PointCloud(xyz, rgb)
    point, frame, u, v = zip(*observations)
    return PointCloud(xyz, rgb, np.array(point), np.array(frame), np.c_[u, v])


def test_points_kept_exactly_when_observed_inside_a_train_patch():
    # train frames 0 and 2, both with patch (4, 3, 8, 6): x in [4, 12), y in [3, 9)
    points = cloud(7, [
        (0, 0, 5.0, 4.0),                      # inside frame 0's patch: kept
        (1, 0, 2.0, 4.0), (1, 0, 12.0, 4.0),   # left of the patch, and on its (exclusive) right edge
        (2, 1, 6.0, 5.0),                      # frame 1 is a test frame
        (3, 2, 11.9, 8.9), (3, 1, 6.0, 6.0),   # inside frame 2's patch: kept
        (5, 0, 6.0, 2.9), (5, 2, 3.9, 5.0),    # just above / just left of the patches
        (6, 0, 4.0, 3.0), (6, 0, 5.0, 5.0),    # top-left corner of the patch, twice in one frame: kept
    ])                                         # point 4 has no observation
    scene = make_scene(3, points=points)
    split = make_split(scene, fixed_patch_block(points={"keep": "observed", "min_views": 1}))
    np.testing.assert_array_equal(split.points.xyz, points.xyz[[0, 3, 6]])
    np.testing.assert_array_equal(split.points.obs_point, [0, 1, 1, 2, 2])
    assert split.info["points_before"] == 7 and split.info["points"] == 3


def test_min_views_counts_distinct_train_views():
    points = cloud(3, [(0, 0, 5, 5), (0, 0, 6, 6), (1, 0, 5, 5), (1, 2, 5, 5), (2, 2, 5, 5), (2, 1, 5, 5)])
    split = make_split(make_scene(3, points=points), fixed_patch_block(points={"keep": "observed", "min_views": 2}))
    np.testing.assert_array_equal(split.points.xyz, points.xyz[[1]])


def test_points_without_observations_fall_back_to_projection():
    # all cameras at the origin (f = 10, c = (8, 6)); patch x in [4, 12), y in [3, 9)
    xyz = np.array([
        [-0.75, -0.75, 5.0],   # pixel (6.5, 4.5): inside the patch
        [-3.25, -2.25, 5.0],   # pixel (1.5, 1.5): outside
        [0.0, 0.0, -5.0],      # behind the camera
        [-1.5, -1.5, 10.0],    # pixel (6.5, 4.5) but behind the plane at depth 5
    ])
    frames = [make_frame(f"f{k}.png", 16, 12, depth=5.0) for k in range(3)]
    rule = {"keep": "observed", "min_views": 1}
    scene = Scene("toy", "s", frames, PointCloud(xyz, np.zeros((4, 3))))
    with_depth = make_split(scene, fixed_patch_block(points=rule, depth_rtol=0.01))
    np.testing.assert_allclose(with_depth.points.xyz, xyz[[0]])
    assert "projection with depth test" in with_depth.info["point_filter"]
    frames = [make_frame(f"f{k}.png", 16, 12) for k in range(3)]
    no_depth = make_split(Scene("toy", "s", frames, PointCloud(xyz, np.zeros((4, 3)))), fixed_patch_block(points=rule))
    np.testing.assert_allclose(no_depth.points.xyz, xyz[[0, 3]])


def test_sparse_suites_keep_every_point_some_train_view_observes():
    """The official rule (colmap_debug.py filter_points_sparse): a point of the full capture is kept when at
    least one train view observes it, anywhere in the frame."""
    points = cloud(6, [
        (0, 2, 1.0, 1.0),                     # train frame 2: kept
        (1, 0, 5.0, 5.0),                     # only test frame 0
        (2, 3, 5.0, 5.0),                     # frame 3 is in the pool but not a train view
        (3, 5, 15.9, 11.9), (3, 11, 0.0, 0.0),  # two train views, corners of the frame: kept
        (5, 8, 5.0, 5.0), (5, 11, 7.0, 2.0),  # a test frame and train frame 11: kept
    ])                                        # point 4 has no observation
    scene = make_scene(12, points=points, meta=stored([2, 5, 11], [0, 8]))
    for suite_id in ("mipnerf360-sparse-3", "mipnerf360-sparse-3-fsgs-rule"):
        block = {**suite_block(suite_id), "train_views": "split-file"}
        split = make_split(scene, block)
        assert [v.frame_index for v in split.train] == [2, 5, 11]
        np.testing.assert_array_equal(split.points.xyz, points.xyz[[0, 3, 5]])


# The paper's trajectory at 96x54 (a tenth of the reference): frame 100 at f = 2 is train view j = 50. Its own
# patch has its corner at (352, 76) x 0.1 = (35.2, 7.6) -> (35, 8); trajectory entry 50 at (352, 176) x 0.1 =
# (35.2, 17.6) -> (35, 18); the patch is 48 x 27 (PROTOCOL.md's closed form, computed by hand here).
OWN_BOX, ENTRY_BOX = (35, 8, 48, 27), (35, 18, 48, 27)


def paired_scene() -> tuple[Scene, np.ndarray]:
    """102 frames at 96x54, all at the origin looking down +z (f = 10, c = (48, 27)); two points observed in
    frame 100, each at its exact projection: A at pixel (40.5, 12.5), inside the own patch only (y < 18);
    B at (40.5, 40.5), inside entry 50's patch only (y >= 35)."""
    pixels = np.array([[40.5, 12.5], [40.5, 40.5]])
    xyz = np.c_[(pixels - [48, 27]) / 10 * 5, [5.0, 5.0]]
    frames = [make_frame(f"f{k:03d}.png", 96, 54) for k in range(102)]
    points = PointCloud(xyz, np.zeros((2, 3)), obs_point=[0, 1], obs_frame=[100, 100], obs_uv=pixels)
    return Scene("toy", "paired", frames, points), xyz


def test_official_code_pairing_filters_train_view_j_with_trajectory_entry_j():
    block = suite_block("dl3dv-masked")
    protocol = parse_protocol(block)
    assert paper_corner(100) == (352, 76) and paper_corner(50) == (352, 176)
    assert masked_box(protocol, 100, 96, 54) == OWN_BOX and masked_box(protocol, 50, 96, 54) == ENTRY_BOX
    scene, xyz = paired_scene()
    intended = make_split(scene, block)
    assert intended.train[50].frame_index == 100 and intended.train[50].box == OWN_BOX
    np.testing.assert_allclose(intended.points.xyz, xyz[[0]])
    official = make_split(scene, {**block, "points": {**block["points"], "pairing": "official-code"}})
    assert official.train[50].box == OWN_BOX  # the crop itself is the same: only the point filter differs
    np.testing.assert_allclose(official.points.xyz, xyz[[1]])
    assert "trajectory box j" in official.info["point_filter"]


def test_official_code_pairing_drops_points_behind_the_camera():
    scene, xyz = paired_scene()
    scene.points.xyz[1] *= -1  # B now projects to the same pixel from behind the camera
    block = suite_block("dl3dv-masked")
    official = make_split(scene, {**block, "points": {**block["points"], "pairing": "official-code"}})
    assert len(official.points) == 0


def test_keep_all_points_by_default():
    points = cloud(4, [(0, 1, 5, 5)])
    split = make_split(make_scene(3, points=points), fixed_patch_block())
    assert split.points is points


# ---------------------------------------------------------------- coverage


def plane_scene(train_depth: float = 5.0) -> Scene:
    """A fronto-parallel plane at depth 5; train frame 'a' from x = 1, test frame 'b' from x = 0.
    With f = 10 the plane moves by f * 1 / 5 = 2 px between them."""
    frames = [make_frame("a.png", 16, 12, eye=(1, 0, 0), depth=train_depth), make_frame("b.png", 16, 12, depth=5.0)]
    return Scene("toy", "plane", frames)


def test_coverage_of_a_plane_by_hand():
    split = make_split(plane_scene(), fixed_patch_block(coverage=True, depth_rtol=0.01))
    assert [v.frame_index for v in split.train] == [0] and split.train[0].box == (4, 3, 8, 6)
    # test pixel u (center u + 0.5) lands at u - 1.5 in the train frame: inside [4, 12) for u = 6..13;
    # rows do not move: v + 0.5 inside [3, 9) for v = 3..8
    expected = np.zeros((12, 16), bool)
    expected[3:9, 6:14] = True
    np.testing.assert_array_equal(split.test[0].coverage, expected)
    assert split.info["coverage"] is True


def test_coverage_respects_occlusion_and_unknown_depth():
    occluded = make_split(plane_scene(train_depth=2.5), fixed_patch_block(coverage=True, depth_rtol=0.01))
    assert not occluded.test[0].coverage.any()
    scene = plane_scene()
    scene.frames[1].depth[:, :10] = 0
    split = make_split(scene, fixed_patch_block(coverage=True, depth_rtol=0.01))
    expected = np.zeros((12, 16), bool)
    expected[3:9, 10:14] = True
    np.testing.assert_array_equal(split.test[0].coverage, expected)


def test_no_coverage_without_depth():
    split = make_split(make_scene(4), fixed_patch_block(coverage=True, depth_rtol=0.01))
    assert all(v.coverage is None for v in split.test) and split.info["coverage"] is False


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("change,field", [
    (lambda b: b.pop("type"), "type"),
    (lambda b: b.update(type="dense"), "type"),
    (lambda b: b.update(downsample=1), "downsample"),
    (lambda b: b.update(downsample="2"), "downsample"),
    (lambda b: b.update(speed=3), "speed"),
    (lambda b: b.pop("reference"), "reference"),
    (lambda b: b["reference"].update(width=0), "reference.width"),
    (lambda b: b["trajectory"].pop("y"), "trajectory.y"),
    (lambda b: b["trajectory"]["x"].update(step=-5), "trajectory.x.step"),
    (lambda b: b["trajectory"]["y"].update(half_period=0), "trajectory.y.half_period"),
    (lambda b: b["trajectory"]["x"].update(step=6), "trajectory.x"),   # 2 + 6 * 95 + 480 > 960
    (lambda b: b.pop("depth_rtol"), "depth_rtol"),   # coverage: true needs it
    (lambda b: b.update(depth_rtol=-0.1), "depth_rtol"),
    (lambda b: b.update(points={"keep": "some"}), "points.keep"),
    (lambda b: b.update(points={"keep": "observed", "min_views": 0}), "points.min_views"),
])
def test_bad_masked_fields_are_named(change, field):
    block = copy.deepcopy(suite_block("dl3dv-masked"))
    change(block)
    with pytest.raises(ValueError, match=f"protocol field '{field}'"):
        validate_protocol(block)


@pytest.mark.parametrize("block,field", [
    ({**FSGS, "n_views": 0}, "n_views"),
    ({"type": "sparse", "test_every": 8, "train_views": "fsgs-rule"}, "n_views"),
    ({**FSGS, "test_every": 1}, "test_every"),
    ({"type": "sparse", "test_every": 8, "n_views": 3}, "train_views"),
    ({**FSGS, "train_views": "reconfusion"}, "train_views"),
    ({**FSGS, "split_file": "x_{n}.json"}, "split_file"),
    ({**FSGS, "points": {"keep": "observed", "min_views": 1, "pairing": "official-code"}}, "points.pairing"),
    ({"type": "corner", "downsample": 1, "patch_divisor": 2, "corners": ["top_left", "middle"]}, "corners"),
    ({"type": "corner", "downsample": 1, "patch_divisor": 2, "corners": []}, "corners"),
    ({"type": "corner", "downsample": 0, "patch_divisor": 2, "corners": ["top_left"]}, "downsample"),
    ({"type": "corner", "downsample": 1, "patch_divisor": 2, "corners": ["top_left"], "clip": {"frames": 16}},
     "clip.width"),
])
def test_bad_sparse_and_corner_fields_are_named(block, field):
    with pytest.raises(ValueError, match=f"protocol field '{field}'"):
        validate_protocol(block)


# ---------------------------------------------------------------- frozen splits


def test_frozen_split_round_trips_and_verifies(tmp_path):
    scene = make_scene(10, 64, 36)
    suite = toy_suite(suite_block("dl3dv-masked"))
    frozen = freeze_split(suite, scene)
    path = write_frozen_split(frozen, tmp_path)
    assert path == tmp_path / "toy-suite" / "s.json"
    loaded = load_frozen_split("toy-suite", "s", tmp_path)
    assert loaded == json.loads(json.dumps(frozen))
    entry = loaded["splits"][0]
    assert entry["seed"] is None
    assert [t["name"] for t in entry["train"]] == ["f000.png", "f002.png", "f004.png", "f006.png", "f008.png"]
    assert entry["train"][1]["box"] == list(masked_box(parse_protocol(suite.protocol), 2, 64, 36))
    assert [t["index"] for t in entry["test"]] == [1, 3, 5, 7, 9]
    verify_frozen_split(make_split(scene, suite.protocol), loaded, tmp_path)


def test_frozen_split_mismatches_name_the_file_and_frame(tmp_path):
    scene = make_scene(10, 64, 36)
    suite = toy_suite(suite_block("dl3dv-masked"))
    frozen = freeze_split(suite, scene)
    path = tmp_path / "toy-suite" / "s.json"
    split = make_split(scene, suite.protocol)

    moved = copy.deepcopy(frozen)
    moved["splits"][0]["train"][2]["box"][0] += 1
    with pytest.raises(SplitMismatch, match=rf"{path}: train frame 'f004.png' has box"):
        verify_frozen_split(split, moved, tmp_path)

    renamed = copy.deepcopy(frozen)
    renamed["splits"][0]["test"][0]["name"] = "g001.png"
    with pytest.raises(SplitMismatch, match=rf"{path}: test frame 'g001.png' is not in the scene"):
        verify_frozen_split(split, renamed, tmp_path)

    # the shards lost a frame: the split recomputed on them no longer matches the file
    fewer = Scene("toy", "s", [f for f in scene.frames if f.name != "f003.png"])
    with pytest.raises(SplitMismatch, match=rf"{path}: test frame 'f003.png' is not in the scene"):
        verify_frozen_split(make_split(fewer, suite.protocol), frozen, tmp_path)


def test_frozen_corner_split_has_one_entry_per_seed(tmp_path):
    scene = make_scene(4, 65, 37)
    suite = toy_suite(corner_block(), seeds=(0, 1, 2, 3))
    frozen = freeze_split(suite, scene)
    assert [e["seed"] for e in frozen["splits"]] == [0, 1, 2, 3]
    for seed in (0, 1, 2, 3):
        verify_frozen_split(make_split(scene, suite.protocol, seed=seed), frozen, tmp_path)
    with pytest.raises(SplitMismatch, match="no frozen split for seed 7"):
        verify_frozen_split(make_split(scene, suite.protocol, seed=7), frozen, tmp_path)


def test_missing_frozen_split_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no frozen split for suite 'toy-suite', scene 'x'"):
        load_frozen_split("toy-suite", "x", tmp_path)


# ---------------------------------------------------------------- suite files


@pytest.mark.parametrize("suite_id", SUITES)
def test_suite_protocols_validate(suite_id):
    data = specs._read_with_includes(specs.suite_path(suite_id))
    assert data["id"] == suite_id
    validate_protocol(data["protocol"])


def test_suite_variants_override_only_what_differs():
    base = suite_block("dl3dv-masked")
    assert suite_block("dl3dv-masked-4x") == {**base, "downsample": 4}
    assert suite_block("tnt-masked") == base == suite_block("synthetic-masked")
    assert suite_block("tnt-masked-4x") == suite_block("synthetic-masked-4x") == {**base, "downsample": 4}
    sparse = suite_block("mipnerf360-sparse-3")
    assert sparse["n_views"] == 3 and sparse["test_every"] == 8 and sparse["train_views"] == "split-file"
    for n in (3, 6, 9):
        assert suite_block(f"mipnerf360-sparse-{n}") == {**sparse, "n_views": n}
        assert suite_block(f"mipnerf360-sparse-{n}-fsgs-rule") == {**sparse, "n_views": n, "train_views": "fsgs-rule"}
    assert suite_block("synthetic-sparse-3") == {**sparse, "train_views": "fsgs-rule"}


def test_protocol_changes_came_with_a_version_bump():
    """What a suite trains on changed in these suites (split files, point rule, undistortion): a new version,
    so that their old records never mix with new ones; the rest kept theirs."""
    versions = {suite_id: specs._read_with_includes(specs.suite_path(suite_id))["version"] for suite_id in SUITES}
    assert versions == {
        "dl3dv-masked": 2, "dl3dv-masked-4x": 2, "tnt-masked": 1, "tnt-masked-4x": 1,
        "mipnerf360-sparse-3": 2, "mipnerf360-sparse-6": 2, "mipnerf360-sparse-9": 2,
        "mipnerf360-sparse-3-fsgs-rule": 1, "mipnerf360-sparse-6-fsgs-rule": 1, "mipnerf360-sparse-9-fsgs-rule": 1,
        "synthetic-masked": 1, "synthetic-masked-4x": 1, "synthetic-sparse-3": 2, "synthetic-corner": 1,
    }


@pytest.mark.parametrize("suite_id", SUITES)
def test_suites_load_with_the_spec_loader(suite_id):
    suite = specs.load_suite(suite_id)
    expected_scenes = {"dl3dv": 24, "tnt": 7, "mipnerf360": 9, "synthetic": 3}[suite.dataset]
    assert len(suite.scenes) == expected_scenes
    # the paper's metrics on real data; LPIPS-free synthetic suites run without published weights
    expected_metrics = ("psnr", "ssim") if suite.dataset == "synthetic" else ("psnr", "ssim", "lpips_vgg_3dgs")
    assert suite.metrics == expected_metrics


# ---------------------------------------------------------------- CLI


@pytest.fixture
def cli_env(monkeypatch):
    """The CLI on an in-memory synthetic-like scene and a suite resolved without the metrics module."""
    from gfbench.cli import protocol as cli

    scene = Scene("synthetic", "tabletop", [make_frame(f"f{k:02d}.png", 64, 36, depth=5.0) for k in range(12)])

    def fake_suite(suite_id):
        data = specs._read_with_includes(specs.suite_path(suite_id))
        return specs.SuiteSpec(id=suite_id, version=data["version"], dataset=data["dataset"],
                               scenes=("tabletop",), protocol=data["protocol"], metrics=(),
                               path=specs.suite_path(suite_id), seeds=tuple(data["seeds"]))

    monkeypatch.setattr(cli, "load_scene", lambda dataset, scene_id, data: scene)
    monkeypatch.setattr(cli, "_load_suite", fake_suite)
    return cli


def test_cli_show_writes_a_png(cli_env, tmp_path):
    out = tmp_path / "show.png"
    result = CliRunner().invoke(cli_env.protocol_group,
                                ["show", "--suite", "synthetic-masked", "--scene", "tabletop", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "6 train, 6 test" in result.output
    with Image.open(out) as image:
        assert image.width == 8 * 64 and image.height == 2 * 36 + 18


def test_cli_show_unknown_scene_fails(cli_env):
    result = CliRunner().invoke(cli_env.protocol_group, ["show", "--suite", "synthetic-masked", "--scene", "nope"])
    assert result.exit_code != 0 and "has no scene 'nope'" in result.output


def test_cli_freeze_then_verify(cli_env, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli_env.splits_group, ["freeze", "--suite", "synthetic-sparse-3", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = tmp_path / "synthetic-sparse-3" / "tabletop.json"
    frozen = json.loads(path.read_text())
    # 12 frames: test 0, 8; pool 1..7, 9..11; positions round(0, 4.5, 9) = 0, 4, 9
    assert [t["index"] for t in frozen["splits"][0]["train"]] == [1, 5, 11]
    verify = ["verify", "--suite", "synthetic-sparse-3", "--root", str(tmp_path)]
    assert runner.invoke(cli_env.splits_group, verify).exit_code == 0
    frozen["splits"][0]["train"][1]["name"] = "f06.png"
    path.write_text(json.dumps(frozen))
    result = runner.invoke(cli_env.splits_group, verify)
    assert result.exit_code != 0 and f"{path}: content does not match its checksum" in result.output
    frozen["checksum"] = checksum(frozen)  # an edit that also forges the checksum is caught by the data
    path.write_text(json.dumps(frozen))
    result = runner.invoke(cli_env.splits_group, verify)
    assert result.exit_code != 0
    assert f"{path}: frame 'f05.png' is a train frame now but not in the frozen split" in result.output
