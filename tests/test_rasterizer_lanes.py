"""The ``lanes`` compositing (GFBENCH_CPU_COMPOSITING) of 3DGS and 2DGS: the C kernels against the ``spans``
kernels (both against the dense references: test_rasterizer_cpu's ``compositing`` fixture), ``auto`` and the errors
where they cannot run, and the records that name which one a job ran.

The kernel tests need AVX-512 and gcc (they are skipped elsewhere, saying which is missing); the rest run
anywhere."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from gfbench import results
from gfbench.methods.core import lanes
from gfbench.methods.core.rasterize import rasterize_2dgs, rasterize_3dgs
from test_leaderboard import PRESETS, presets, spec  # noqa: F401 (fixtures)
from test_rasterizer_cpu import (
    DT, H, W, _edge_on_surfels, assert_grads_close, grads_of, make_cameras, make_scene, ref_render_3dgs,
    weighted_loss,
)

MISSING = lanes.missing_requirement()
needs_lanes = pytest.mark.skipif(MISSING is not None, reason=f"lanes kernels unavailable: {MISSING}")


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def use_lanes(monkeypatch):
    monkeypatch.setenv(lanes.ENV, "lanes")


@pytest.fixture
def lanes_missing(monkeypatch):
    """A machine where the lanes kernels cannot run."""
    monkeypatch.setattr(lanes, "_library", None)
    monkeypatch.setattr(lanes, "_unavailable", None)
    monkeypatch.setattr(lanes, "missing_requirement", lambda: "this CPU (generic) lacks avx512f")


def render_and_grads(scene, viewmats, Ks, **kwargs):
    colors, alphas, _ = rasterize_3dgs(*scene.values(), viewmats, Ks, W, H, render_mode="RGB+ED", **kwargs)
    outputs = [colors[..., :3], colors[..., 3:] * alphas.detach(), alphas]
    return colors.detach(), alphas.detach(), grads_of(weighted_loss(outputs), scene), outputs


@needs_lanes
@pytest.mark.parametrize("opaque", [False, True], ids=["mixed-opacities", "alphas-clamped"])
def test_lanes_agree_with_spans_to_float64_rounding(monkeypatch, use_lanes, opaque):
    """Two cameras, partial tiles, Gaussians dense enough that pixels reach the stop rule (and, with opacities
    of 0.9995, alphas clamped at 0.999 near every centre, which pass no gradient): images and every gradient
    within 1e-12 of the spans kernels' (they differ only in how exp(-sigma) is rounded), and the lanes kernels
    really ran (their outputs are not the spans kernels' bits)."""
    scene = make_scene(800, seed=7, size=3.0)
    if opaque:
        with torch.no_grad():
            scene["opacities"][7:] = 0.9995
    viewmats, Ks = make_cameras()
    lanes_out = render_and_grads(scene, viewmats, Ks)
    monkeypatch.setenv(lanes.ENV, "spans")
    spans_out = render_and_grads(scene, viewmats, Ks)
    assert (spans_out[1] > 1 - 1.01e-4).sum() > 10, "no pixel reached the stop rule (T <= 1e-4)"
    for got, want in ((lanes_out[0], spans_out[0]), (lanes_out[1], spans_out[1])):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert_grads_close(lanes_out[2], spans_out[2], rtol=1e-12)
    assert not torch.equal(lanes_out[0], spans_out[0])


@needs_lanes
def test_the_backward_uses_the_forwards_kernels(monkeypatch, use_lanes):
    """Switching $GFBENCH_CPU_COMPOSITING between a forward and its backward changes nothing: the backward
    follows its forward (whose saved state it reads)."""
    scene = make_scene(200, seed=2)
    viewmats, Ks = make_cameras()
    _, _, expected, _ = render_and_grads(scene, viewmats, Ks)
    colors, alphas, _ = rasterize_3dgs(*scene.values(), viewmats, Ks, W, H, render_mode="RGB+ED")
    monkeypatch.setenv(lanes.ENV, "spans")
    got = grads_of(weighted_loss([colors[..., :3], colors[..., 3:] * alphas.detach(), alphas]), scene)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


@needs_lanes
def test_other_feature_counts_keep_the_spans_kernels(monkeypatch, use_lanes):
    """RGB only (3 features) is not what the lanes kernels composite: the spans kernels' exact bits."""
    scene = make_scene(150, seed=4)
    viewmats, Ks = make_cameras()
    rgb_lanes, _, _ = rasterize_3dgs(*scene.values(), viewmats, Ks, W, H, render_mode="RGB")
    monkeypatch.setenv(lanes.ENV, "spans")
    rgb_spans, _, _ = rasterize_3dgs(*scene.values(), viewmats, Ks, W, H, render_mode="RGB")
    assert torch.equal(rgb_lanes, rgb_spans)


@needs_lanes
def test_the_kernels_are_built_once_then_loaded_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(lanes, "_library", None)
    monkeypatch.setattr(lanes, "_unavailable", None)
    lanes.library()
    built = list((tmp_path / "gfbench" / "kernels").glob("lanes-*.so"))
    assert len(built) == 1 and not list(built[0].parent.glob("tmp*"))  # no half-built leftovers
    monkeypatch.setattr(lanes, "_library", None)
    real_run = lanes.subprocess.run

    def no_compiling(command, **kwargs):
        if "-o" in command:
            pytest.fail("rebuilt although cached")
        return real_run(command, **kwargs)  # gcc --version: part of the cache key

    monkeypatch.setattr(lanes.subprocess, "run", no_compiling)
    assert lanes.library().lanes_3dgs_fwd is not None


def test_an_unknown_compositing_is_refused(monkeypatch):
    monkeypatch.setenv(lanes.ENV, "simd")
    with pytest.raises(ValueError, match=r"GFBENCH_CPU_COMPOSITING must be one of auto, spans, lanes, got 'simd'"):
        lanes.compositing()


def test_lanes_where_they_cannot_run_is_an_error_that_says_why(monkeypatch, lanes_missing):
    monkeypatch.setenv(lanes.ENV, "lanes")
    scene = make_scene(50)
    viewmats, Ks = make_cameras()
    with pytest.raises(lanes.LanesUnavailable, match=r"lacks avx512f; use GFBENCH_CPU_COMPOSITING=spans \(or auto\)"):
        rasterize_3dgs(*scene.values(), viewmats, Ks, W, H, render_mode="RGB+ED")


def test_auto_renders_with_spans_where_lanes_cannot_run(monkeypatch, lanes_missing):
    """The default (auto) on such a machine: the spans kernels, to the bit."""
    monkeypatch.delenv(lanes.ENV, raising=False)
    assert lanes.compositing() == "auto" and lanes.active() == "spans"
    scene = make_scene(120, seed=3)
    viewmats, Ks = make_cameras()
    auto = render_and_grads(scene, viewmats, Ks)
    monkeypatch.setenv(lanes.ENV, "spans")
    spans = render_and_grads(scene, viewmats, Ks)
    assert torch.equal(auto[0], spans[0]) and all(torch.equal(auto[2][k], spans[2][k]) for k in spans[2])


def test_a_run_planned_with_lanes_where_they_cannot_run_stops_before_any_job(monkeypatch, spec,  # noqa: F811
                                                                             lanes_missing):
    from gfbench import runner

    monkeypatch.setenv(lanes.ENV, "lanes")
    monkeypatch.setattr(runner, "resolve_config", lambda *a, **k: dict(PRESETS[spec.preset]))
    with pytest.raises(lanes.LanesUnavailable, match="lacks avx512f"):
        runner.plan_jobs(spec, ["3dgs"], None, None, None, {})
    monkeypatch.setenv(lanes.ENV, "auto")  # auto plans anywhere
    assert [job.cpu_compositing for job in runner.plan_jobs(spec, ["3dgs"], ["room"], [0], None, {})] == ["auto"]


def test_the_compositing_is_set_for_the_block_and_restored(monkeypatch):
    monkeypatch.delenv(lanes.ENV, raising=False)
    with lanes.using("lanes"):
        assert lanes.compositing() == "lanes"
    assert lanes.ENV not in os.environ
    monkeypatch.setenv(lanes.ENV, "lanes")
    with lanes.using("spans"):
        assert lanes.compositing() == "spans"
    assert lanes.compositing() == "lanes"


def test_a_job_runs_the_compositing_it_was_planned_with_and_its_record_names_it(tmp_path, monkeypatch,
                                                                              spec):  # noqa: F811
    """The job carries the compositing asked for when it was planned (a cluster worker's environment may say
    otherwise); its record names the one that ran, beside the host. The identity (and so the record's hash)
    does not depend on it: on the published suites both give the same numbers to the last digit."""
    from gfbench import runner

    seen = []
    monkeypatch.setattr(runner.shards, "scene_sha256", lambda root, dataset, scene: "0" * 64)
    monkeypatch.setattr(runner, "load_scene", lambda dataset, scene, root: object())
    monkeypatch.setattr(runner, "fit_and_score", lambda job, scene, workdir, device, on_step: seen.append(
        lanes.compositing()) or {"metrics": {"psnr": 21.0, "ssim": 0.8, "lpips_vgg_3dgs": 0.2}, "per_image": []})
    monkeypatch.setenv(lanes.ENV, "lanes")  # the worker's environment
    job = runner.Job(spec, "room", "3dgs", 0, dict(PRESETS[spec.preset]), spec.preset, cpu_compositing="spans")
    outcome = runner.run_job(job, tmp_path, tmp_path / "data", "cpu", overwrite=False, lpips_hashes={})
    assert outcome.status == "ok" and seen == ["spans"] and lanes.compositing() == "lanes"
    record = results.read_record(outcome.path)
    assert record["cpu_compositing"] == "spans" and "host" in record
    assert "cpu_compositing" not in record["identity"]
    other = runner.Job(spec, "room", "3dgs", 0, dict(PRESETS[spec.preset]), spec.preset, cpu_compositing="lanes")
    assert other.identity("0" * 64) == job.identity("0" * 64)


def needles(n: int = 60, seed: int = 11) -> dict[str, torch.Tensor]:
    """Thin, long Gaussians at every angle (0.2-1.2 px wide on screen, 10-600 px long), many with their mean far
    outside the image: within a tile exp(-sigma) spans hundreds of orders of magnitude, where a row recurrence
    started from a clamped exp or stepped by overflowing factors goes wrong."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=g, dtype=DT)  # noqa: E731
    z = 2.0 + 2.0 * rand(n)
    far = torch.where(rand(n) < 0.5, 1.0, 0.0) * (rand(n) - 0.5) * 40.0  # up to ~600 px off the image
    means = torch.stack([(rand(n) - 0.5) * 2.0 + far, (rand(n) - 0.5) * 1.5, z], dim=-1)
    angle = rand(n) * math.pi
    quats = torch.stack([torch.cos(angle / 2), torch.zeros(n, dtype=DT), torch.zeros(n, dtype=DT),
                         torch.sin(angle / 2)], dim=-1)  # about the optical axis
    length = torch.exp(math.log(0.3) + rand(n) * math.log(90.0))
    width = 0.004 + 0.015 * rand(n)
    scales = torch.stack([length, width, width], dim=-1)
    params = dict(means=means, quats=quats, scales=scales, opacities=0.3 + 0.69 * rand(n), colors=rand(n, 3))
    return {k: v.requires_grad_() for k, v in params.items()}


@needs_lanes
def test_needles_far_reaching_gaussians_match_spans_and_the_dense_reference(monkeypatch, use_lanes):
    scene = needles()
    viewmats, Ks = make_cameras()
    lanes_out = render_and_grads(scene, viewmats, Ks)
    monkeypatch.setenv(lanes.ENV, "spans")
    spans_out = render_and_grads(scene, viewmats, Ks)
    assert (spans_out[1] > 0.5).sum() > 50, "the needles cover too little of the image to test anything"
    torch.testing.assert_close(lanes_out[0], spans_out[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(lanes_out[1], spans_out[1], rtol=0, atol=1e-12)
    # the recurrence's rounding grows with |b dx| (up to RECURRENCE_RANGE) and the gradient sums cancel: 1e-8 is
    # still far below float32's 6e-8, where these gradients end
    assert_grads_close(lanes_out[2], spans_out[2], rtol=1e-8)
    ref_colors, ref_alphas = ref_render_3dgs(scene, viewmats, Ks)
    torch.testing.assert_close(lanes_out[1], ref_alphas, rtol=0, atol=1e-5)


def render_and_grads_2dgs(scene, viewmats, Ks, render_mode="RGB+ED"):
    """Every 2DGS output (colours + depth, alphas, normals, distortion, median depth) and the gradients of a random
    loss of them, gsplat's ``gradient_2dgs`` dummy included."""
    colors, alphas, normals, _, distort, median, info = rasterize_2dgs(
        *scene.values(), viewmats, Ks, W, H, render_mode=render_mode)
    outputs = [colors, alphas, normals, distort, median]
    grads = grads_of(weighted_loss(outputs), {**scene, "densify": info["gradient_2dgs"]})
    return [o.detach() for o in outputs], grads


@needs_lanes
@pytest.mark.parametrize("case", ["mixed-opacities", "alphas-clamped", "edge-on"])
def test_2dgs_lanes_agree_with_spans_to_float64_rounding(monkeypatch, use_lanes, case):
    """Two cameras, partial tiles, surfels dense enough that pixels reach the stop rule; with opacities of 0.9995
    alphas clamped at 0.999 (which pass no gradient); or surfels seen edge-on, whose images are no bounded ellipse
    (the lanes kernels then evaluate whole tiles). Every output and gradient within 1e-12 of the spans kernels', and
    the lanes kernels really ran (not the spans kernels' bits)."""
    scene = make_scene(800, seed=7, size=4.0)
    if case == "alphas-clamped":
        with torch.no_grad():
            scene["opacities"][7:] = 0.9995
    if case == "edge-on":
        scene = _edge_on_surfels(scene, n=40)
    viewmats, Ks = make_cameras()
    lanes_out, lanes_grads = render_and_grads_2dgs(scene, viewmats, Ks)
    monkeypatch.setenv(lanes.ENV, "spans")
    spans_out, spans_grads = render_and_grads_2dgs(scene, viewmats, Ks)
    assert (spans_out[1] > 1 - 1.01e-4).sum() > 10, "no pixel reached the stop rule (T <= 1e-4)"
    for name, got, want in zip(("colors", "alphas", "normals", "distort", "median"), lanes_out, spans_out):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=lambda m: f"{name}: {m}")
    assert_grads_close(lanes_grads, spans_grads, rtol=1e-12)
    assert not torch.equal(lanes_out[0], spans_out[0])


