"""FSGS pseudo cameras: the paper's interpolation between nearest train cameras (with noise of the stated size)
and the official code's random poses around the mean camera."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gfbench.camera import Camera, intrinsics, look_at
from gfbench.methods.fsgs.pseudo_views import (
    depth_bounds,
    focus_depth,
    interpolated_pseudo_cameras,
    pseudo_cameras,
    random_pseudo_cameras_around_mean,
)

K = intrinsics(50.0, 50.0, 32.0, 24.0)
# three cameras looking at the origin: 0 and 1 are 1 apart, 2 is 3 from 0 and sqrt(10) from 1, so the pairs
# are 0-1 (from 0 and from 1) and 2-0 (from 2); nothing lies between 1 and 2
EYES = np.array([[0.0, -5.0, 1.0], [1.0, -5.0, 1.0], [0.0, -5.0, 4.0]])
PAIRS = [(0, 1), (0, 2)]


def train_cameras(k=K, size=(64, 48)) -> list[Camera]:
    return [Camera(K=k, c2w=look_at(eye, np.zeros(3)), width=size[0], height=size[1]) for eye in EYES]


def angles(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Geodesic angles between rotation matrices (broadcast over leading axes)."""
    r1, r2 = np.broadcast_arrays(r1, r2)
    return Rotation.from_matrix(np.swapaxes(r1, -1, -2) @ r2).magnitude()


def locate(pseudo: list[Camera], cameras: list[Camera]) -> tuple[list[tuple[int, int]], np.ndarray]:
    """For each pseudo camera, the pair whose rotation geodesic holds its rotation, and the fraction along it
    (independent of the code under test: angles only)."""
    r = np.stack([camera.c2w[:3, :3] for camera in pseudo])
    pairs, fractions = [None] * len(pseudo), np.full(len(pseudo), np.nan)
    for a, b in PAIRS:
        ra, rb = cameras[a].c2w[:3, :3], cameras[b].c2w[:3, :3]
        total = angles(ra, rb)
        to_a, to_b = angles(ra, r), angles(r, rb)
        on_arc = np.abs(to_a + to_b - total) < 1e-7
        for i in np.flatnonzero(on_arc):
            pairs[i], fractions[i] = (a, b), to_a[i] / total
    assert all(pair is not None for pair in pairs), "a pseudo rotation lies on no pair's geodesic"
    return pairs, fractions


def test_noise_free_pseudo_cameras_lie_between_nearest_train_cameras():
    cameras = train_cameras()
    pseudo = interpolated_pseudo_cameras(cameras, np.random.default_rng(0), 300, noise=0.0)
    pairs, fractions = locate(pseudo, cameras)
    assert set(pairs) == set(PAIRS)
    assert fractions.min() < 0.05 and fractions.max() > 0.95  # uniform over the whole segment
    for camera, (a, b), s in zip(pseudo, pairs, fractions):
        expected = (1 - s) * EYES[a] + s * EYES[b]
        np.testing.assert_allclose(camera.center, expected, atol=1e-9)
        template = cameras[a] if s < 0.5 else cameras[b]
        np.testing.assert_array_equal(camera.K, template.K)
        assert (camera.width, camera.height) == (64, 48)
        assert abs(np.linalg.det(camera.c2w[:3, :3]) - 1) < 1e-9


def test_centre_noise_has_the_stated_size_relative_to_the_baseline():
    cameras = train_cameras()
    noise = 0.1
    pseudo = interpolated_pseudo_cameras(cameras, np.random.default_rng(1), 3000, noise=noise)
    residuals = {pair: [] for pair in PAIRS}
    pairs, fractions = locate(pseudo, cameras)  # the rotation carries no noise: it gives the fraction exactly
    for camera, (a, b), s in zip(pseudo, pairs, fractions):
        baseline = np.linalg.norm(EYES[b] - EYES[a])
        residuals[(a, b)].append((camera.center - ((1 - s) * EYES[a] + s * EYES[b])) / baseline)
    for pair, values in residuals.items():
        values = np.array(values)
        assert len(values) > 500
        np.testing.assert_allclose(values.std(axis=0), noise, rtol=0.12)
        np.testing.assert_allclose(values.mean(axis=0), 0.0, atol=0.03)
        assert np.abs(values).max() < 5 * noise


def test_midpoint_setting_is_the_papers_averaged_pose():
    cameras = train_cameras()
    pseudo = interpolated_pseudo_cameras(cameras, np.random.default_rng(2), 20, interpolation_range=(0.5, 0.5),
                                         noise=0.0)
    for camera, (a, b), s in zip(pseudo, *locate(pseudo, cameras)):
        assert s == pytest.approx(0.5, abs=1e-7)
        np.testing.assert_allclose(camera.center, (EYES[a] + EYES[b]) / 2, atol=1e-9)


