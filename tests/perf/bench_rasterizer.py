"""Forward+backward timing of the CPU tile rasterizer against a straightforward dense rasterizer.

Run:  OMP_NUM_THREADS=2 .venv/bin/python tests/perf/bench_rasterizer.py [--gaussians 20000] [--repeats 3]
      [--threads 2] [--dense-fraction 1.0]

Both sides share the projection (``gfbench.methods.core.projection``) and differ in rasterization only.
The straightforward side is what gsplat's PyTorch reference code does minus the tiling: every pixel chunk
is composited against the full depth-sorted list of visible Gaussians with plain autograd
(``torch.utils.checkpoint`` per chunk, since keeping the [pixels, Gaussians] graph of a whole image would
need tens of GB; checkpointing re-runs each chunk's forward during backward, so forward-only times are
printed too). Both are timed side by side in one process on 2 threads; the two sides' images are compared
to show they compute the same thing (3DGS: identical up to float32 rounding; 2DGS: a fraction of a percent
of pixels differ because gsplat's tiling, which the tiled side reproduces, cuts off surfels whose
low-pass or perspective footprint pokes out of their 3.33-sigma bounding box). The dense side's cost is
exactly proportional to the pixel count (every chunk does the same work), so ``--dense-fraction 0.1``
times it on the first tenth of the pixel chunks and scales up, for quick runs; the default times it in
full.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch.utils.checkpoint import checkpoint

from gfbench.methods.core.projection import ALPHA_THRESHOLD, project_gaussians_3d, project_surfels_2d
from gfbench.methods.core.rasterize import rasterize_2dgs, rasterize_3dgs

WIDTH, HEIGHT = 256, 160
PIXEL_CHUNK = 1024  # [1024, N] pair tensors per autograd chunk (~75 MB each at 18k visible)


def make_scene(n: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """n Gaussians filling the view frustum at depths 2..8, typical trained-scene sizes (1-10 px)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    z = 2.0 + 6.0 * rand(n)
    f = 220.0
    x = (rand(n) - 0.5) * WIDTH / f * z * 1.1
    y = (rand(n) - 0.5) * HEIGHT / f * z * 1.1
    params = {
        "means": torch.stack([x, y, z], dim=-1),
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.exp(math.log(0.004) + rand(n, 3) * math.log(12.0)),
        "opacities": 0.1 + 0.85 * rand(n),
        "colors": rand(n, 3),
    }
    params = {k: v.requires_grad_() for k, v in params.items()}
    viewmats = torch.eye(4)[None]
    Ks = torch.tensor([[f, 0.0, WIDTH / 2], [0.0, f, HEIGHT / 2], [0.0, 0.0, 1.0]])[None]
    return params, viewmats, Ks


DENSE_FRACTION = 1.0  # share of the pixel chunks the dense side renders (set from the command line)


def _pixel_chunks(dtype) -> list[torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
    chunks = (torch.stack([xs, ys], dim=-1).reshape(-1, 2).to(dtype) + 0.5).split(PIXEL_CHUNK)
    return list(chunks[: max(1, round(DENSE_FRACTION * len(chunks)))])


def _as_image(x: torch.Tensor) -> torch.Tensor:
    """[n_pixels, D] -> [H, W, D], zero-padded when only a fraction of the pixels was rendered."""
    full = x.new_zeros((HEIGHT * WIDTH, x.shape[-1]))
    full = torch.cat([x, full[x.shape[0]:]])
    return full.reshape(HEIGHT, WIDTH, -1)


def _front_to_back(alpha: torch.Tensor, skip: torch.Tensor):
    """gsplat's compositing rules on [P, K] depth-sorted alphas: weights and final transmittance."""
    with torch.no_grad():
        keep = (alpha >= ALPHA_THRESHOLD) & ~skip
        T_incl = torch.cumprod(torch.where(keep, 1 - alpha, torch.ones_like(alpha)), dim=-1)
        keep &= T_incl > 1e-4
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    T = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], dim=-1), dim=-1)
    return alpha * T, T[:, -1:] * (1 - alpha[:, -1:]), keep, T


