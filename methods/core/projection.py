"""Projection of 3D Gaussians and 2D Gaussian surfels onto pinhole cameras, in plain PyTorch.

These follow gsplat 1.5.3's CUDA kernels (``ProjectionEWA3DGSFused.cu`` and ``Projection2DGSFused.cu``)
step for step, so the CPU rasterizer produces the same ``radii``/``means2d``/... as gsplat's
``rasterization(..., packed=False)``. Everything differentiable is plain autograd; the culling decisions
(radii) are computed without gradients.

Conventions (gsplat's): ``viewmats`` are world-to-camera [C, 4, 4] in OpenCV axes (x right, y down,
z forward), ``Ks`` are [C, 3, 3] pixel intrinsics, pixel centres sit at integer + 0.5, quaternions are wxyz
and need not be normalised. Gaussians that are culled for a camera get ``radii == 0`` and zero
``means2d``/``depths``/``conics`` there (they are never rasterized, so they receive no gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat's ALPHA_THRESHOLD: fainter contributions are skipped
MAX_EXTENT_SIGMAS = 3.33  # gsplat's bounding-box half-size in standard deviations


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] from (not necessarily unit) wxyz quaternions [..., 4]."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def world_to_camera(means: Tensor, viewmats: Tensor) -> Tensor:
    """Camera-space centres [C, N, 3] of world points [N, 3]."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    return torch.einsum("cij,nj->cni", R, means) + t[:, None, :]