@needs_lanes
def test_the_2dgs_backward_uses_the_forwards_kernels(monkeypatch, use_lanes):
    scene = make_scene(200, seed=2, size=2.0)
    viewmats, Ks = make_cameras()
    _, expected = render_and_grads_2dgs(scene, viewmats, Ks)
    colors, alphas, normals, _, distort, median, info = rasterize_2dgs(
        *scene.values(), viewmats, Ks, W, H, render_mode="RGB+ED")
    monkeypatch.setenv(lanes.ENV, "spans")
    tensors = {**scene, "densify": info["gradient_2dgs"]}
    got = grads_of(weighted_loss([colors, alphas, normals, distort, median]), tensors)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


@needs_lanes
def test_2dgs_colour_only_renders_keep_the_spans_kernels(monkeypatch, use_lanes):
    scene = make_scene(150, seed=4, size=2.0)
    viewmats, Ks = make_cameras()
    with_lanes, _ = render_and_grads_2dgs(scene, viewmats, Ks, render_mode="RGB")
    monkeypatch.setenv(lanes.ENV, "spans")
    with_spans, _ = render_and_grads_2dgs(scene, viewmats, Ks, render_mode="RGB")
    assert all(torch.equal(a, b) for a, b in zip(with_lanes, with_spans))


def surfel_rows_2dgs(rng, n: int, focal: float, width: int, height: int, kind: str):
    """n surfel rows (the kernels' layout: mean2d, M, opacity, RGB, depth, normal) of random surfels in front of a
    pinhole camera. ``edge``: half of them with their plane through, or within 1e-12 to 1e-3 of, the camera centre
    (images that are lines, hyperbolas or near-parabolas); ``far``: a third with their means2d up to 200 px off
    (the low-pass disk away from the splat); ``opacity``: opacities at 1/255, just above it and 0.9995."""
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]])
    rows = np.zeros((n, 19))
    for i in range(n):
        mean = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.3, 3)])
        frame = np.linalg.qr(rng.standard_normal((3, 3)))[0]
        tu, tv = frame[:, 0] * np.exp(rng.uniform(-6, 0.5)), frame[:, 1] * np.exp(rng.uniform(-6, 0.5))
        if kind == "edge" and rng.random() < 0.5:
            normal = np.cross(tu, tv) / np.linalg.norm(np.cross(tu, tv))
            mean -= normal * (normal @ mean) * (1 - (0.0 if rng.random() < 0.5 else 10.0 ** rng.uniform(-12, -3)))
        M = K @ np.stack([tu, tv, mean], axis=1)
        rows[i, 0:2] = M[0, 2] / M[2, 2], M[1, 2] / M[2, 2]
        if kind == "far" and rng.random() < 0.3:
            rows[i, 0:2] += rng.uniform(-200, 200, 2)
        rows[i, 2:11] = M.reshape(-1)
        choices = [1 / 255, (1 + 1e-12) / 255, 0.9995, rng.uniform(0.01, 1.0)]
        rows[i, 11] = rng.choice(choices) if kind == "opacity" else rng.uniform(0.05, 0.99)
        rows[i, 12:15], rows[i, 15], rows[i, 16:19] = rng.random(3), mean[2], rng.standard_normal(3)
    return rows


