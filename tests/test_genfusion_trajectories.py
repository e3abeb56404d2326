"""GenFusion's repair trajectories: the sparse protocol's ellipse (looks at the focus, tilts 2 i degrees in
round i, its height and extent), the normalised frame it is built in, the focus, and the clip crop."""

from __future__ import annotations

import numpy as np
import pytest

from gfbench.camera import Camera, intrinsics, look_at
from gfbench.methods.genfusion.trajectories import (
    EllipseSettings,
    diffusion_crop,
    ellipse_trajectory,
    focus_point,
    path_frame,
    repair_trajectory,
)
from gfbench.methods.genfusion.trajectories import camera_similarity

TARGET = np.array([0.3, -0.2, 0.1])
K = intrinsics(80.0, 80.0, 64.0, 36.0)


def train_cameras(count=9):
    """Cameras on an arc around TARGET at varying heights, world up +z, each looking a little off TARGET so
    the focus is a least-squares point, not an exact intersection."""
    rng = np.random.default_rng(0)
    out = []
    for i, a in enumerate(np.linspace(-1.2, 1.4, count)):
        eye = TARGET + np.array([3.0 * np.cos(a), 2.2 * np.sin(a), 0.8 + 0.3 * np.sin(3 * i)])
        out.append(Camera(K, look_at(eye, TARGET + rng.normal(scale=0.05, size=3)), 128, 72))
    return out


def ground_points(n=400):
    rng = np.random.default_rng(1)
    return np.column_stack([rng.uniform(-3, 3, n), rng.uniform(-2, 2, n), rng.normal(scale=0.02, size=n)])


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def angle_to_focus_degrees(cameras, focus):
    forwards = np.stack([c.c2w[:3, 2] for c in cameras])
    to_focus = unit(focus - np.stack([c.center for c in cameras]))
    sine = np.linalg.norm(np.cross(forwards, to_focus), axis=1)
    return np.degrees(np.arctan2(sine, np.sum(forwards * to_focus, axis=1)))


def test_round_zero_looks_at_the_focus_of_the_train_cameras():
    cameras = train_cameras()
    path = ellipse_trajectory(cameras, 0, np.random.default_rng(0), points=ground_points())
    assert len(path) == 85
    focus = focus_point(np.stack([c.c2w for c in cameras]))  # the focus is the same in any similar frame
    assert np.abs(angle_to_focus_degrees(path, focus)).max() < 1e-9
    assert all(np.allclose(c.K, K) and (c.width, c.height) == (128, 72) for c in path)
    for camera in path:  # upright like the train cameras: the image's down is the world's -z side
        assert camera.c2w[:3, 1] @ np.array([0, 0, 1.0]) < 0


@pytest.mark.parametrize("round_index", [1, 3, 6])
def test_the_tilt_grows_by_two_degrees_a_round(round_index):
    cameras = train_cameras()
    path = ellipse_trajectory(cameras, round_index, np.random.default_rng(0), points=ground_points())
    focus = focus_point(np.stack([c.c2w for c in cameras]))
    np.testing.assert_allclose(angle_to_focus_degrees(path, focus), 2.0 * round_index, atol=1e-9)
    for camera in path:
        to_focus = unit(focus - camera.center)
        assert abs(camera.c2w[:3, 0] @ to_focus) < 1e-9  # a pitch about the camera's own x axis
        uv, _ = camera.project(focus[None])
        assert uv[0, 1] > camera.K[1, 2]  # the camera pitched up: the focus sits below the image centre


def test_height_scales_by_the_round_variation_and_the_phase_is_drawn_per_round():
    cameras, points = train_cameras(), ground_points()
    frame = path_frame(cameras, points)
    settings = EllipseSettings()
    assert [settings.height_variation(i) for i in range(7)] == pytest.approx([1.5, 1.3, 1.1, 0.9, 0.7, 0.5, 0.5])

    def positions(round_index, seed):
        path = ellipse_trajectory(cameras, round_index, np.random.default_rng(seed), points=points)
        return frame.points(np.stack([c.center for c in path]))

    base = positions(0, seed=5)
    for i in (2, 6):
        moved = positions(i, seed=5)
        np.testing.assert_allclose(moved[:, :2], base[:, :2], atol=1e-9)
        np.testing.assert_allclose(moved[:, 2], base[:, 2] * settings.height_variation(i) / 1.5, atol=1e-9)
    other = positions(0, seed=6)
    np.testing.assert_allclose(other[:, :2], base[:, :2], atol=1e-9)
    assert not np.allclose(other[:, 2], base[:, 2])
    # heights lie between the train cameras' 10th and 90th height percentiles, times the variation
    heights = frame.points(np.stack([c.center for c in cameras]))[:, 2]
    low, high = np.percentile(heights, [10, 90])
    assert (base[:, 2] / 1.5 >= low - 1e-9).all() and (base[:, 2] / 1.5 <= high + 1e-9).all()


