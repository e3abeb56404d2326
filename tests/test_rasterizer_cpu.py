"""The CPU tile rasterizer against a dense reference, and gsplat's DefaultStrategy on its info dict.

The references below share no code with ``gfbench.methods.core``: they project with plain matrix algebra,
evaluate every Gaussian at every pixel, and composite front to back with an explicit loop over the
depth-sorted Gaussians, following gsplat's CUDA kernels rule by rule (alpha = min(0.999, o exp(-sigma)),
skip alpha < 1/255, stop before T would drop to <= 1e-4). Comparisons run in float64 so that the tolerances
(1e-5 on images, 1e-4 relative on gradients) measure the algorithm, not float32 rounding.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from gfbench.methods.core import lanes
from gfbench.methods.core.rasterize import rasterize_2dgs, rasterize_3dgs

W, H = 62, 45  # not multiples of the 16-pixel tile: partial tiles are exercised
TILE = 16
DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These tensors are small; one thread avoids OpenMP hand-offs, which stall badly (10x here) when the
    cores are shared with other jobs. Restored afterwards for the rest of the session."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["spans", "lanes"])
def compositing(request, monkeypatch):
    """Each compositing in turn ($GFBENCH_CPU_COMPOSITING): the numba spans kernels everywhere, the C lanes kernels
    where this machine can build and run them (AVX-512 and gcc; skipped elsewhere, saying why)."""
    if request.param == "lanes" and lanes.missing_requirement() is not None:
        pytest.skip(f"lanes kernels unavailable: {lanes.missing_requirement()}")
    monkeypatch.setenv(lanes.ENV, request.param)
    return request.param


# ------------------------------------------------------------------------------------------------
# Scenes
# ------------------------------------------------------------------------------------------------


def _rotation(axis_angle: list[float]) -> torch.Tensor:
    v = torch.tensor(axis_angle, dtype=DT)
    theta = v.norm()
    k = v / theta
    Kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=DT)
    return torch.eye(3, dtype=DT) + math.sin(theta) * Kx + (1 - math.cos(theta)) * Kx @ Kx


def make_cameras() -> tuple[torch.Tensor, torch.Tensor]:
    """Two world-to-camera matrices (OpenCV) looking down +z at the origin region, and intrinsics."""
    viewmats = torch.eye(4, dtype=DT).repeat(2, 1, 1)
    viewmats[1, :3, :3] = _rotation([0.05, -0.12, 0.03])
    viewmats[1, :3, 3] = torch.tensor([0.3, -0.1, 0.2], dtype=DT)
    Ks = torch.tensor([[58.0, 0, 31.0], [0, 61.0, 25.0], [0, 0, 1]], dtype=DT).repeat(2, 1, 1)
    Ks[1, 0, 2] = 33.5
    return viewmats, Ks


def make_scene(
    n: int = 300, seed: int = 0, sh_degree: int | None = None, size: float = 1.0
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=g, dtype=DT)  # noqa: E731
    means = torch.stack([(rand(n) - 0.5) * 3.2, (rand(n) - 0.5) * 2.4, 1.5 + 3.0 * rand(n)], dim=-1)
    means[:4, 2] = torch.tensor([-1.0, 0.005, 0.0, -0.3], dtype=DT)  # behind / at the near plane
    quats = torch.randn(n, 4, generator=g, dtype=DT)
    scales = size * torch.exp(math.log(0.01) + rand(n, 3) * math.log(15.0))
    opacities = 0.05 + 0.94 * rand(n)
    opacities[4:7] = torch.tensor([0.002, 0.0035, 0.9999], dtype=DT)  # below 1/255, and ~opaque
    if sh_degree is None:
        colors = rand(n, 3)
    else:
        colors = (rand(n, (sh_degree + 1) ** 2, 3) - 0.5) * 0.8
    params = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors)
    return {k: v.requires_grad_() for k, v in params.items()}


# ------------------------------------------------------------------------------------------------
# Dense references
# ------------------------------------------------------------------------------------------------


def ref_rotmat(q: torch.Tensor) -> torch.Tensor:
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        dim=-2,
    )


def ref_colors(scene, viewmat, sh_degree):
    if sh_degree is None:
        return scene["colors"]
    assert sh_degree == 1
    campos = -viewmat[:3, :3].T @ viewmat[:3, 3]
    d = scene["means"] - campos
    x, y, z = (d / d.norm(dim=-1, keepdim=True)).unbind(-1)
    c0, c1 = 0.2820947917738781, 0.48860251190292
    sh = scene["colors"]
    rgb = c0 * sh[:, 0] - c1 * y[:, None] * sh[:, 1] + c1 * z[:, None] * sh[:, 2] - c1 * x[:, None] * sh[:, 3]
    return torch.clamp_min(rgb + 0.5, 0.0)


def pixel_centres() -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(H, dtype=DT), torch.arange(W, dtype=DT), indexing="ij")
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2) + 0.5


def composite_loop(alpha, feats, skip=None):
    """Front-to-back over depth-sorted columns of alpha [P, K]; feats [K, F]. Mirrors the CUDA loop."""
    P, K = alpha.shape
    T = torch.ones(P, dtype=DT)
    done = torch.zeros(P, dtype=torch.bool)
    out = torch.zeros(P, feats.shape[1], dtype=DT)
    distort = torch.zeros(P, dtype=DT)
    accum_wd = torch.zeros(P, dtype=DT)
    median = torch.zeros(P, dtype=DT)
    # unbind once: indexing one column per step would make backward allocate a full [P, K] each time
    alphas, rows = alpha.unbind(1), feats.unbind(0)
    skips = skip.unbind(1) if skip is not None else [None] * K
    for a, f, s in zip(alphas, rows, skips):
        ok = (a >= 1.0 / 255.0) & ~done
        if s is not None:
            ok &= ~s
        next_T = T * (1 - a)
        stop = ok & (next_T <= 1e-4)
        done = done | stop
        ok = ok & ~stop
        vis = torch.where(ok, a * T, torch.zeros_like(a))
        out = out + vis[:, None] * f
        depth = f[-1]
        distort = distort + 2 * (vis * depth * (1 - T) - vis * accum_wd)
        accum_wd = accum_wd + vis * depth
        median = torch.where(ok & (T > 0.5), depth.expand(P), median)
        T = torch.where(ok, next_T, T)
    return out, 1 - T, distort, median


def ref_render_3dgs(scene, viewmats, Ks, sh_degree=None, backgrounds=None, eps2d=0.3):
    """[C, H, W, 3 + 1] colours with expected depth and [C, H, W, 1] alphas."""
    pix = pixel_centres()
    images, alphas = [], []
    for c in range(viewmats.shape[0]):
        Rw, t, K = viewmats[c, :3, :3], viewmats[c, :3, 3], Ks[c]
        opac = scene["opacities"]
        z_all = (scene["means"] @ Rw.T + t)[:, 2]
        sel = torch.nonzero((z_all >= 0.01) & (opac >= 1 / 255))[:, 0]  # in front, not too faint
        mc = scene["means"][sel] @ Rw.T + t
        RS = ref_rotmat(scene["quats"][sel]) * scene["scales"][sel][:, None, :]
        cov_c = Rw @ RS @ RS.transpose(1, 2) @ Rw.T
        x, y, z = mc.unbind(-1)
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        lim_x = ((W - cx) / fx + 0.15 * W / fx, cx / fx + 0.15 * W / fx)
        lim_y = ((H - cy) / fy + 0.15 * H / fy, cy / fy + 0.15 * H / fy)
        tx = z * torch.clamp(x / z, -lim_x[1], lim_x[0])
        ty = z * torch.clamp(y / z, -lim_y[1], lim_y[0])
        J = torch.zeros(len(z), 2, 3, dtype=DT)
        J[:, 0, 0], J[:, 0, 2] = fx / z, -fx * tx / z**2
        J[:, 1, 1], J[:, 1, 2] = fy / z, -fy * ty / z**2
        cov2d = J @ cov_c @ J.transpose(1, 2) + eps2d * torch.eye(2, dtype=DT)
        mean2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)
        keep = torch.nonzero(torch.linalg.det(cov2d) > 0)[:, 0]
        keep = keep[torch.argsort(z[keep])]
        idx = sel[keep]  # into the scene
        conic = torch.linalg.inv(cov2d[keep])
        mean2d, z = mean2d[keep], z[keep]
        d = mean2d[None] - pix[:, None]  # [P, K, 2]
        sigma = 0.5 * torch.einsum("pki,kij,pkj->pk", d, conic, d)
        alpha = torch.clamp_max(opac[idx][None] * torch.exp(-sigma), 0.999)
        feats = torch.cat([ref_colors(scene, viewmats[c], sh_degree)[idx], z[:, None]], dim=-1)
        out, acc, _, _ = composite_loop(alpha, feats, skip=sigma < 0)
        if backgrounds is not None:
            out = out + (1 - acc)[:, None] * torch.cat([backgrounds[c], torch.zeros(1, dtype=DT)])
        out = torch.cat([out[:, :-1], out[:, -1:] / acc.clamp(min=1e-10)[:, None]], dim=-1)
        images.append(out.reshape(H, W, -1))
        alphas.append(acc.reshape(H, W, 1))
    return torch.stack(images), torch.stack(alphas)


def ref_surfels(scene, viewmat, K):
    """Splat-to-pixel transforms H = K [s_u t_u, s_v t_v, mu] [N, 3, 3], centres, radii, normals."""
    Rw, t = viewmat[:3, :3], viewmat[:3, 3]
    mc = scene["means"] @ Rw.T + t
    Rc = Rw @ ref_rotmat(scene["quats"])
    s = scene["scales"]
    Hm = K @ torch.stack([Rc[:, :, 0] * s[:, :1], Rc[:, :, 1] * s[:, 1:2], mc], dim=-1)
    Q = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=DT))
    rows = Hm  # row r of K[...] is Hm[:, r, :]
    quad = lambda a, b: torch.einsum("ni,ij,nj->n", a, Q, b)  # noqa: E731
    dist = quad(rows[:, 2], rows[:, 2])
    mean2d = torch.stack([quad(rows[:, 0], rows[:, 2]), quad(rows[:, 1], rows[:, 2])], -1) / dist[:, None]
    second = torch.stack([quad(rows[:, 0], rows[:, 0]), quad(rows[:, 1], rows[:, 1])], -1) / dist[:, None]
    with torch.no_grad():
        radius = torch.ceil(3.33 * (mean2d**2 - second).clamp_min(1e-4).sqrt())
    normal = Rc[:, :, 2]
    normal = torch.where(((-normal * mc).sum(-1) > 0)[:, None], normal, -normal)
    return Hm, mean2d, radius, normal, mc[:, 2], dist != 0


def ref_render_2dgs(scene, viewmats, Ks):
    """Colours+ED, alphas, world normals, distortion, median and the 'gradient_2dgs' dummy per camera."""
    pix = pixel_centres()
    px, py = pix[:, 0:1], pix[:, 1:2]
    out_all = {k: [] for k in ("colors", "alphas", "normals", "distort", "median", "radii")}
    densifies = []
    for c in range(viewmats.shape[0]):
        Hm, mean2d, radius, normal, z, ok = ref_surfels(scene, viewmats[c], Ks[c])
        with torch.no_grad():
            lo = torch.floor((mean2d - radius) / TILE).clamp_min(0)
            hi = torch.ceil((mean2d + radius) / TILE)
            hi = torch.minimum(hi, torch.tensor([math.ceil(W / TILE), math.ceil(H / TILE)], dtype=DT))
            inside = (mean2d + radius > 0).all(-1) & (mean2d[:, 0] - radius[:, 0] < W)
            inside &= mean2d[:, 1] - radius[:, 1] < H
            valid = ok & (z > 0.01) & inside
        out_all["radii"].append(torch.where(valid[:, None], radius, torch.zeros_like(radius)).int())
        densify = torch.zeros(len(z), 2, dtype=DT, requires_grad=True)
        densifies.append(densify)
        shift = torch.zeros(len(z), 3, 3, dtype=DT)
        shift[:, 0, 2], shift[:, 1, 2] = densify[:, 0] * z.detach(), densify[:, 1] * z.detach()
        Hm = Hm + shift
        idx = torch.nonzero(valid)[:, 0]
        idx = idx[torch.argsort(z[idx])]
        M = Hm[idx]
        hu = px[..., None] * M[None, :, 2, :] - M[None, :, 0, :]  # [P, K, 3]
        hv = py[..., None] * M[None, :, 2, :] - M[None, :, 1, :]
        cr = torch.cross(hu, hv, dim=-1)
        degenerate = cr[..., 2] == 0
        cz = torch.where(degenerate, torch.ones_like(cr[..., 2]), cr[..., 2])
        g3 = (cr[..., 0] / cz) ** 2 + (cr[..., 1] / cz) ** 2
        g2 = 2.0 * ((mean2d[idx][None] - pix[:, None]) ** 2).sum(-1)
        sigma = 0.5 * torch.where(g3 <= g2, g3, g2)
        alpha = torch.clamp_max(scene["opacities"][idx][None] * torch.exp(-sigma), 0.999)
        # gsplat only evaluates a surfel in the 16x16 tiles its bounding box touches.
        tile_xy = torch.floor(pix / TILE)
        in_tiles = ((tile_xy[:, None] >= lo[idx][None]) & (tile_xy[:, None] < hi[idx][None])).all(-1)
        feats = torch.cat([scene["colors"][idx], z[idx, None], normal[idx]], dim=-1)
        feats = feats[:, [0, 1, 2, 4, 5, 6, 3]]  # keep depth last, as the kernel reads it there
        out, acc, distort, median = composite_loop(alpha, feats, skip=degenerate | (sigma < 0) | ~in_tiles)
        rgb, nrm, dep = out[:, :3], out[:, 3:6], out[:, 6:]
        c2w_rot = torch.linalg.inv(viewmats[c])[:3, :3]
        out_all["colors"].append(torch.cat([rgb, dep / acc.clamp(min=1e-10)[:, None]], -1).reshape(H, W, 4))
        out_all["alphas"].append(acc.reshape(H, W, 1))
        out_all["normals"].append((nrm @ c2w_rot.T).reshape(H, W, 3))
        out_all["distort"].append(distort.reshape(H, W, 1))
        out_all["median"].append(median.reshape(H, W, 1))
    return {k: torch.stack(v) for k, v in out_all.items()}, densifies


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def weighted_loss(outputs: list[torch.Tensor], seed: int = 1) -> torch.Tensor:
    """A random linear functional of all outputs, so every output's gradient path is exercised."""
    g = torch.Generator().manual_seed(seed)
    return sum((torch.rand(o.shape, generator=g, dtype=o.dtype) * o).sum() for o in outputs)