def test_interpolation_is_seeded_and_checks_its_input():
    cameras = train_cameras()
    first = interpolated_pseudo_cameras(cameras, np.random.default_rng(5), 4)
    again = interpolated_pseudo_cameras(cameras, np.random.default_rng(5), 4)
    assert all(np.array_equal(x.c2w, y.c2w) for x, y in zip(first, again))
    with pytest.raises(ValueError, match="at least two train cameras"):
        interpolated_pseudo_cameras(cameras[:1], np.random.default_rng(0), 1)
    with pytest.raises(ValueError, match="pseudo_interpolation"):
        interpolated_pseudo_cameras(cameras, np.random.default_rng(0), 1, interpolation_range=(0.8, 0.2))


def test_depth_bounds_are_percentiles_of_visible_point_depths():
    camera = Camera(K=K, c2w=np.eye(4), width=64, height=48)  # looks along +z from the origin
    points = np.array([[0.0, 0.0, z] for z in np.linspace(2.0, 12.0, 101)] + [[0.0, 0.0, -5.0], [500.0, 0.0, 3.0]])
    near, far = depth_bounds([camera], points, (0.0, 100.0))  # behind and outside-the-frame points ignored
    assert (near, far) == pytest.approx((2.0, 12.0))
    near, far = depth_bounds([camera], points, (10.0, 90.0))
    assert (near, far) == pytest.approx((3.0, 11.0))
    with pytest.raises(ValueError, match="no point lies"):
        depth_bounds([camera], np.array([[0.0, 0.0, -1.0]]))


def test_random_poses_around_the_mean_stay_in_the_train_box_and_look_at_one_focus_point():
    cameras = train_cameras()
    pseudo = random_pseudo_cameras_around_mean(cameras, np.random.default_rng(3), 500, near=2.0, far=10.0)
    # the mean camera: centre mean of eyes, forward = normalised mean forward, down completed from mean down
    mean = EYES.mean(axis=0)
    forward = np.mean([c.c2w[:3, 2] for c in cameras], axis=0)
    forward /= np.linalg.norm(forward)
    down = np.mean([c.c2w[:3, 1] for c in cameras], axis=0)
    right = np.cross(down, forward)
    right /= np.linalg.norm(right)
    frame = np.stack([right, np.cross(forward, right), forward], axis=1)
    radii = np.abs((EYES - mean) @ frame).max(axis=0)
    focus = 1.0 / (0.25 / (0.9 * 2.0) + 0.75 / (5.0 * 10.0))
    assert focus_depth(2.0, 10.0, near_factor=0.9, far_factor=5.0, disparity_weight=0.75) == pytest.approx(focus)
    target = mean + focus * forward
    offsets = np.array([(c.center - mean) @ frame for c in pseudo])
    assert (np.abs(offsets) <= radii + 1e-9).all()
    assert (np.abs(offsets).max(axis=0) > 0.9 * radii).all()  # uniform in the box: it reaches the faces
    for camera in pseudo:
        to_target = target - camera.center
        np.testing.assert_allclose(camera.c2w[:3, 2], to_target / np.linalg.norm(to_target), atol=1e-9)
        np.testing.assert_allclose(camera.c2w, look_at(camera.center, target, -down), atol=1e-9)
        np.testing.assert_array_equal(camera.K, cameras[0].K)
        assert camera.c2w[:3, 1] @ down > 0  # upright like the train cameras


def test_pseudo_cameras_reads_the_preset_rule():
    cameras = train_cameras()
    config = dict(pseudo_view_rule="interpolate", pseudo_pool_size=7, pseudo_interpolation_min=0.0,
                  pseudo_interpolation_max=1.0, pseudo_noise=0.1)
    assert len(pseudo_cameras(cameras, np.random.default_rng(0), config)) == 7
    code = dict(config, pseudo_view_rule="random-around-mean", pseudo_depth_percentile_low=0.1,
                pseudo_depth_percentile_high=99.9, pseudo_focus_near_factor=0.9, pseudo_focus_far_factor=5.0,
                pseudo_focus_disparity_weight=0.75)
    points = np.random.default_rng(0).uniform(-1, 1, size=(200, 3))
    assert len(pseudo_cameras(cameras, np.random.default_rng(0), code, points)) == 7
    with pytest.raises(ValueError, match="needs scene points"):
        pseudo_cameras(cameras, np.random.default_rng(0), code)
    with pytest.raises(ValueError, match="unknown pseudo_view_rule 'spiral'"):
        pseudo_cameras(cameras, np.random.default_rng(0), dict(config, pseudo_view_rule="spiral"))