class EveryTile:
    """Tile lists naming every surfel in every tile of one camera, in row order (so no binning decides anything)."""

    def __init__(self, n: int, width: int, height: int):
        from gfbench.methods.core import cpu_kernels as K

        self.n_cameras, self.tile_width, self.tile_height = 1, -(-width // K.TILE_SIZE), -(-height // K.TILE_SIZE)
        self.n_tiles = self.tile_width * self.tile_height
        self.flatten_ids = np.tile(np.arange(n), self.n_tiles).astype(np.int64)
        self.tile_offsets = np.arange(0, self.n_tiles * n + 1, n, dtype=np.int64)
        self.n_isects = len(self.flatten_ids)


def composite_2dgs(params, bins, width: int, height: int, how: str):
    """Forward outputs and the backward rows of random output gradients, by ``how``: the numba kernels on their
    spans (``spans``) or on every pixel of every tile (``full``), or the lanes kernels."""
    from gfbench.methods.core import cpu_kernels as K

    image = (1, height, width)
    out = [np.empty((*image, 4)), np.empty((*image, 3))] + [np.empty(image) for _ in range(3)] + [
        np.empty(image, dtype=np.int64) for _ in range(2)]
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal((*image, 4)), rng.standard_normal((*image, 3))] + [
        rng.standard_normal(image) for _ in range(3)]
    rows = np.empty((bins.n_isects, params.shape[1]))
    one = lambda kernel, *args: kernel(*args, 0, 1)  # noqa: E731
    depth_total = np.ascontiguousarray(out[0][..., -1])
    if how == "lanes":
        lanes.forward_2dgs(params, bins, width, height, *out, depth_total, one)
        np.testing.assert_array_equal(depth_total, out[0][..., -1])  # the kernel's copy of the depth channel
    else:
        pairs = np.zeros((bins.n_tiles, 2), dtype=np.int64)
        K.rasterize_2dgs_fwd(params, bins.tile_offsets, bins.flatten_ids, bins.tile_width, bins.tile_height,
                             how == "full", *out, pairs, 0, 1)
        depth_total = np.ascontiguousarray(out[0][..., -1])
    state = (out[2], out[5], out[6], depth_total)
    if how == "lanes":
        lanes.backward_2dgs(params, bins, width, height, *state, *grads, rows, one)
    else:
        K.rasterize_2dgs_bwd(params, bins.tile_offsets, bins.flatten_ids, bins.tile_width, bins.tile_height,
                             how == "full", *state, *grads, rows, 0, 1)
    return out, rows