def grads_of(loss: torch.Tensor, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return dict(zip(tensors, torch.autograd.grad(loss, list(tensors.values()), allow_unused=True)))


def assert_grads_close(got: dict, want: dict, rtol: float = 1e-4) -> None:
    for name, w in want.items():
        g = got[name]
        scale = w.abs().max().clamp_min(1e-12)
        err = (g - w).abs().max() / scale
        assert err < rtol, f"grad {name}: max error {err:.2e} relative to max |grad|"
        torch.testing.assert_close(g, w, rtol=rtol, atol=rtol * 1e-2 * scale)


# ------------------------------------------------------------------------------------------------
# 3DGS
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sh_degree,with_background", [(None, False), (1, True)], ids=["rgb", "sh1-background"]
)
def test_3dgs_matches_dense_reference(sh_degree, with_background, compositing):
    scene = make_scene(300, seed=3 if sh_degree else 0, sh_degree=sh_degree)
    viewmats, Ks = make_cameras()
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]], dtype=DT) if with_background else None
    colors, alphas, info = rasterize_3dgs(
        *scene.values(), viewmats, Ks, W, H, sh_degree=sh_degree, backgrounds=bg, render_mode="RGB+ED"
    )
    ref_colors_, ref_alphas = ref_render_3dgs(scene, viewmats, Ks, sh_degree=sh_degree, backgrounds=bg)

    assert colors.shape == (2, H, W, 4) and alphas.shape == (2, H, W, 1)
    assert info["radii"].shape == (2, 300, 2) and info["radii"].dtype == torch.int32
    assert info["means2d"].shape == (2, 300, 2) and info["depths"].shape == (2, 300)
    assert (info["radii"][:, :7] == 0).all(dim=-1)[:, :6].all()  # near-plane and faint ones culled
    assert alphas.min() >= 0 and alphas.max() > 0.9
    torch.testing.assert_close(colors, ref_colors_, rtol=0, atol=1e-5)
    torch.testing.assert_close(alphas, ref_alphas, rtol=0, atol=1e-5)

    # The expected depth is ill-conditioned where alpha ~ 0; weight the loss by alpha there as a
    # training loss would, and compare gradients of everything else directly.
    loss_out = [colors[..., :3], colors[..., 3:] * alphas.detach(), alphas]
    ref_out = [ref_colors_[..., :3], ref_colors_[..., 3:] * ref_alphas.detach(), ref_alphas]
    got = grads_of(weighted_loss(loss_out), scene)
    want = grads_of(weighted_loss(ref_out), scene)
    assert_grads_close(got, want)