def test_the_ellipse_spans_1_2_times_the_90th_percentile_bounds():
    cameras, points = train_cameras(), ground_points()
    frame = path_frame(cameras, points)
    path = ellipse_trajectory(cameras, 0, np.random.default_rng(0), points=points)
    xy = frame.points(np.stack([c.center for c in path]))[:, :2]
    c2ws = np.stack([frame.c2w(c.c2w) for c in cameras])
    focus = focus_point(c2ws)
    offset = np.array([focus[0], focus[1]])
    semi = np.percentile(np.abs(c2ws[:, :2, 3] - offset), 90, axis=0)
    assert xy[0] == pytest.approx(1.2 * np.array([offset[0] + semi[0], offset[1]]))  # theta = 0
    assert xy[:, 0].min() == pytest.approx(1.2 * (offset[0] - semi[0]), abs=1e-3 * semi[0])
    assert xy[:, 1].max() == pytest.approx(1.2 * (offset[1] + semi[1]), abs=1e-3 * semi[1])
    assert xy[:, 1].min() == pytest.approx(1.2 * (offset[1] - semi[1]), abs=1e-3 * semi[1])


def test_the_normalised_frame():
    cameras = train_cameras()
    tilt = look_at(np.zeros(3), np.array([0.3, 0.2, -1.0]))[:3, :3]  # a plane through the scene, tilted
    points = ground_points() @ tilt.T
    frame = path_frame(cameras, points)
    assert frame.scale > 0
    np.testing.assert_allclose(frame.rotation @ frame.rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(frame.rotation) == pytest.approx(1.0)
    normal = tilt @ np.array([0, 0, 1.0])  # the plane's normal becomes the frame's z axis
    assert abs(frame.rotation @ normal @ np.array([0, 0, 1.0])) == pytest.approx(1.0, abs=1e-3)
    c2w = cameras[2].c2w
    np.testing.assert_allclose(frame.world_c2w(frame.c2w(c2w)), c2w, atol=1e-12)
    # cameras only: median distance 1 around the focus, and without points the mean up vector becomes +z
    first = camera_similarity(np.stack([c.c2w for c in cameras]))
    assert np.median(np.linalg.norm(first.points(np.stack([c.center for c in cameras])), axis=1)) == pytest.approx(1.0)
    mean_up = unit(-np.stack([c.c2w[:3, 1] for c in cameras]).mean(axis=0))
    np.testing.assert_allclose(path_frame(cameras).rotation @ mean_up, [0, 0, 1.0], atol=1e-12)


def test_focus_point():
    cameras = [Camera(K, look_at(eye, TARGET), 128, 72) for eye in ([3, 0, 1], [0, 3, 2], [-2, -2, 0.5])]
    np.testing.assert_allclose(focus_point(np.stack([c.c2w for c in cameras])), TARGET, atol=1e-9)
    parallel = [Camera(K, look_at(np.array([x, 0, 0.0]), np.array([x, 5, 0.0])), 128, 72) for x in (0, 1, 2)]
    with pytest.raises(ValueError, match="parallel"):
        ellipse_trajectory(parallel, 0, np.random.default_rng(0))


def test_repair_trajectory_per_protocol():
    cameras = train_cameras()
    assert repair_trajectory("masked", cameras, 3, np.random.default_rng(0)) == cameras
    assert len(repair_trajectory("sparse", cameras, 0, np.random.default_rng(0))) == 85
    with pytest.raises(ValueError, match="protocol 'dense'"):
        repair_trajectory("dense", cameras, 0, np.random.default_rng(0))


def test_ellipse_settings_from_config():
    config = {f"ellipse_{k}": v for k, v in vars(EllipseSettings(frames=32)).items()}
    assert EllipseSettings.from_config(config) == EllipseSettings(frames=32)
    del config["ellipse_radius_scale"]
    with pytest.raises(KeyError, match="ellipse_radius_scale"):
        EllipseSettings.from_config(config)


def test_diffusion_crop_draws_one_offset_per_clip():
    full = [Camera(intrinsics(500, 500, 480, 270), look_at(np.array([i, 0, 0.0]), np.array([i, 5, 0.0])), 960, 540)
            for i in range(3)]
    offsets = set()
    for seed in range(300):
        clip = diffusion_crop(full, 960, 512, np.random.default_rng(seed))
        shifts = {(480 - c.K[0, 2], 270 - c.K[1, 2]) for c in clip}
        assert len(shifts) == 1 and all((c.width, c.height) == (960, 512) for c in clip)
        offsets |= shifts
    assert {x for x, _ in offsets} == {0} and {y for _, y in offsets} == set(range(28))  # [0, 540 - 512)
    whole = diffusion_crop(full, None, None, np.random.default_rng(0))
    assert all(np.array_equal(a.K, b.K) and (a.width, a.height) == (b.width, b.height) for a, b in zip(whole, full))
    mixed = [full[0], Camera(full[1].K, full[1].c2w, 480, 270)]
    with pytest.raises(ValueError, match="mixes 960x540 and 480x270"):
        diffusion_crop(mixed, 960, 512, np.random.default_rng(0))