def assert_same_compositing(got, want, rtol: float = 1e-12):
    (out, rows), (want_out, want_rows) = got, want
    for a, b in zip(out, want_out):
        if a.dtype == np.int64:  # last and median index: the same surfels composited at every pixel
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * max(1.0, np.abs(b).max()))
    scale = np.maximum(np.abs(want_rows).max(axis=0), 1e-300)
    assert (np.abs(rows - want_rows) / scale).max() < rtol


@needs_lanes
@pytest.mark.parametrize("kind", ["plain", "edge", "far", "opacity"])
def test_2dgs_lanes_kernels_composite_the_pixels_of_whole_tiles(kind):
    """At the kernels' level, against the numba kernels visiting every pixel of every tile (the definition of
    what must be composited): the same last and median surfel at every pixel, values within 1e-12, gradient rows
    within 1e-12 of their column's largest; surfels seen edge-on or nearly, far-off low-pass disks and opacities
    at the thresholds included, on a 40x37 image (partial tiles)."""
    width, height = 40, 37
    for seed in range(6):
        params = surfel_rows_2dgs(np.random.default_rng(seed), 60, 40.0, width, height, kind)
        bins = EveryTile(len(params), width, height)
        full = composite_2dgs(params, bins, width, height, "full")
        assert_same_compositing(composite_2dgs(params, bins, width, height, "lanes"), full)
        assert_same_compositing(composite_2dgs(params, bins, width, height, "spans"), full)


