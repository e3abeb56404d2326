"""The 3DGS and 2DGS methods on a tiny analytic scene: a textured ground plane seen from an arc of cameras.

Images are ray-cast in numpy (independent of the rasterizer), 32x24 pixels; initial points are pixels of
the train views lifted onto the plane, as SfM would give. Each method trains once per module (80 steps of
its quick preset with the schedule compressed further); most tests read that run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gfbench.camera import Camera, intrinsics, look_at
from gfbench.methods import load_preset, method_presets
from gfbench.methods.core import losses
from gfbench.methods.core.gaussians import scene_extent, view_volume
from gfbench.methods.core.training import OpacityResettingStrategy, TrainTarget, make_strategy
from gfbench.methods.gs2d import GaussianSurfels2D
from gfbench.methods.gs3d import GaussianSplatting3D
from gfbench.scene import PointCloud
from gfbench.views import View

WIDTH, HEIGHT = 32, 24
METHODS = {"3dgs": GaussianSplatting3D, "2dgs": GaussianSurfels2D}

# the quick preset, compressed further for 32x24 images: densify at steps 30 and 50, no opacity reset in the
# main run (the short determinism runs reset at step 20)
TEST_SCHEDULE = dict(
    steps=80,
    log_every=1,
    sh_degree_interval=20,
    refine_start_iter=20,
    refine_every=20,
    refine_stop_iter=60,
    reset_every=1000,
    dist_start_iter=30,
    normal_start_iter=40,
)
SHORT_SCHEDULE = dict(steps=25, refine_start_iter=5, refine_every=10, refine_stop_iter=24, reset_every=20)


# --- the scene ----------------------------------------------------------------------------------------------
def texture(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smooth color pattern on the plane z = 0, values in [0.15, 0.85]."""
    r = np.sin(2.5 * x + 0.3)
    g = np.sin(2.0 * y + 1.0)
    b = np.cos(1.8 * (x + y))
    return 0.5 + 0.35 * np.stack([r, g, b], axis=-1)


def arc_camera(azimuth_deg: float) -> Camera:
    a = math.radians(azimuth_deg)
    eye = np.array([1.6 * math.cos(a), 1.6 * math.sin(a), 1.8])
    K = intrinsics(24.0, 24.0, WIDTH / 2, HEIGHT / 2)
    return Camera(K=K, c2w=look_at(eye, np.zeros(3)), width=WIDTH, height=HEIGHT)


def plane_hits(camera: Camera, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """World points where the rays through pixel coordinates (u, v) meet the plane z = 0."""
    K, c2w = camera.K, camera.c2w
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1)
    d_world = d_cam @ c2w[:3, :3].T
    origin = c2w[:3, 3]
    t = -origin[2] / d_world[..., 2]
    assert (t > 0).all(), "every pixel must see the plane"
    return origin + t[..., None] * d_world


def render_plane(camera: Camera) -> np.ndarray:
    v, u = np.mgrid[0 : camera.height, 0 : camera.width] + 0.5
    hits = plane_hits(camera, u, v)
    return np.round(texture(hits[..., 0], hits[..., 1]) * 255).astype(np.uint8)


def make_view(name: str, camera: Camera, mask: np.ndarray | None = None) -> View:
    return View(name=name, frame_index=0, image=render_plane(camera), camera=camera, mask=mask)


