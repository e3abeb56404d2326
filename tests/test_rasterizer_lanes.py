"""The ``lanes`` compositing (GFBENCH_CPU_COMPOSITING) of 3DGS and 2DGS: the C kernels against the ``spans``
kernels (both against the dense references: test_rasterizer_cpu's ``compositing`` fixture), ``auto`` and the errors
where they cannot run, and the records that name which one a job ran.

The kernel tests need AVX-512 and gcc (they are skipped elsewhere, saying which is missing); the rest run
anywhere."""

from __future__ import annotations

import math
import os

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


def test_the_kernels_refuse_arrays_they_would_read_wrongly():
    import numpy as np

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