def test_3dgs_render_modes_and_float32():
    scene = make_scene(120, seed=5)
    viewmats, Ks = make_cameras()
    rgb, _, _ = rasterize_3dgs(*scene.values(), viewmats, Ks, W, H, render_mode="RGB")
    d, _, _ = rasterize_3dgs(*scene.values(), viewmats, Ks, W, H, render_mode="D")
    ed, a, _ = rasterize_3dgs(*scene.values(), viewmats, Ks, W, H, render_mode="ED")
    rgbd, _, _ = rasterize_3dgs(*scene.values(), viewmats, Ks, W, H, render_mode="RGB+D")
    assert rgb.shape[-1] == 3 and d.shape[-1] == 1 and rgbd.shape[-1] == 4
    torch.testing.assert_close(rgbd, torch.cat([rgb, d], -1))
    torch.testing.assert_close(ed, d / a.clamp(min=1e-10))

    scene32 = {k: v.detach().float().requires_grad_() for k, v in scene.items()}
    c32, a32, info32 = rasterize_3dgs(*scene32.values(), viewmats.float(), Ks.float(), W, H, render_mode="RGB")
    assert c32.dtype == torch.float32 and info32["means2d"].dtype == torch.float32
    # float32 vs float64: rounding, plus the odd pixel whose T <= 1e-4 cut-off falls one surfel apart
    # (worth at most ~1e-3 of a colour); hence the looser bound.
    torch.testing.assert_close(c32.double(), rgb, rtol=0, atol=2e-3)
    assert (c32.double() - rgb).abs().mean() < 1e-5
    c32.sum().backward()
    assert all(torch.isfinite(v.grad).all() for v in scene32.values())

    out64 = rasterize_2dgs(*scene.values(), viewmats, Ks, W, H)
    out32 = rasterize_2dgs(*scene32.values(), viewmats.float(), Ks.float(), W, H)
    for a, b in zip(out32[:6], out64[:6]):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=2e-3)
        assert (a.double() - b).abs().mean() < 1e-4