@needs_lanes
@pytest.mark.parametrize("transpose", [False, True], ids=["columns", "rows"])
def test_a_surfel_whose_image_is_nearly_a_parabola_keeps_its_pixels(transpose):
    """The disk's image one rounding step from a parabola (the dual conic's C*_ww about -1e-14): the textbook
    quadratic formula put its near tangent at 18.3 px instead of 5 px and the lanes kernels composited none of the
    48 pixels it covers (found in review); the tangents now come from the form without cancellation, and images
    this close to a parabola count as unbounded."""
    from gfbench.methods.core import cpu_kernels as K

    opacity = 0.5
    smax = math.log(opacity / K.ALPHA_THRESHOLD)
    smax += K.SPAN_MARGIN * (1 + smax)
    root_r2 = math.sqrt(2 * smax)
    w = np.array([1.0, 0.0, root_r2 * (1 + 3 * 2.2e-16)])
    u, v = np.array([-100.0, 0.0, 110 * root_r2]), np.array([0.0, 10.0, 8.0 * w[2]])
    if transpose:
        u, v = v, u
    params = np.zeros((1, 19))
    params[0, 0:2] = u[2] / w[2], v[2] / w[2]
    params[0, 2:11] = np.stack([u, v, w]).reshape(-1)
    params[0, 11], params[0, 12:16], params[0, 16:19] = opacity, (0.5, 0.5, 0.5, 2.0), 1.0
    bins = EveryTile(1, 16, 16)
    full = composite_2dgs(params, bins, 16, 16, "full")
    assert (full[0][5] >= 0).sum() > 40
    assert_same_compositing(composite_2dgs(params, bins, 16, 16, "lanes"), full)
    assert_same_compositing(composite_2dgs(params, bins, 16, 16, "spans"), full)