def naive_rasterize_3dgs(params, viewmats, Ks):
    """Dense 3DGS: RGB + expected depth [H, W, 4] and alpha [H, W, 1] for one camera."""
    proj = project_gaussians_3d(params["means"], params["quats"], params["scales"], params["opacities"],
                                viewmats, Ks, WIDTH, HEIGHT)
    vis = torch.nonzero((proj.radii[0] > 0).all(-1))[:, 0]
    vis = vis[torch.argsort(proj.depths[0, vis])]
    means2d, conics = proj.means2d[0, vis], proj.conics[0, vis]
    opac = params["opacities"][vis]
    feats = torch.cat([params["colors"][vis], proj.depths[0, vis, None]], dim=-1)

    def chunk(pix, means2d, conics, opac, feats):
        dx = means2d[None, :, 0] - pix[:, None, 0]
        dy = means2d[None, :, 1] - pix[:, None, 1]
        sigma = 0.5 * (conics[None, :, 0] * dx * dx + conics[None, :, 2] * dy * dy) + conics[None, :, 1] * dx * dy
        alpha = (opac[None] * torch.exp(-sigma)).clamp_max(0.999)
        w, T_final, _, _ = _front_to_back(alpha, sigma < 0)
        return torch.cat([w @ feats, T_final], dim=-1)

    out = torch.cat([
        checkpoint(chunk, pix, means2d, conics, opac, feats, use_reentrant=False)
        for pix in _pixel_chunks(means2d.dtype)
    ])
    alpha = 1 - out[:, -1:]
    rgbd = torch.cat([out[:, :3], out[:, 3:4] / alpha.clamp(min=1e-10)], dim=-1)
    return _as_image(rgbd), _as_image(alpha)


def naive_rasterize_2dgs(params, viewmats, Ks):
    """Dense 2DGS: RGB+ED, alpha, camera-space normals, distortion and median depth for one camera."""
    proj = project_surfels_2d(params["means"], params["quats"], params["scales"], viewmats, Ks, WIDTH, HEIGHT)
    vis = torch.nonzero((proj.radii[0] > 0).all(-1))[:, 0]
    vis = vis[torch.argsort(proj.depths[0, vis])]
    means2d, M = proj.means2d[0, vis], proj.ray_transforms[0, vis]
    opac = params["opacities"][vis]
    feats = torch.cat([params["colors"][vis], proj.normals[0, vis], proj.depths[0, vis, None]], dim=-1)

    def chunk(pix, means2d, M, opac, feats):
        px, py = pix[:, :1, None], pix[:, 1:, None]
        h_u = px * M[None, :, 2, :] - M[None, :, 0, :]  # [P, K, 3]
        h_v = py * M[None, :, 2, :] - M[None, :, 1, :]
        cross = torch.cross(h_u, h_v, dim=-1)
        degenerate = cross[..., 2] == 0
        cz = torch.where(degenerate, torch.ones_like(cross[..., 2]), cross[..., 2])
        g3 = (cross[..., 0] / cz) ** 2 + (cross[..., 1] / cz) ** 2
        g2 = 2.0 * ((means2d[None] - pix[:, None]) ** 2).sum(-1)
        sigma = 0.5 * torch.where(g3 <= g2, g3, g2)
        alpha = (opac[None] * torch.exp(-sigma)).clamp_max(0.999)
        w, T_final, keep, T = _front_to_back(alpha, degenerate | (sigma < 0))
        depth = feats[None, :, -1]
        wd = w * depth
        distort = (2 * (wd * (1 - T) - w * (torch.cumsum(wd, -1) - wd))).sum(-1, keepdim=True)
        with torch.no_grad():
            half = keep & (T > 0.5)
            idx = (half * torch.arange(1, half.shape[1] + 1)).argmax(-1, keepdim=True)
        median = torch.gather(depth.expand_as(w), 1, idx) * half.any(-1, keepdim=True)
        return torch.cat([w @ feats, T_final, distort, median], dim=-1)

    out = torch.cat([
        checkpoint(chunk, pix, means2d, M, opac, feats, use_reentrant=False)
        for pix in _pixel_chunks(means2d.dtype)
    ])
    alpha = 1 - out[:, 7:8]
    rgbd = torch.cat([out[:, :3], out[:, 6:7] / alpha.clamp(min=1e-10)], dim=-1)
    return _as_image(rgbd), _as_image(alpha), _as_image(out[:, 3:6]), _as_image(out[:, 8:9]), _as_image(out[:, 9:10])


