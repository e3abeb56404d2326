import numpy as np
import pytest
from click.testing import CliRunner

from gfbench import shards, specs
from gfbench.camera import Camera, intrinsics, look_at
from gfbench.cli import main
from gfbench.synthetic import Rectangle, Sphere, build_scene, render_frame, build_surfaces


def small_options(frames=3):
    options = dict(specs.load_dataset("synthetic").options)
    return {**options, "frames": frames, "points_per_scene": 400, "supersample": 1}


def test_build_is_deterministic_to_the_byte(tmp_path):
    options = small_options()
    for out in ("a", "b"):
        shards.write_scene(build_scene("tabletop", options, 64, 36), tmp_path / out)
    first = (tmp_path / "a" / "synthetic" / "tabletop.tar").read_bytes()
    assert first == (tmp_path / "b" / "synthetic" / "tabletop.tar").read_bytes()


def test_different_seed_changes_the_points():
    a = build_scene("room", small_options(), 32, 18)
    b = build_scene("room", {**small_options(), "seed": 1}, 32, 18)
    assert not np.array_equal(a.points.xyz, b.points.xyz)


def test_known_point_projects_to_its_pixel_with_matching_depth():
    """A textured wall at y = 2 seen head-on: the pixel where a wall point projects has that point's depth."""
    wall = {"type": "rectangle", "origin": [-5, 2, -5], "edge_u": [10, 0, 0], "edge_v": [0, 0, 10],
            "texture": {"image": "astronaut"}}
    surfaces = build_surfaces([wall])
    camera = Camera(intrinsics(40, 40, 32, 24), look_at([0, -2, 0], [0, 2, 0]), 64, 48)
    image, depth = render_frame(surfaces, camera, 1, {"direction": [0, -1, 0], "ambient": 0.3, "diffuse": 0.7})
    point = np.array([[1.0, 2.0, 0.5]])  # on the wall, 4 m in front of the camera
    (u, v), z = camera.project(point)[0][0], camera.project(point)[1][0]
    assert z == pytest.approx(4.0)
    assert (u, v) == pytest.approx((32 + 40 * 1 / 4, 24 - 40 * 0.5 / 4))  # right and up of center
    assert depth[int(v), int(u)] == pytest.approx(4.0, rel=1e-6)
    assert image.std() > 10  # textured, not flat


def test_sphere_depth_matches_geometry():
    sphere = Sphere([0, 3, 0], 1.0)
    origins = np.zeros((1, 3))
    hit = sphere.intersect(origins, np.array([[0.0, 1.0, 0.0]]))
    assert hit.t[0] == pytest.approx(2.0)
    np.testing.assert_allclose(hit.normal[0], [0, -1, 0], atol=1e-12)


def test_rectangle_misses_outside_its_edges():
    rect = Rectangle([0, 0, 0], [1, 0, 0], [0, 1, 0])
    dirs = np.array([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    hit = rect.intersect(np.array([[0.5, 0.5, 1.0], [1.5, 0.5, 1.0]]), dirs)
    assert hit.t[0] == pytest.approx(1.0) and np.isinf(hit.t[1])


def test_observations_are_real_sightings():
    scene = build_scene("tabletop", small_options(frames=4), 64, 36)
    cloud = scene.points
    assert cloud.has_observations and len(cloud) == 400
    for frame_index in range(4):
        frame = scene.frames[frame_index]
        seen = cloud.obs_frame == frame_index
        uv, z = frame.camera.project(cloud.xyz[cloud.obs_point[seen]])
        np.testing.assert_allclose(uv, cloud.obs_uv[seen], atol=1e-3)
        px, py = uv[:, 0].astype(int), uv[:, 1].astype(int)
        np.testing.assert_allclose(frame.depth[py, px], z, rtol=0.011)


def test_frames_are_real_images_with_depth():
    scene = build_scene("courtyard", small_options(), 64, 36)
    for frame in scene.frames:
        assert frame.image.std() > 15
        assert (frame.depth > 0).mean() > 0.99  # the sky dome closes the scene
    assert len(scene.frames) == 3 and scene.frame_names == sorted(scene.frame_names)


def test_cli_build_and_show(tmp_path, monkeypatch):
    """`gfbench build-data synthetic` then `gfbench show` on one small scene."""
    spec = specs.load_dataset("synthetic")
    small = specs.DatasetSpec(**{**spec.__dict__, "resolution": (48, 27), "options": small_options()})
    monkeypatch.setattr(specs, "load_dataset", lambda dataset_id: small)
    runner = CliRunner()
    result = runner.invoke(main, ["build-data", "synthetic", "--out", str(tmp_path), "--scene", "room"])
    assert result.exit_code == 0, result.output
    assert shards.list_built_scenes(tmp_path, "synthetic") == ["room"]
    sheet = tmp_path / "sheet.png"
    result = runner.invoke(main, ["show", "synthetic/room", "--data", str(tmp_path), "--out", str(sheet)])
    assert result.exit_code == 0, result.output
    from PIL import Image

    assert Image.open(sheet).width >= 2 * 48
    result = runner.invoke(main, ["show", "synthetic/attic", "--data", str(tmp_path)])
    assert result.exit_code != 0 and "no synthetic scene 'attic'" in result.output
