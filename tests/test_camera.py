import numpy as np
import pytest

from gfbench.camera import Camera, intrinsics, look_at


def test_look_at_is_opencv_x_right_y_down_z_forward():
    c2w = look_at(eye=np.array([0.0, -5.0, 0.0]), target=np.zeros(3))  # world z up, looking along +y
    camera = Camera(intrinsics(100, 100, 50, 40), c2w, 100, 80)
    uv, depth = camera.project(np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(uv[0], [50, 40])
    np.testing.assert_allclose(depth, [5, 5, 5])
    assert uv[1, 0] > 50 and uv[1, 1] == pytest.approx(40)  # world +x appears to the right
    assert uv[2, 1] < 40 and uv[2, 0] == pytest.approx(50)  # world up appears above
    np.testing.assert_allclose(uv[1], [50 + 100 * 1 / 5, 40])


def test_crop_keeps_projections_consistent():
    camera = Camera(intrinsics(80, 90, 32, 24), look_at([1, -4, 2], [0, 0, 0]), 64, 48)
    crop = camera.crop(10, 5, 32, 24)
    point = np.array([[0.1, 0.2, 0.3]])
    np.testing.assert_allclose(crop.project(point)[0], camera.project(point)[0] - [10, 5])
    with pytest.raises(ValueError, match="does not lie inside"):
        camera.crop(40, 0, 32, 24)


def test_scaled_camera_scales_pixels():
    camera = Camera(intrinsics(80, 90, 32, 24), look_at([1, -4, 2], [0, 0, 0]), 64, 48)
    half = camera.scaled(32, 24)
    point = np.array([[0.3, -0.2, 0.1]])
    np.testing.assert_allclose(half.project(point)[0], camera.project(point)[0] / 2)


def test_json_round_trip_and_invalid_cameras():
    camera = Camera(intrinsics(80, 90, 32, 24), look_at([1, -4, 2], [0, 0, 0]), 64, 48)
    back = Camera.from_json(camera.to_json())
    np.testing.assert_array_equal(back.c2w, camera.c2w)
    with pytest.raises(ValueError, match="non-finite"):
        Camera(camera.K, np.full((4, 4), np.nan), 64, 48)