def tiled_3dgs(params, viewmats, Ks):
    colors, alphas, _ = rasterize_3dgs(*params.values(), viewmats, Ks, WIDTH, HEIGHT, render_mode="RGB+ED")
    return colors[0], alphas[0]


def tiled_2dgs(params, viewmats, Ks):
    colors, alphas, normals, _, distort, median, _ = rasterize_2dgs(
        *params.values(), viewmats, Ks, WIDTH, HEIGHT, render_mode="RGB+ED"
    )
    # camera-space normals to compare with the dense version (viewmat is the identity here)
    return colors[0], alphas[0], normals[0], distort[0], median[0]


def _loss(outputs) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return sum((torch.rand(o.shape, generator=g) * o).sum() for o in outputs)


def time_fwd_bwd(fn, params, viewmats, Ks, repeats: int) -> tuple[float, float, list[torch.Tensor]]:
    """Best-of-n milliseconds for forward only (no grad) and forward+backward."""
    fwd, both = [], []
    for _ in range(repeats):
        with torch.no_grad():
            t = time.perf_counter()
            fn(params, viewmats, Ks)
            fwd.append(time.perf_counter() - t)
        for p in params.values():
            p.grad = None
        t = time.perf_counter()
        outputs = fn(params, viewmats, Ks)
        _loss(outputs).backward()
        both.append(time.perf_counter() - t)
    return 1e3 * min(fwd), 1e3 * min(both), [o.detach() for o in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaussians", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3, help="tiled runs; the dense side runs once")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dense-fraction", type=float, default=1.0,
                        help="time the dense side on this share of the pixels and scale up")
    args = parser.parse_args()
    global DENSE_FRACTION
    DENSE_FRACTION = args.dense_fraction
    torch.set_num_threads(args.threads)
    params, viewmats, Ks = make_scene(args.gaussians)
    print(f"{args.gaussians} Gaussians, {WIDTH}x{HEIGHT}, 1 camera, {torch.get_num_threads()} threads")
    print(f"{'':6s} {'tiled fwd':>10s} {'tiled f+b':>10s} {'dense fwd':>10s} {'dense f+b':>10s} "
          f"{'f+b ratio':>9s} {'max |diff|':>10s} {'px >1e-3':>8s}")
    for name, tiled, dense in [("3DGS", tiled_3dgs, naive_rasterize_3dgs), ("2DGS", tiled_2dgs, naive_rasterize_2dgs)]:
        tiled(params, viewmats, Ks)  # warm-up
        t_fwd, t_both, out_t = time_fwd_bwd(tiled, params, viewmats, Ks, args.repeats)
        grads_t = {k: v.grad.clone() for k, v in params.items()}
        d_fwd, d_both, out_d = time_fwd_bwd(dense, params, viewmats, Ks, 1)
        n_rendered = min(HEIGHT * WIDTH, len(_pixel_chunks(torch.float32)) * PIXEL_CHUNK)
        scale = HEIGHT * WIDTH / n_rendered
        d_fwd, d_both = d_fwd * scale, d_both * scale
        rows = n_rendered // WIDTH  # compare the fully rendered rows only
        diff = max((a[:rows] - b[:rows]).abs().max().item() for a, b in zip(out_t, out_d))
        differing = torch.stack([((a[:rows] - b[:rows]).abs() > 1e-3).any(-1) for a, b in zip(out_t, out_d)])
        share = 100 * differing.any(0).float().mean().item()
        note = ""
        if scale == 1.0:
            grads_d = {k: v.grad.clone() for k, v in params.items()}
            grad_err = max(((grads_t[k] - grads_d[k]).norm() / grads_d[k].norm().clamp_min(1e-12)).item()
                           for k in grads_d)
            note = f"   (grad rel. diff {grad_err:.1e})"
        else:
            note = f"   (dense timed on {100 / scale:.0f}% of the pixels, scaled x{scale:.1f})"
        print(f"{name:6s} {t_fwd:8.0f}ms {t_both:8.0f}ms {d_fwd:8.0f}ms {d_both:8.0f}ms "
              f"{d_both / t_both:8.1f}x {diff:10.1e} {share:7.2f}%{note}", flush=True)


if __name__ == "__main__":
    main()