def lifted_points(views: list[View], count: int, rng: np.random.Generator) -> PointCloud:
    """``count`` random train pixels lifted onto the plane, colored by the texture."""
    xyz = []
    for view in views:
        cam = view.camera
        u = rng.uniform(0, cam.width, count // len(views))
        v = rng.uniform(0, cam.height, count // len(views))
        xyz.append(plane_hits(cam, u, v))
    xyz = np.concatenate(xyz)
    rgb = np.round(texture(xyz[:, 0], xyz[:, 1]) * 255)
    return PointCloud(xyz=xyz, rgb=rgb)


@pytest.fixture(scope="module")
def scene():
    full = [make_view(f"train{i}", arc_camera(a)) for i, a in enumerate(range(0, 100, 12))]
    crops = [
        make_view("crop0", arc_camera(18).crop(6, 2, 20, 16)),
        make_view("crop1", arc_camera(66).crop(0, 8, 26, 16)),
    ]
    train = full + crops
    test = [make_view(f"test{i}", arc_camera(a)) for i, a in enumerate((30, 54, 78))]
    points = lifted_points(full, 120, np.random.default_rng(0))
    return {"train": train, "test": test, "points": points}


def config_for(name: str, **overrides) -> dict:
    return {**load_preset(name, "quick"), **TEST_SCHEDULE, **overrides}


def image_psnr(rgb: np.ndarray, image_u8: np.ndarray) -> float:
    mse = np.mean((np.clip(rgb, 0, 1) - image_u8 / 255.0) ** 2)
    return float(-10 * np.log10(mse))


class Run:
    """A trained method with what the training showed: per step, the Gaussian count and the largest opacity
    after the strategy ran, and the metrics passed to ``progress``."""

    def __init__(self, method, counts, max_opacity, progress):
        self.method, self.counts, self.max_opacity, self.progress = method, counts, max_opacity, progress


def train(name: str, scene, tmp_path, seed: int = 0, **overrides) -> Run:
    counts, max_opacity, progress = {}, {}, []
    original = OpacityResettingStrategy.step_post_backward

    def spy(self, params, optimizers, state, step, info, packed=False):
        original(self, params, optimizers, state, step, info, packed=packed)
        counts[step] = len(params["means"])
        max_opacity[step] = float(torch.sigmoid(params["opacities"].detach()).max())

    method = METHODS[name](device="cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(OpacityResettingStrategy, "step_post_backward", spy)
        method.fit(
            scene["train"],
            points=scene["points"],
            config=config_for(name, **overrides),
            seed=seed,
            workdir=tmp_path,
            progress=lambda step, metrics: progress.append((step, metrics)),
        )
    return Run(method, counts, max_opacity, progress)


@pytest.fixture(scope="module", params=sorted(METHODS))
def run(request, scene, tmp_path_factory):
    return train(request.param, scene, tmp_path_factory.mktemp(request.param))


# --- training results ---------------------------------------------------------------------------------------
def test_train_psnr_climbs_well_above_its_start(run, scene):
    start = np.mean([metrics["psnr"] for _, metrics in run.progress[:5]])
    renders = run.method.render([v.camera for v in scene["train"]])
    final = [image_psnr(r.rgb, v.image) for r, v in zip(renders, scene["train"])]
    assert min(final) > start + 6.0, (start, final)


def test_crop_views_train_like_full_ones(run, scene):
    train = scene["train"]
    renders = run.method.render([v.camera for v in train])
    full = [image_psnr(r.rgb, v.image) for r, v in zip(renders, train) if not v.name.startswith("crop")]
    crops = [(r, v) for r, v in zip(renders, train) if v.name.startswith("crop")]
    for render, view in crops:
        assert render.rgb.shape == view.image.shape
        assert image_psnr(render.rgb, view.image) > min(full) - 1.0


def test_a_crop_camera_renders_the_crop_of_the_full_frame(run):
    """Up to gsplat's approximations that depend on the image box (3DGS clamps the projection Jacobian at
    1.3x the field of view; 2DGS evaluates a surfel over whole 16x16 tiles), a crop camera sees the crop.
    A crop that forgets to move the principal point is far off."""
    camera = arc_camera(18)
    (whole,) = run.method.render([camera])
    crop = camera.crop(6, 2, 20, 16)
    unshifted = Camera(K=camera.K, c2w=camera.c2w, width=crop.width, height=crop.height)
    (good,), (bad,) = run.method.render([crop]), run.method.render([unshifted])
    expected = whole.rgb[2:18, 6:26]
    error, wrong = np.abs(good.rgb - expected).mean(), np.abs(bad.rgb - expected).mean()
    assert error < 0.01 and error < 0.2 * wrong, (error, wrong)
    depth_error = np.abs(good.depth - whole.depth[2:18, 6:26]) / whole.depth[2:18, 6:26]
    assert np.median(depth_error) < 0.01


def test_test_views_beat_the_mean_color_image(run, scene):
    mean_color = np.mean([v.image.reshape(-1, 3).mean(axis=0) for v in scene["train"]], axis=0) / 255.0
    renders = run.method.render([v.camera for v in scene["test"]])
    for render, view in zip(renders, scene["test"]):
        baseline = image_psnr(np.broadcast_to(mean_color, view.image.shape), view.image)
        assert image_psnr(render.rgb, view.image) > baseline + 4.0


def test_render_returns_full_frame_rgb_and_plane_depth(run, scene):
    view = scene["test"][0]
    (render,) = run.method.render([view.camera])
    assert render.rgb.shape == (HEIGHT, WIDTH, 3) and render.rgb.dtype == np.float32
    assert render.depth.shape == (HEIGHT, WIDTH) and render.depth.dtype == np.float32
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH] + 0.5
    hits = plane_hits(view.camera, u, v)
    true_depth = (hits - view.camera.center) @ view.camera.c2w[:3, 2]
    relative_error = np.abs(render.depth - true_depth) / true_depth
    assert np.median(relative_error) < 0.1


def test_progress_reports_loss_and_psnr_every_step(run):
    steps = [step for step, _ in run.progress]
    assert steps == list(range(1, TEST_SCHEDULE["steps"] + 1))
    assert all(np.isfinite(m["loss"]) and np.isfinite(m["psnr"]) for _, m in run.progress)


def test_densification_changes_the_gaussian_count(run, scene):
    before = run.counts[TEST_SCHEDULE["refine_start_iter"]]
    assert before == len(scene["points"])
    refine_steps = range(TEST_SCHEDULE["refine_start_iter"] + 1, TEST_SCHEDULE["refine_stop_iter"])
    assert any(run.counts[s] != run.counts[s - 1] for s in refine_steps if s % TEST_SCHEDULE["refine_every"] == 0)
    quiet_steps = [s for s in refine_steps if s % TEST_SCHEDULE["refine_every"] != 0]
    assert all(run.counts[s] == run.counts[s - 1] for s in quiet_steps)


def test_regularizers_switch_on_after_their_start(run):
    metrics = dict(run.progress)
    dist_start, normal_start = TEST_SCHEDULE["dist_start_iter"], TEST_SCHEDULE["normal_start_iter"]
    if run.method.name == "3dgs":
        assert not any("dist" in m or "normal" in m for m in metrics.values())
        return
    # progress reports step + 1 after step; a term is on once step > its start
    assert "dist" not in metrics[dist_start + 1] and metrics[dist_start + 2]["dist"] > 0
    assert "normal" not in metrics[normal_start + 1] and metrics[normal_start + 2]["normal"] > 0


# --- short runs: determinism and opacity reset ------------------------------------------------------------------
@pytest.fixture(scope="module", params=sorted(METHODS))
def short_runs(request, scene, tmp_path_factory):
    """Two runs with seed 3 and one with seed 4 (only a few steps: the view order differs from step 0)."""
    tmp = tmp_path_factory.mktemp(f"short-{request.param}")
    a = train(request.param, scene, tmp / "a", seed=3, **SHORT_SCHEDULE)
    b = train(request.param, scene, tmp / "b", seed=3, **SHORT_SCHEDULE)
    c = train(request.param, scene, tmp / "c", seed=4, **{**SHORT_SCHEDULE, "steps": 3})
    return a, b, c


def same_params(a, b) -> bool:
    return all(torch.equal(a.params[key], b.params[key]) for key in a.params)


def test_same_seed_same_result_other_seed_differs(short_runs, scene):
    a, b, c = (r.method for r in short_runs)
    assert a.num_gaussians != len(scene["points"]), "the run should have densified"
    assert same_params(a, b)
    assert not same_params(a, c)
    camera = scene["test"][0].camera
    ra, rb = a.render([camera])[0], b.render([camera])[0]
    assert np.array_equal(ra.rgb, rb.rgb) and np.array_equal(ra.depth, rb.depth)


def test_opacity_reset_happens_at_reset_every(short_runs):
    run = short_runs[0]
    reset = SHORT_SCHEDULE["reset_every"]
    value = run.method.config["reset_opacity"]
    assert run.max_opacity[reset - 1] > 2 * value
    assert run.max_opacity[reset] <= value + 1e-6
    assert run.max_opacity[SHORT_SCHEDULE["steps"] - 1] > value  # and opacities are free to grow again


# --- masks ----------------------------------------------------------------------------------------------------
def masked_target(view: View, mask: np.ndarray, image: np.ndarray) -> TrainTarget:
    return TrainTarget.from_view(View(view.name, 0, image, view.camera, mask=mask), "cpu")


def test_masked_pixels_do_not_reach_the_loss(run, scene):
    method = run.method
    view = scene["train"][0]
    mask = np.ones((HEIGHT, WIDTH), bool)
    mask[8:20, 10:30] = False
    other = view.image.copy()
    other[~mask] = 255 - other[~mask]  # differs from the view only where masked
    step = method.config["steps"]  # late: every regularizer is on
    params = list(method.params.values())

    def loss_and_grads(image, mask):
        target = masked_target(view, mask, image)
        rendered = method.rasterize(target.viewmat, target.K, WIDTH, HEIGHT, method.sh_degree)
        maps = [m for m in (rendered.rgb, rendered.alpha, *rendered.extras.values()) if m.requires_grad]
        loss, _ = method.loss(rendered, target, step)
        grads = torch.autograd.grad(loss, params + maps, allow_unused=True)
        return loss, grads[: len(params)], grads[len(params) :]

    loss_a, grads_a, map_grads = loss_and_grads(view.image, mask)
    loss_b, grads_b, _ = loss_and_grads(other, mask)
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(ga, gb) for ga, gb in zip(grads_a, grads_b))
    for grad in map_grads:  # no gradient reaches a masked pixel of any rendered map
        if grad is not None:
            assert grad[torch.as_tensor(~mask)].abs().max() == 0
    assert sum(g is not None for g in map_grads) >= (3 if method.name == "2dgs" else 1)
    # without the mask the changed pixels do matter
    loss_c, grads_c, _ = loss_and_grads(other, None)
    assert loss_c > loss_b
    assert not all(torch.equal(ga, gc) for ga, gc in zip(grads_a, grads_c))


def test_masked_loss_ignores_masked_pixels_and_counts_valid_ones():
    gen = torch.Generator().manual_seed(0)
    render = torch.rand(20, 24, 3, generator=gen, requires_grad=True)
    target = torch.rand(20, 24, 3, generator=gen)
    mask = torch.ones(20, 24, dtype=torch.bool)
    mask[5:12, 3:9] = False
    noisy = torch.where(mask[..., None], target, torch.rand(20, 24, 3, generator=gen))
    kw = dict(ssim_lambda=0.2, ssim_window=11, ssim_sigma=1.5)
    loss_a, l1_a = losses.photometric_loss(render, target, mask, **kw)
    loss_b, _ = losses.photometric_loss(render, noisy, mask, **kw)
    assert torch.equal(loss_a, loss_b)
    expected_l1 = (render - target).abs()[mask].mean()
    assert torch.allclose(l1_a, expected_l1)
    loss_a.backward()
    assert render.grad[~mask].abs().max() == 0 and render.grad[mask].abs().max() > 0


# --- pieces ---------------------------------------------------------------------------------------------------
def test_ssim_matches_scikit_image_away_from_the_border():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    a = rng.random((30, 40, 3))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    _, reference = structural_similarity(
        a, b, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True
    )
    ours = losses.ssim_map(
        torch.as_tensor(a).permute(2, 0, 1)[None], torch.as_tensor(b).permute(2, 0, 1)[None], window_size=11, sigma=1.5
    )[0].permute(1, 2, 0)
    np.testing.assert_allclose(ours.numpy()[5:-5, 5:-5], reference[5:-5, 5:-5], atol=1e-6)


def fake_info(n: int, grad: float) -> dict:
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    means2d.grad = torch.full((1, n, 2), grad)
    return {"means2d": means2d, "radii": torch.ones(1, n, 2, dtype=torch.int32), "width": 48, "height": 32,
            "n_cameras": 1, "gaussian_ids": None}


def strategy_and_params(n: int = 6):
    config = {**load_preset("3dgs", "paper"), "reset_every": 50, "refine_start_iter": 1000}
    strategy = make_strategy(config, gradient_key="means2d")
    params = torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(torch.zeros(n, 3)),
            "scales": torch.nn.Parameter(torch.full((n, 3), -3.0)),
            "quats": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)),
            "opacities": torch.nn.Parameter(torch.full((n,), 2.0)),
        }
    )
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    for p in params.values():
        p.grad = torch.ones_like(p)
    for opt in optimizers.values():
        opt.step()
    return strategy, params, optimizers, strategy.initialize_state(scene_scale=1.0)