@pytest.mark.parametrize("render", [rasterize_3dgs, rasterize_2dgs])
@pytest.mark.parametrize("n", [20, 0], ids=["all-behind", "no-gaussians"])
def test_nothing_visible_still_differentiable(render, n):
    scene = make_scene(max(n, 8), seed=2)
    scene = {k: v.detach()[:n].requires_grad_() for k, v in scene.items()}
    with torch.no_grad():
        scene["means"][:, 2] -= 10.0  # everything behind the cameras
    viewmats, Ks = make_cameras()
    out = render(*scene.values(), viewmats, Ks, W, H)
    assert out[0].shape[:3] == (2, H, W) and (out[0] == 0).all() and (out[1] == 0).all()
    assert (out[-1]["radii"] == 0).all() and out[-1]["flatten_ids"].numel() == 0
    out[0].sum().backward()
    assert scene["means"].grad.shape == (n, 3) and (scene["means"].grad == 0).all()


# ------------------------------------------------------------------------------------------------
# 2DGS
# ------------------------------------------------------------------------------------------------


def test_2dgs_matches_dense_reference(compositing):
    scene = make_scene(300, seed=1, size=2.5)  # surfels are flat: larger, so they cover the image
    viewmats, Ks = make_cameras()
    colors, alphas, normals, surf_normals, distort, median, info = rasterize_2dgs(
        *scene.values(), viewmats, Ks, W, H, render_mode="RGB+ED"
    )
    ref, ref_densify = ref_render_2dgs(scene, viewmats, Ks)

    assert colors.shape == (2, H, W, 4) and normals.shape == (2, H, W, 3)
    assert surf_normals.shape == (2, H, W, 3) and distort.shape == median.shape == (2, H, W, 1)
    assert torch.equal(info["radii"], ref["radii"])
    for name, got in [("colors", colors), ("alphas", alphas), ("normals", normals), ("distort", distort)]:
        torch.testing.assert_close(got, ref[name], rtol=0, atol=1e-5, msg=lambda m: f"{name}: {m}")
    # Median depth is defined where accumulated opacity reaches 0.5; elsewhere it is the last surfel's.
    torch.testing.assert_close(median, ref["median"], rtol=0, atol=1e-5)
    assert (alphas > 0.5).float().mean() > 0.2

    densify = info["gradient_2dgs"]
    tensors = {**scene, "densify": densify}
    got = grads_of(weighted_loss([colors[..., :3], alphas, normals, distort, median]), tensors)
    ref_tensors = {**scene, "densify": ref_densify}
    want_all = torch.autograd.grad(
        weighted_loss([ref["colors"][..., :3], ref["alphas"], ref["normals"], ref["distort"], ref["median"]]),
        list(ref_tensors.values())[:-1] + ref_densify,
    )
    want = dict(zip(scene, want_all[: len(scene)]))
    want["densify"] = torch.stack(want_all[len(scene):])
    assert_grads_close(got, want)


@pytest.mark.parametrize("kind", ["3dgs", "2dgs"])
def test_colour_only_renders_take_the_general_feature_path(kind):
    """RGB renders: 3 features, not the kernels' unrolled RGB + depth, against the same dense references."""
    viewmats, Ks = make_cameras()
    if kind == "3dgs":
        scene = make_scene(150, seed=0)
        colors, alphas, _ = rasterize_3dgs(*scene.values(), viewmats, Ks, W, H, render_mode="RGB")
        ref_colors, ref_alphas = ref_render_3dgs(scene, viewmats, Ks)
        outputs, references = [colors, alphas], [ref_colors[..., :3], ref_alphas]
    else:
        scene = make_scene(150, seed=1, size=2.5)
        colors, alphas, normals, *_ = rasterize_2dgs(*scene.values(), viewmats, Ks, W, H, render_mode="RGB")
        ref, _ = ref_render_2dgs(scene, viewmats, Ks)
        outputs, references = [colors, alphas, normals], [ref["colors"][..., :3], ref["alphas"], ref["normals"]]
    assert colors.shape == (2, H, W, 3)
    for got, want in zip(outputs, references):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert_grads_close(grads_of(weighted_loss(outputs), scene), grads_of(weighted_loss(references), scene))


# ------------------------------------------------------------------------------------------------
# gsplat's DefaultStrategy on the CPU info dict
# ------------------------------------------------------------------------------------------------


def _params_and_optimizers(n: int = 200):
    scene = make_scene(n, seed=7)
    params = torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(scene["means"].detach().float()),
            "scales": torch.nn.Parameter(scene["scales"].detach().float().log()),
            "quats": torch.nn.Parameter(scene["quats"].detach().float()),
            "opacities": torch.nn.Parameter(torch.logit(scene["opacities"].detach().float().clamp(0.05, 0.95))),
            "colors": torch.nn.Parameter(scene["colors"].detach().float()),
        }
    )
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    return params, optimizers