@needs_lanes
def test_a_3dgs_gaussian_reaching_every_row_keeps_its_pixels():
    """A conic with c = 1e-40 (a vertical stripe: its rows reach 1e20 px from the mean) overflowed the integer row
    limits of the 3DGS lanes kernel, which then composited none of the stripe's pixels; the limits are clamped
    before their conversion now (lanes_common.h's pixel_range, shared with the 2DGS kernel)."""
    from gfbench.methods.core import cpu_kernels as K

    width = height = 16
    params = np.array([[8.3, 8.0, 1.0, 0.0, 1e-40, 0.8, 0.2, 0.4, 0.6, 3.0]])  # mean, conic, opacity, RGB, depth
    bins = EveryTile(1, width, height)

    def render(how):
        out = [np.empty((1, height, width, 4)), np.empty((1, height, width)), np.empty((1, height, width), np.int64)]
        if how == "lanes":
            lanes.forward(params, bins, width, height, *out, lambda kernel, *args: kernel(*args, 0, 1))
        else:
            K.rasterize_3dgs_fwd(params, bins.tile_offsets, bins.flatten_ids, 1, 1, True, *out,
                                 np.zeros((1, 2), np.int64), 0, 1)
        return out

    full, got = render("full"), render("lanes")
    assert (full[2] >= 0).sum() == 7 * 16  # 7 columns of every row
    np.testing.assert_array_equal(got[2], full[2])
    np.testing.assert_allclose(got[0], full[0], rtol=0, atol=1e-14)


