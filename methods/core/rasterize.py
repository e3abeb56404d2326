"""Gaussian rasterization that runs where the tensors live.

:func:`rasterize_3dgs` and :func:`rasterize_2dgs` take and return exactly what gsplat 1.5.3's
``rasterization`` / ``rasterization_2dgs`` do with ``packed=False``, so gsplat's ``DefaultStrategy`` can
densify from their ``info`` dict. On CUDA tensors they call gsplat's fused kernels; otherwise the CPU
tile rasterizer in :mod:`.rasterize_cpu` / :mod:`.rasterize_cpu_2dgs` (compiled numba kernels), which
matches those kernels' maths and culling rules (see those modules for the details).

One deliberate difference from gsplat: ``rasterization_2dgs`` returns ``surf_normals`` with the camera
axis squeezed away when there is a single camera; here it is always [C, H, W, 3] (or None when the
render mode has no depth), on both devices.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .rasterize_cpu import rasterize_3dgs_cpu
from .rasterize_cpu_2dgs import rasterize_2dgs_cpu


def rasterize_3dgs(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, need not be normalised
    scales: Tensor,  # [N, 3] activated
    opacities: Tensor,  # [N] activated
    colors: Tensor,  # [N, D] / [C, N, D], or SH [N, K, 3] / [C, N, K, 3] with sh_degree
    viewmats: Tensor,  # [C, 4, 4] world-to-camera, OpenCV axes
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    sh_degree: Optional[int] = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    backgrounds: Optional[Tensor] = None,  # [C, D]
    render_mode: str = "RGB+ED",
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
) -> tuple[Tensor, Tensor, dict]:
    """Render 3D Gaussians: ``(render_colors [C, H, W, D(+1)], render_alphas [C, H, W, 1], info)``.

    The depth channel (last) is present for render modes with D/ED. ``info`` has gsplat's keys, among them
    ``means2d`` [C, N, 2] (call ``.retain_grad()`` on it before backward), ``radii`` [C, N, 2] int32,
    ``depths`` [C, N], ``width``, ``height``, ``n_cameras`` and ``gaussian_ids`` (None).
    """
    kwargs = dict(
        sh_degree=sh_degree, near_plane=near_plane, far_plane=far_plane, backgrounds=backgrounds,
        render_mode=render_mode, eps2d=eps2d, radius_clip=radius_clip,
    )
    if means.is_cuda:
        from gsplat import rasterization

        return rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, packed=False, **kwargs
        )
    return rasterize_3dgs_cpu(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **kwargs)


def rasterize_2dgs(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]; the third scale is ignored (surfels are flat)
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D] / [C, N, D], or SH [N, K, 3] / [C, N, K, 3] with sh_degree
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    sh_degree: Optional[int] = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    backgrounds: Optional[Tensor] = None,
    render_mode: str = "RGB+ED",
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    distloss: bool = False,
    depth_mode: str = "expected",
) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor], Tensor, Tensor, dict]:
    """Render 2D Gaussian surfels, returning gsplat's 7-tuple:

    ``render_colors`` [C, H, W, D(+1)], ``render_alphas`` [C, H, W, 1], ``render_normals`` [C, H, W, 3]
    (alpha-weighted splat normals, world space), ``surf_normals`` [C, H, W, 3] (world-space normals from the
    rendered depth's finite differences; None unless the render mode is RGB+D/RGB+ED),
    ``render_distort`` [C, H, W, 1] (the L1 depth-distortion of Mip-NeRF 360, computed from the last colour
    channel), ``render_median`` [C, H, W, 1] (depth of the Gaussian at which accumulated opacity crosses 0.5),
    ``info``. ``eps2d`` is accepted for signature parity and unused (as in gsplat). For densification use
    ``DefaultStrategy(key_for_gradient="gradient_2dgs")``.
    """
    kwargs = dict(
        sh_degree=sh_degree, near_plane=near_plane, far_plane=far_plane, backgrounds=backgrounds,
        render_mode=render_mode, eps2d=eps2d, radius_clip=radius_clip, distloss=distloss,
        depth_mode=depth_mode,
    )
    if means.is_cuda:
        from gsplat import rasterization_2dgs

        out = rasterization_2dgs(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, packed=False, **kwargs
        )
        colors_, alphas, normals, surf_normals, distort, median, info = out
        if surf_normals is not None and surf_normals.dim() == 3:  # gsplat squeezes a single camera away
            surf_normals = surf_normals[None]
        return colors_, alphas, normals, surf_normals, distort, median, info
    return rasterize_2dgs_cpu(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **kwargs)