@pytest.mark.parametrize("kind", ["3dgs", "2dgs"])
def test_default_strategy_densifies(kind, capsys):
    from gsplat.strategy import DefaultStrategy

    params, optimizers = _params_and_optimizers()
    viewmats, Ks = (x.float() for x in make_cameras())
    key = "means2d" if kind == "3dgs" else "gradient_2dgs"
    # Tiny thresholds so that both duplication (small scales) and splitting (large scales) trigger.
    strategy = DefaultStrategy(
        refine_start_iter=0, refine_every=2, grow_grad2d=1e-7, grow_scale3d=0.05,
        key_for_gradient=key, verbose=True,
    )
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    target = torch.rand(2, H, W, 3, generator=torch.Generator().manual_seed(0))
    n_start = len(params["means"])
    render = rasterize_3dgs if kind == "3dgs" else rasterize_2dgs
    for step in range(3):
        out = render(
            params["means"], params["quats"], params["scales"].exp(), torch.sigmoid(params["opacities"]),
            params["colors"], viewmats, Ks, W, H, render_mode="RGB",
        )
        colors, info = out[0], out[-1]
        strategy.step_pre_backward(params, optimizers, state, step, info)
        loss = (colors - target).abs().mean()
        loss.backward()
        assert info[key].grad is not None and info[key].grad.abs().sum() > 0
        strategy.step_post_backward(params, optimizers, state, step, info)
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)

    log = capsys.readouterr().out
    grown = re.search(r"Step 2: (\d+) GSs duplicated, (\d+) GSs split", log)
    assert grown is not None, log
    n_dupli, n_split = int(grown[1]), int(grown[2])
    assert n_dupli > 0 and n_split > 0, log
    assert len(params["means"]) > n_start
    assert all(len(p) == len(params["means"]) for p in params.values())
    assert all(len(state[k]) == len(params["means"]) for k in ("grad2d", "count"))


# ------------------------------------------------------------------------------------------------
# The compiled kernels' own behaviour
# ------------------------------------------------------------------------------------------------


def _kernel_inputs_3dgs(scene, viewmats, Ks):
    from gfbench.methods.core import rasterize_cpu as rc

    C = viewmats.shape[0]
    proj = rc.project_3d(
        scene["means"], scene["quats"], scene["scales"], scene["opacities"], viewmats, Ks, W, H,
        eps2d=0.3, near_plane=0.01, far_plane=1e10, radius_clip=0.0,
    )
    feats = torch.cat([scene["colors"][None].expand(C, -1, -1), proj.depths[..., None]], dim=-1)
    opac = scene["opacities"][None].expand(C, -1)
    bins = rc.bin_tiles(proj, W, H)
    return rc.gaussian_rows(proj.means2d, proj.conics, opac, feats), bins


def _kernel_inputs_2dgs(scene, viewmats, Ks):
    from gfbench.methods.core import rasterize_cpu as rc
    from gfbench.methods.core import rasterize_cpu_2dgs as rc2

    C = viewmats.shape[0]
    proj = rc2.project_2d(
        scene["means"], scene["quats"], scene["scales"], viewmats, Ks, W, H,
        near_plane=0.01, far_plane=1e10, radius_clip=0.0,
    )
    feats = torch.cat([scene["colors"][None].expand(C, -1, -1), proj.depths[..., None]], dim=-1)
    opac = scene["opacities"][None].expand(C, -1)
    bins = rc.bin_tiles(proj, W, H)
    return rc.gaussian_rows(proj.means2d, proj.ray_transforms, opac, feats, proj.normals), bins


def _edge_on_surfels(scene, n: int = 12):
    """Turn the first n surfels (after the culled ones) so that camera 0 sees them edge-on or nearly."""
    with torch.no_grad():
        for i in range(7, 7 + n):
            # rotation by 90 degrees about the camera's x or y axis puts the surfel normal across the view
            half = math.pi / 4 + (i % 3) * 1e-3
            axis = [1.0, 0.0, 0.0] if i % 2 else [0.0, 1.0, 0.0]
            scene["quats"][i] = torch.tensor([math.cos(half), *(math.sin(half) * a for a in axis)], dtype=DT)
            scene["scales"][i, :2] = torch.tensor([0.6, 0.4], dtype=DT)
    return scene


@pytest.mark.parametrize("kind", ["3dgs", "2dgs"])
def test_pixel_spans_equal_whole_tiles(kind):
    """Visiting only the solved rows/spans gives the outputs and gradients of visiting every pixel of every
    tile (what gsplat's kernels do), on scenes with large, tiny and edge-on Gaussians: the same last and
    median contributors, and values equal up to the rounding of the exp recurrence's different starting
    pixel (a pair composited in one mode only would change T by at least a factor 1 - 1/255)."""
    import numpy as np

    from gfbench.methods.core import cpu_kernels as K

    scene = make_scene(400, seed=11, size=2.0 if kind == "2dgs" else 1.0)
    if kind == "2dgs":
        scene = _edge_on_surfels(scene)
    viewmats, Ks = make_cameras()
    if kind == "3dgs":
        params, bins = _kernel_inputs_3dgs(scene, viewmats, Ks)
    else:
        params, bins = _kernel_inputs_2dgs(scene, viewmats, Ks)
    C, D = 2, 4
    common = (params, bins.tile_offsets, bins.flatten_ids, bins.tile_width, bins.tile_height)

    def forward(full_tile):
        image = lambda *shape, dtype=np.float64: np.full((C, H, W) + shape, -7, dtype=dtype)  # noqa: E731
        if kind == "3dgs":
            out = [image(D), image(), image(dtype=np.int64)]
            kernel = K.rasterize_3dgs_fwd
        else:
            out = [image(D), image(3), image(), image(), image(), image(dtype=np.int64), image(dtype=np.int64)]
            kernel = K.rasterize_2dgs_fwd
        pairs = np.zeros((bins.n_tiles, 2), dtype=np.int64)
        kernel(*common, full_tile, *out, pairs, 0, 1)
        return out, pairs

    def backward(full_tile, *upstream):
        per_isect = np.zeros((bins.n_isects, params.shape[1]))
        kernel = K.rasterize_3dgs_bwd if kind == "3dgs" else K.rasterize_2dgs_bwd
        kernel(*common, full_tile, *upstream, per_isect, 0, 1)
        return per_isect

    (span, span_pairs), (full, full_pairs) = forward(False), forward(True)
    for a, b in zip(span, full):
        assert (a != -7).all()  # every pixel written
        if a.dtype == np.int64:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    assert span_pairs[:, 0].sum() < 0.5 * full_pairs[:, 0].sum()  # and far fewer pairs evaluated

    rng = np.random.default_rng(0)
    if kind == "3dgs":
        colors, T, last = span
        upstream = (T, last, rng.random(colors.shape), rng.random(T.shape))
    else:
        feats, normals, T, distort, median, last, median_idx = span
        grads = [rng.random(x.shape) for x in (feats, normals, T, distort, median)]
        upstream = (T, last, median_idx, feats[..., -1].copy(), *grads)
    span_grads, full_grads = backward(False, *upstream), backward(True, *upstream)
    np.testing.assert_allclose(span_grads, full_grads, rtol=1e-10, atol=1e-12 * np.abs(full_grads).max())