def gaussian_rows_3dgs(rng, n: int, width: int, height: int):
    """n 3DGS rows (mean2d, conic a, b, c, opacity, RGB, depth) of random ellipses of 1-6 px inside the image."""
    rows = np.zeros((n, 10))
    for i in range(n):
        axes = np.linalg.qr(rng.standard_normal((2, 2)))[0]
        cov = axes @ np.diag(rng.uniform(1, 6, 2) ** 2) @ axes.T
        conic = np.linalg.inv(cov)
        rows[i, 0:2] = rng.uniform(0, width), rng.uniform(0, height)
        rows[i, 2:5] = conic[0, 0], conic[0, 1], conic[1, 1]
        rows[i, 5] = rng.uniform(0.05, 0.99)
        rows[i, 6:9], rows[i, 9] = rng.random(3), rng.uniform(1, 5)
    return rows


def composite_io(kind: str, params, bins, width: int, height: int, io, empty=np.empty):
    """The lanes kernels' forward and backward with the caller's images (outputs, output gradients) in ``io``
    (float32 or float64), their outputs from ``empty``: the images, the float64 state and the backward rows. The
    output gradients are random float32 values, a fifth of them float32 denormals."""
    image, one = (1, height, width), (lambda kernel, *args: kernel(*args, 0, 1))
    rng = np.random.default_rng(9)
    shapes = [(*image, 4), image] if kind == "3dgs" else [(*image, 4), (*image, 3), image, image, image]
    grads = []
    for shape in shapes:
        g = rng.standard_normal(shape).astype(np.float32)
        g[rng.random(shape) < 0.2] = np.float32(3e-40)
        grads.append(g.astype(io))
    T, last = empty(image, np.float64), empty(image, np.int64)
    T_out = empty(image, np.float32) if io == np.float32 else None
    rows = np.empty((bins.n_isects, params.shape[1]))
    if kind == "3dgs":
        colors = empty((*image, 4), io)
        lanes.forward(params, bins, width, height, colors, T, last, one, T_out)
        lanes.backward(params, bins, width, height, T, last, *grads, rows, one)
        return [colors, T if T_out is None else T_out], [T, last], rows
    feats, norms, distort, median = (empty(shape, io) for shape in shapes[:2] + [image, image])
    median_idx, depth_total = empty(image, np.int64), empty(image, np.float64)
    lanes.forward_2dgs(params, bins, width, height, feats, norms, T, distort, median, last, median_idx, depth_total,
                       one, T_out)
    lanes.backward_2dgs(params, bins, width, height, T, last, median_idx, depth_total, *grads, rows, one)
    return [feats, norms, T if T_out is None else T_out, distort, median], [T, last, median_idx, depth_total], rows