def _intrinsics(Ks: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """fx, fy, cx, cy as [C, 1] columns so they broadcast against [C, N]."""
    return Ks[:, 0, 0, None], Ks[:, 1, 1, None], Ks[:, 0, 2, None], Ks[:, 1, 2, None]


def _cull_outside_image(means2d: Tensor, radius: Tensor, width: int, height: int) -> Tensor:
    """True where the bounding box [mean - radius, mean + radius] overlaps the image (gsplat's test)."""
    x, y = means2d[..., 0], means2d[..., 1]
    rx, ry = radius[..., 0], radius[..., 1]
    return (x + rx > 0) & (x - rx < width) & (y + ry > 0) & (y - ry < height)


@dataclass
class Projection3D:
    """Per-camera screen-space Gaussians, all [C, N, ...]."""

    means2d: Tensor  # [C, N, 2] pixel coordinates of the projected centres
    conics: Tensor  # [C, N, 3] inverse 2D covariance (a, b, c): sigma = 0.5 (a dx^2 + c dy^2) + b dx dy
    depths: Tensor  # [C, N] camera-space z
    radii: Tensor  # [C, N, 2] int32 half-sizes of the bounding box in pixels, 0 where culled


def project_gaussians_3d(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
) -> Projection3D:
    """EWA splatting: Sigma2d = J W Sigma W^T J^T + eps2d I, bounding box from the opacity-aware extent."""
    means_c = world_to_camera(means, viewmats)  # [C, N, 3]
    M = quat_to_rotmat(quats) * scales[:, None, :]  # R S, [N, 3, 3]
    covars = M @ M.transpose(-1, -2)
    R_cw = viewmats[:, :3, :3]
    covars_c = torch.einsum("cij,njk,clk->cnil", R_cw, covars, R_cw)  # [C, N, 3, 3]

    x, y, z = means_c.unbind(-1)
    in_depth = (z >= near_plane) & (z <= far_plane)
    # Gaussians behind the near plane are culled anyway; a harmless depth keeps their (unused) maths
    # finite, so that zero upstream gradients never meet an inf and turn into NaN.
    z = torch.where(in_depth, z, torch.ones_like(z))

    fx, fy, cx, cy = _intrinsics(Ks)
    # As gsplat (and the reference 3DGS code) do, the Jacobian is evaluated at a centre clamped to
    # 1.3x the field of view, which keeps far off-screen Gaussians from blowing up.
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    tx = z * torch.clamp(x / z, min=-lim_x_neg, max=lim_x_pos)
    ty = z * torch.clamp(y / z, min=-lim_y_neg, max=lim_y_pos)
    zeros = torch.zeros_like(z)
    J = torch.stack(
        [fx / z, zeros, -fx * tx / (z * z), zeros, fy / z, -fy * ty / (z * z)], dim=-1
    ).reshape(z.shape + (2, 3))
    cov2d = J @ covars_c @ J.transpose(-1, -2)  # [C, N, 2, 2]
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)

    a = cov2d[..., 0, 0] + eps2d
    b = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    ok_det = det > 0
    det = torch.where(ok_det, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)

    with torch.no_grad():
        opac = opacities.detach()[None, :].expand_as(z)
        bright = opac >= ALPHA_THRESHOLD
        # Opacity-aware bounding box (gsplat; arXiv:2402.00525 B.2): beyond sqrt(2 ln(255 o)) sigmas
        # the Gaussian's alpha is below 1/255 and would be skipped anyway.
        extend = torch.sqrt(2.0 * torch.log(opac.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extend = extend.clamp_max(MAX_EXTENT_SIGMAS)
        radius = torch.ceil(extend[..., None] * torch.stack([a, c], dim=-1).clamp_min(0).sqrt())
        visible = in_depth & ok_det & bright
        visible &= (radius > radius_clip).any(dim=-1)
        visible &= _cull_outside_image(means2d.detach(), radius, width, height)
        radii = torch.where(visible[..., None], radius, torch.zeros_like(radius)).int()

    vis = visible[..., None]
    return Projection3D(
        means2d=torch.where(vis, means2d, torch.zeros_like(means2d)),
        conics=torch.where(vis, conics, torch.zeros_like(conics)),
        depths=torch.where(visible, means_c[..., 2], torch.zeros_like(z)),
        radii=radii,
    )


@dataclass
class ProjectionSurfels:
    """Per-camera screen-space surfels (2DGS), all [C, N, ...]."""

    means2d: Tensor  # [C, N, 2] projected centre (centre of the 1-sigma ellipse's bounding box)
    ray_transforms: Tensor  # [C, N, 3, 3] K [t_u t_v mu] (row-major KWH of the 2DGS paper)
    depths: Tensor  # [C, N] camera-space z of the centre
    normals: Tensor  # [C, N, 3] camera-space unit normals, flipped to face the camera
    radii: Tensor  # [C, N, 2] int32, 0 where culled


def project_surfels_2d(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
) -> ProjectionSurfels:
    """2DGS projection: the homogeneous splat-to-pixel transform and its screen bounding box.

    The surfel is the plane through ``mu`` spanned by the first two rotation axes scaled by
    ``scales[:, :2]`` (the third scale is ignored). With ``H = K [s_u t_u, s_v t_v, mu]`` a splat point
    (u, v) lands on pixel ``H (u, v, 1)`` in homogeneous coordinates; the rasterizer inverts this per pixel.
    """
    means_c = world_to_camera(means, viewmats)  # [C, N, 3]
    R_cw = viewmats[:, :3, :3]
    rot_c = torch.einsum("cij,njk->cnik", R_cw, quat_to_rotmat(quats))  # [C, N, 3, 3]
    tangents = rot_c[..., :2] * scales[None, :, None, :2]  # columns s_u t_u, s_v t_v
    WH = torch.cat([tangents, means_c[..., None]], dim=-1)  # [C, N, 3, 3]
    KWH = torch.einsum("cij,cnjk->cnik", Ks, WH)
    M0, M1, M2 = KWH[..., 0, :], KWH[..., 1, :], KWH[..., 2, :]

    # Bounding box of the 1-sigma ellipse in closed form (diff-surfel-rasterization issue #8).
    signs = torch.tensor([1.0, 1.0, -1.0], dtype=means.dtype, device=means.device)
    distance = (signs * M2 * M2).sum(-1)
    ok_distance = distance != 0
    f = signs / torch.where(ok_distance, distance, torch.ones_like(distance))[..., None]
    means2d = torch.stack([(f * M0 * M2).sum(-1), (f * M1 * M2).sum(-1)], dim=-1)
    second = torch.stack([(f * M0 * M0).sum(-1), (f * M1 * M1).sum(-1)], dim=-1)

    normals = rot_c[..., 2]  # unit normal: the third axis, unscaled (as gsplat's CUDA kernel)
    facing = (-normals * means_c).sum(-1, keepdim=True) > 0
    normals = torch.where(facing, normals, -normals)

    with torch.no_grad():
        half_extent = (means2d * means2d - second).clamp_min(1e-4).sqrt()
        radius = torch.ceil(MAX_EXTENT_SIGMAS * half_extent)
        z = means_c[..., 2]
        visible = ok_distance & (z > near_plane) & (z < far_plane)
        visible &= (radius > radius_clip).any(dim=-1)
        visible &= _cull_outside_image(means2d.detach(), radius, width, height)
        radii = torch.where(visible[..., None], radius, torch.zeros_like(radius)).int()

    vis = visible[..., None]
    return ProjectionSurfels(
        means2d=torch.where(vis, means2d, torch.zeros_like(means2d)),
        ray_transforms=torch.where(vis[..., None], KWH, torch.zeros_like(KWH)),
        depths=torch.where(visible, means_c[..., 2], torch.zeros_like(means_c[..., 2])),
        normals=torch.where(vis, normals, torch.zeros_like(normals)),
        radii=radii,
    )


def sh_to_colors(
    sh_degree: int, coeffs: Tensor, means: Tensor, viewmats: Tensor
) -> Tensor:
    """View-dependent RGB [C, N, 3] from SH coefficients [N, K, 3] or [C, N, K, 3], as gsplat does.

    Directions run from each camera centre to the Gaussian; the result is SH + 0.5 clamped at 0
    (the Inria convention gsplat copies). Uses gsplat's pure-PyTorch SH evaluation.
    """
    from gsplat.cuda._torch_impl import _spherical_harmonics  # pure torch, no CUDA build

    C, N = viewmats.shape[0], means.shape[0]
    campos = torch.inverse(viewmats)[:, :3, 3]  # [C, 3]
    dirs = means[None, :, :] - campos[:, None, :]  # [C, N, 3]
    if coeffs.dim() == 3:
        coeffs = coeffs[None].expand(C, N, -1, 3)
    return torch.clamp_min(_spherical_harmonics(sh_degree, dirs, coeffs) + 0.5, 0.0)