def test_projection_kernels_match_autograd():
    """The hand-written projection backward against PyTorch autograd of the plain projection code."""
    from gfbench.methods.core import rasterize_cpu as rc
    from gfbench.methods.core import rasterize_cpu_2dgs as rc2
    from gfbench.methods.core.projection import project_gaussians_3d, project_surfels_2d

    scene = make_scene(300, seed=4)
    viewmats, Ks = make_cameras()
    args = (scene["means"], scene["quats"], scene["scales"])
    for compiled, plain in [
        (
            rc.project_3d(*args, scene["opacities"], viewmats, Ks, W, H, eps2d=0.3, near_plane=0.01,
                          far_plane=1e10, radius_clip=0.0),
            project_gaussians_3d(*args, scene["opacities"], viewmats, Ks, W, H),
        ),
        (
            rc2.project_2d(*args, viewmats, Ks, W, H, near_plane=0.01, far_plane=1e10, radius_clip=0.0),
            project_surfels_2d(*args, viewmats, Ks, W, H),
        ),
    ]:
        names = [f for f in ("means2d", "conics", "ray_transforms", "depths", "normals") if hasattr(plain, f)]
        assert torch.equal(compiled.radii, plain.radii)
        assert (compiled.radii > 0).any() and (compiled.radii == 0).any()
        for name in names:
            torch.testing.assert_close(getattr(compiled, name), getattr(plain, name), rtol=1e-10, atol=1e-10)
        inputs = dict(zip(("means", "quats", "scales"), args))
        got = grads_of(weighted_loss([getattr(compiled, n) for n in names]), inputs)
        want = grads_of(weighted_loss([getattr(plain, n) for n in names]), inputs)
        assert_grads_close(got, want, rtol=1e-9)


def _projection_kernels(params_dtype, grads_dtype, seed):
    """The projection kernels run directly on ``make_scene`` parameters (float32 values) and random output gradients
    (float32 values), fed in the given dtypes; their float64 outputs and gradients."""
    from gfbench.methods.core import cpu_kernels as K

    scene, (viewmats, Ks) = make_scene(500, seed=seed, size=3.0), make_cameras()
    cameras = [viewmats.numpy(), Ks.numpy()]
    C, N = viewmats.shape[0], 500
    params = [scene[k].detach().float().numpy().astype(params_dtype) for k in ("means", "quats", "scales", "opacities")]
    g = np.random.default_rng(seed)

    def output_grads(*shapes):
        return [g.standard_normal((C, N, *shape)).astype(np.float32).astype(grads_dtype) for shape in shapes]

    out3 = [np.empty((C, N, 2)), np.empty((C, N, 3)), np.empty((C, N)), np.empty((C, N, 2), np.int32)]
    K.project_3dgs_fwd(*params, *cameras, W, H, 0.3, 0.01, 1e10, 0.0, *out3, tuple(out3[:3]), 0, 1)
    grads3 = [np.empty((N, k)) for k in (3, 4, 3)]
    K.project_3dgs_bwd(*params[:3], *cameras, W, H, 0.3, out3[3], out3[1], *output_grads((2,), (3,), ()), *grads3,
                       0, 1)
    params2 = [p.astype(np.float64) for p in params[:3]]  # the 2DGS projection reads float64 copies of its parameters
    out2 = [np.empty((C, N, 2)), np.empty((C, N, 3, 3)), np.empty((C, N)), np.empty((C, N, 3)),
            np.empty((C, N, 2), np.int32)]
    K.project_2dgs_fwd(*params2, *cameras, W, H, 0.01, 1e10, 0.0, *out2, tuple(out2[:4]), 0, 1)
    grads2 = [np.empty((N, k)) for k in (3, 4, 3)]
    K.project_2dgs_bwd(*params2, *cameras, out2[4], *output_grads((2,), (3, 3), (), (3,)), *grads2, 0, 1)
    return out3 + grads3 + out2 + grads2


@pytest.mark.parametrize("seed", range(4))
def test_projection_kernels_read_float32_as_their_float64_copies(seed):
    """What the projections read as float32 (rasterize_cpu.as_kernel_input: the 3DGS parameters, both projections'
    output gradients) gives the bits of its float64 copy: numba compiles a float32 specialization, and it must do
    the same float64 arithmetic (numba keeps float32 * float32 in float32, and LLVM may fuse multiply-adds
    differently in another specialization; it did for the 2DGS parameters, which therefore stay float64 copies)."""
    wide = _projection_kernels(np.float64, np.float64, seed)
    narrow = _projection_kernels(np.float32, np.float32, seed)
    assert (wide[3] > 0).sum() > 200  # radii: most Gaussians are seen
    for index, (got, want) in enumerate(zip(narrow, wide)):
        assert got.dtype == want.dtype and np.array_equal(got, want), f"output {index} differs"