def test_strategy_resets_opacity_exactly_at_multiples_of_reset_every():
    strategy, params, optimizers, state = strategy_and_params()
    for step in (1, 49, 51):
        strategy.step_post_backward(params, optimizers, state, step, fake_info(6, 0.0))
        assert torch.sigmoid(params["opacities"]).min() > 0.8, step
    strategy.step_post_backward(params, optimizers, state, 50, fake_info(6, 0.0))
    assert torch.allclose(torch.sigmoid(params["opacities"]), torch.tensor(0.01))
    moments = optimizers["opacities"].state[params["opacities"]]
    assert moments["exp_avg"].abs().max() == 0 and moments["exp_avg_sq"].abs().max() == 0


def test_strategy_does_not_reset_after_refining_stops():
    strategy, params, optimizers, state = strategy_and_params()
    strategy.refine_stop_iter = 100
    strategy.step_post_backward(params, optimizers, state, 150, fake_info(6, 0.0))
    assert torch.sigmoid(params["opacities"]).min() > 0.8


def test_scene_extent_is_1p1_times_the_largest_distance_to_the_mean_center():
    cams = [arc_camera(0), arc_camera(180)]
    assert scene_extent(cams, 1.1) == pytest.approx(1.1 * 1.6)


def test_random_init_fills_the_view_volume_when_points_are_missing_or_few(scene, tmp_path):
    views = scene["train"][:3]
    config = config_for("3dgs", steps=1, init_random_points=300, init_min_points=10, save_checkpoint=True)
    method = GaussianSplatting3D()
    method.fit(views, points=None, config=config, seed=0, workdir=tmp_path)
    assert method.num_gaussians == 300
    low, high = view_volume([v.camera for v in views], method.extent)
    means = method.params["means"].detach().numpy()
    assert (means >= low - 0.1).all() and (means <= high + 0.1).all()  # one step may move them a little
    saved = torch.load(tmp_path / "gaussians.pt")
    assert saved["method"] == "3dgs" and torch.equal(saved["params"]["means"], method.params["means"].detach())

    few = PointCloud(xyz=scene["points"].xyz[:5], rgb=scene["points"].rgb[:5])
    method.fit(views, points=few, config=config, seed=0, workdir=tmp_path)
    assert method.num_gaussians == 305
    enough = PointCloud(xyz=scene["points"].xyz[:10], rgb=scene["points"].rgb[:10])
    method.fit(views, points=enough, config=config, seed=0, workdir=tmp_path)
    assert method.num_gaussians == 10


@pytest.mark.parametrize("name", sorted(METHODS))
def test_methods_are_registered_and_every_preset_has_the_keys_the_code_reads(name, scene, tmp_path):
    from gfbench.methods import Method, load_method_class

    cls = load_method_class(name)
    assert cls is METHODS[name] and isinstance(cls(device="cpu"), Method) and cls.name == name
    presets = method_presets(name).presets
    assert {"paper", "quick"} <= set(presets)
    for preset in presets:
        config = load_preset(name, preset)
        method = cls(device="cpu")
        method.fit(scene["train"][:2], points=scene["points"], config={**config, "steps": 1}, seed=0, workdir=tmp_path)
        assert method.num_gaussians == len(scene["points"])