@needs_lanes
@pytest.mark.parametrize("aligned", [False, True], ids=["np.empty", "line-aligned"])
@pytest.mark.parametrize("kind", ["3dgs", "2dgs"])
def test_float32_images_are_the_float64_ones_as_numpy_converts_them(kind, aligned):
    """The lanes kernels write a float32 caller's images and read its gradients in float32: the float64 outputs
    converted as NumPy converts them, and the backward of the float64 copies, to the bit, denormal float32 values
    included (the kernels flush denormals while they composite, not while they convert). Images on 64-byte lines
    get whole rows by streaming stores, others by copies; both are checked against the float64 ones from np.empty."""
    from gfbench.methods.core.rasterize_cpu import line_aligned
    rng = np.random.default_rng(3)
    width, height, n = 40, 24, 30
    if kind == "3dgs":
        params = gaussian_rows_3dgs(rng, n, width, height)
        params[:, 6] *= 1e-39  # red channels whose composites are float32 denormals
    else:
        params = surfel_rows_2dgs(rng, n, 40.0, width, height, "plain")
        params[:, 12] *= 1e-39
    bins = EveryTile(n, width, height)
    empty = line_aligned if aligned else np.empty
    if aligned:
        assert line_aligned((7,)).ctypes.data % 64 == 0
    images32, state32, rows32 = composite_io(kind, params, bins, width, height, np.float32, empty)
    images64, state64, rows64 = composite_io(kind, params, bins, width, height, np.float64)
    tiny = np.finfo(np.float32).tiny
    assert ((np.abs(images32[0]) < tiny) & (images32[0] != 0)).sum() > 10  # denormal outputs were written
    for got, want in zip(images32, images64):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want.astype(np.float32))
    for got, want in zip(state32, state64):
        np.testing.assert_array_equal(got, want)
    assert np.abs(rows64).max() > 0
    np.testing.assert_array_equal(rows32, rows64)


def test_the_kernels_take_the_callers_images_in_one_dtype():
    with pytest.raises(ValueError, match=r"all in float32 or all in float64, got v_colors float32, v_T float64"):
        lanes.io_flag(v_colors=np.zeros(2, np.float32), v_T=np.zeros(2))
    with pytest.raises(ValueError, match=r"got colors float16"):
        lanes.io_flag(colors=np.zeros(2, np.float16))
    assert lanes.io_flag(a=np.zeros(2, np.float32)) == 1 and lanes.io_flag(a=np.zeros(2)) == 0


def test_the_kernels_refuse_arrays_they_would_read_wrongly():
    class Bins:
        n_tiles, n_cameras, tile_width, tile_height, n_isects = 1, 1, 1, 1, 0
        tile_offsets, flatten_ids = np.zeros(2, np.int64), np.zeros(0, np.int64)

    params = np.zeros((3, 10))
    good = (np.zeros((1, 8, 8, 4)), np.zeros((1, 8, 8)), np.zeros((1, 8, 8), np.int64))
    with pytest.raises(ValueError, match=r"colors has shape \(1, 8, 8, 3\), expected \(1, 8, 8, 4\)"):
        lanes.forward(params, Bins, 8, 8, np.zeros((1, 8, 8, 3)), *good[1:], lambda *a: None)
    with pytest.raises(ValueError, match=r"C-contiguous float64 arrays, got float32"):
        lanes.forward(params.astype(np.float32), Bins, 8, 8, *good, lambda *a: None)
    with pytest.raises(ValueError, match=r"composite 4 features \(rows of 10\), got rows of 9"):
        lanes.forward(params[:, :9].copy(), Bins, 8, 8, *good, lambda *a: None)

    class Inconsistent(Bins):  # the offsets promise an intersection that flatten_ids does not hold
        tile_offsets = np.array([0, 1], np.int64)

    with pytest.raises(ValueError, match=r"tile offsets \(2, ending at 1\) do not fit 1 tiles and 0 intersections"):
        lanes.forward(params, Inconsistent, 8, 8, *good, lambda *a: None)