def test_tile_lists_match_brute_force():
    """Per-tile lists: every Gaussian in each tile its box [mean - radius, mean + radius] overlaps, front to
    back by float32 depth with ties by Gaussian index (gsplat's stable radix sort), with gsplat's isect_ids
    (camera | tile << 32 | depth bits) sorted ascending."""
    scene = make_scene(300, seed=6)
    viewmats, Ks = make_cameras()
    _, _, info = rasterize_3dgs(*scene.values(), viewmats, Ks, W, H)
    tw, th = info["tile_width"], info["tile_height"]
    assert (tw, th) == (math.ceil(W / TILE), math.ceil(H / TILE))
    means2d, radii, depths = info["means2d"].detach(), info["radii"], info["depths"].detach()
    offsets = info["isect_offsets"].reshape(-1).tolist() + [len(info["flatten_ids"])]
    flat = info["flatten_ids"].tolist()
    N = means2d.shape[1]
    for c in range(2):
        for t in range(th * tw):
            tx, ty = t % tw, t // tw
            expected = []
            for g in range(N):
                if (radii[c, g] > 0).all():
                    lo = torch.floor((means2d[c, g] - radii[c, g]) / TILE).clamp(min=0)
                    hi = torch.ceil((means2d[c, g] + radii[c, g]) / TILE)
                    if lo[0] <= tx < hi[0] and lo[1] <= ty < hi[1]:
                        expected.append(c * N + g)
            expected.sort(key=lambda i: (float(depths.reshape(-1)[i].float()), i))
            k = c * th * tw + t
            assert flat[offsets[k] : offsets[k + 1]] == expected, (c, t)
    assert (info["isect_ids"][1:] >= info["isect_ids"][:-1]).all()
    assert torch.equal(info["tiles_per_gauss"].reshape(-1).bincount(minlength=1).sum(), torch.tensor(2 * N))
    assert int(info["tiles_per_gauss"].sum()) == len(flat)


def test_depth_order_is_a_stable_sort_per_camera():
    """front_to_back against NumPy's lexsort by (camera, key, position): many tied keys, an empty camera, a
    camera with one Gaussian, and keys at both ends of the 32-bit range (bits of any positive float32)."""
    from gfbench.methods.core.rasterize_cpu import front_to_back

    rng = np.random.default_rng(3)
    n_cameras, per_camera = 4, 500
    ids = np.concatenate([
        np.sort(rng.choice(per_camera, 400, replace=False)),  # camera 0
        # camera 1 sees nothing
        [2 * per_camera + 17],  # camera 2: one Gaussian
        3 * per_camera + np.sort(rng.choice(per_camera, 450, replace=False)),
    ]).astype(np.int64)
    keys = rng.choice(np.array([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 7, 12345678]), ids.size).astype(np.int64)
    positions, sorted_keys = front_to_back(ids, keys, n_cameras, per_camera)
    expected = np.lexsort((np.arange(ids.size), keys, ids // per_camera))
    assert np.array_equal(positions, expected)
    assert np.array_equal(sorted_keys, keys[expected])


def test_empty_tiles_show_background():
    """Tiles no Gaussian touches render the background with alpha 0; only the touched ones differ."""
    scene = make_scene(60, seed=8)
    with torch.no_grad():
        scene["means"][:, 0] = scene["means"][:, 0].abs() * 0.1 + 1.0  # all to the right-hand side
        scene["means"][:, 2] = 4.0
        scene["scales"].mul_(0.3)
    viewmats, Ks = make_cameras()
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=DT)
    colors, alphas, info = rasterize_3dgs(*scene.values(), viewmats, Ks, W, H, backgrounds=bg, render_mode="RGB")
    counts = torch.diff(torch.cat([info["isect_offsets"].reshape(-1), torch.tensor([len(info["flatten_ids"])])]))
    empty = (counts == 0).reshape(2, info["tile_height"], info["tile_width"])
    assert empty.any() and (~empty).any()
    pix_empty = empty.repeat_interleave(TILE, 1).repeat_interleave(TILE, 2)[:, :H, :W]
    assert (alphas[pix_empty] == 0).all()
    torch.testing.assert_close(colors[pix_empty], bg[:, None, None].expand(2, H, W, 3)[pix_empty])
    ref_colors_, ref_alphas = ref_render_3dgs(scene, viewmats, Ks, backgrounds=bg)
    torch.testing.assert_close(alphas, ref_alphas, rtol=0, atol=1e-5)


def test_early_termination_stops_before_the_opaque_one():
    """Three near-opaque Gaussians in a row: at the pixel on their centres T goes 1 -> 0.005, the second
    would take it to 2.5e-5 <= 1e-4, so the pixel stops there; neither it nor the one behind contributes
    colour or receives gradient from that pixel."""
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 3.0], [0.0, 0.0, 4.0]], dtype=DT, requires_grad=True)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 3, dtype=DT, requires_grad=True)
    scales = torch.full((3, 3), 0.5, dtype=DT, requires_grad=True)
    opacities = torch.full((3,), 0.995, dtype=DT, requires_grad=True)
    colors = torch.eye(3, dtype=DT).requires_grad_()
    viewmat = torch.eye(4, dtype=DT)[None]
    cy, cx = 20, 37  # principal point on this pixel's centre: every alpha there is exactly 0.995
    K = torch.tensor([[50.0, 0, cx + 0.5], [0, 50.0, cy + 0.5], [0, 0, 1]], dtype=DT)[None]
    out, alphas, _ = rasterize_3dgs(means, quats, scales, opacities, colors, viewmat, K, W, H, render_mode="RGB")
    assert alphas[0, cy, cx, 0].item() == pytest.approx(0.995, abs=1e-12)
    torch.testing.assert_close(out[0, cy, cx], torch.tensor([0.995, 0.0, 0.0], dtype=DT), atol=1e-12, rtol=0)
    out[0, cy, cx].sum().backward()
    assert colors.grad[0, 0] > 0.98 and (colors.grad[1:] == 0).all()
    assert (means.grad[1:] == 0).all() and (opacities.grad[1:] == 0).all()


@pytest.mark.parametrize("render", [rasterize_3dgs, rasterize_2dgs])
def test_same_results_on_any_thread_count_and_without_grad(render, compositing):
    """Per-tile work and per-Gaussian gradient sums run in a fixed order: 1 or 2 threads give bit-identical
    images and gradients; a no-grad render gives the same images."""
    scene = make_scene(300, seed=9, size=2.0 if render is rasterize_2dgs else 1.0)
    viewmats, Ks = make_cameras()
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out = render(*scene.values(), viewmats, Ks, W, H)
        grads = torch.autograd.grad(weighted_loss([out[0], out[1]]), list(scene.values()))
        results.append(([o.detach() for o in out[:2]], grads))
    torch.set_num_threads(1)
    for a, b in zip(results[0][0] + list(results[0][1]), results[1][0] + list(results[1][1])):
        assert torch.equal(a, b)
    with torch.no_grad():
        plain = render(*scene.values(), viewmats, Ks, W, H)
    for a, b in zip(plain[:2], results[0][0]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("render", [rasterize_3dgs, rasterize_2dgs])
def test_camera_gradients_through_the_pytorch_projection(render):
    """With cameras that require grad the projection runs in plain PyTorch (the compiled one gives no
    camera gradients): same images as the compiled path, and the cameras get a gradient."""
    scene = make_scene(200, seed=12, size=2.0 if render is rasterize_2dgs else 1.0)
    viewmats, Ks = make_cameras()
    compiled = render(*scene.values(), viewmats, Ks, W, H)
    viewmats = viewmats.clone().requires_grad_()
    plain = render(*scene.values(), viewmats, Ks, W, H)
    for a, b in zip(compiled[:2], plain[:2]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    weighted_loss([plain[0], plain[1]]).backward()
    assert torch.isfinite(viewmats.grad).all() and viewmats.grad.abs().sum() > 0


@pytest.mark.parametrize("render", [rasterize_3dgs, rasterize_2dgs])
def test_interleaved_renders_reuse_scratch_without_mixing(render):
    """The rasterizer reuses its large scratch arrays (``SCRATCH``) across calls. Two forwards before
    their backwards (as FSGS does with pseudo views) must each keep their own rows, and scratch left full
    of garbage by earlier calls must not leak into gradients: the results equal two separate renders."""
    import numpy as np

    from gfbench.methods.core.rasterize_cpu import SCRATCH

    scenes = [make_scene(300, seed=seed, size=2.0 if render is rasterize_2dgs else 1.0) for seed in (3, 4)]
    viewmats, Ks = make_cameras()
    separate = []
    for scene in scenes:
        out = render(*scene.values(), viewmats, Ks, W, H)
        separate.append(torch.autograd.grad(weighted_loss([out[0], out[1]]), list(scene.values())))
    for _ in range(3):  # poison whatever the pool holds
        garbage = SCRATCH.take((4096, 32))
        garbage[:] = np.nan
        SCRATCH.give_back(garbage)
    outs = [render(*scene.values(), viewmats, Ks, W, H) for scene in scenes]
    for scene, out, want in zip(reversed(scenes), reversed(outs), reversed(separate)):
        got = torch.autograd.grad(weighted_loss([out[0], out[1]]), list(scene.values()))
        for a, b in zip(got, want):
            assert torch.equal(a, b)


def test_a_second_backward_through_the_same_render_is_refused():
    scene = make_scene(100, seed=5)
    viewmats, Ks = make_cameras()
    loss = weighted_loss(list(rasterize_3dgs(*scene.values(), viewmats, Ks, W, H)[:2]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph=True is not supported"):
        loss.backward()


def test_scratch_pool_hands_out_each_buffer_once():
    import numpy as np

    from gfbench.methods.core.rasterize_cpu import ScratchPool

    pool = ScratchPool(keep=2)
    a = pool.take((10, 3))
    b = pool.take((10, 3))
    assert a.shape == (10, 3) and a.dtype == np.float64 and not np.shares_memory(a, b)
    pool.give_back(a)
    c = pool.take((5, 2), np.int64)  # fits in a's buffer
    assert c.dtype == np.int64 and np.shares_memory(a, c)
    assert not np.shares_memory(pool.take((5, 2)), c)  # c's buffer is out: a new one
    with pytest.raises(ValueError, match="ScratchPool.take returned"):
        pool.give_back(np.zeros(3))
    pool.give_back(b)
    with pytest.raises(ValueError, match="already given back"):
        pool.give_back(b)
    pool.give_back(c)
    pool.give_back(pool.take((1000,)))
    assert pool.free_bytes == 240 + 8000  # the two largest of 240, 240 and 8000 bytes


@pytest.mark.parametrize("render", [rasterize_3dgs, rasterize_2dgs])
def test_a_no_grad_render_gives_its_rows_back_at_once(render):
    """Evaluation renders run without grad: no backward will give the Gaussian rows back, so the forward
    does, and the next render reuses them instead of drawing fresh memory."""
    from gfbench.methods.core.rasterize_cpu import SCRATCH

    scene = make_scene(200, seed=6, size=2.0 if render is rasterize_2dgs else 1.0)
    viewmats, Ks = make_cameras()
    SCRATCH.clear()
    with torch.no_grad():
        render(*scene.values(), viewmats, Ks, W, H)
    assert SCRATCH.free_bytes > 0
    render(*scene.values(), viewmats, Ks, W, H)  # with grad: the rows wait for a backward
    assert SCRATCH.free_bytes == 0


def test_the_inlined_exp_is_within_an_ulp_of_libm():
    """The kernels' vectorizable exp (cpu_kernels.exp_inline) against libm's, over its whole range and densely
    where the kernels use it; exact at 0, clamped (finite, positive) beyond +-708."""
    from numba import njit

    from gfbench.methods.core.cpu_kernels import exp_inline

    @njit
    def exps(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = exp_inline(x[i])
        return out

    x = np.concatenate([np.linspace(-708.0, 708.0, 200_001), np.random.default_rng(0).uniform(-40.0, 5.0, 200_000)])
    ours, libm = exps(x), np.array([math.exp(v) for v in x])
    assert np.max(np.abs(ours - libm) / libm) <= np.finfo(np.float64).eps
    assert exps(np.array([0.0]))[0] == 1.0
    clamped = exps(np.array([-1000.0, 1000.0]))
    assert clamped[0] == exps(np.array([-708.0]))[0] > 0 and clamped[1] == exps(np.array([708.0]))[0] < np.inf
