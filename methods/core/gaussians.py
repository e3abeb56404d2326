"""Gaussian parameters as gsplat's strategies expect them: a ``ParameterDict`` of ``means [N, 3]``,
``scales [N, 3]`` (log), ``quats [N, 4]`` (wxyz, unnormalized), ``opacities [N]`` (logit), ``sh0 [N, 1, 3]``
and ``shN [N, K-1, 3]``, with one Adam optimizer (one param group) per parameter.

Every hyperparameter comes from the method's config (its preset); see ``methods/presets/3dgs.yaml``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from gfbench.camera import Camera
from gfbench.scene import PointCloud

SH_C0 = 0.28209479177387814  # the degree-0 spherical-harmonic basis constant, 1 / (2 sqrt(pi))

PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


def camera_centers(cameras: list[Camera]) -> np.ndarray:
    return np.stack([c.center for c in cameras])


def scene_extent(cameras: list[Camera], factor: float) -> float:
    """3DGS's ``cameras_extent``: ``factor`` x the largest distance of a camera center to their mean.

    A single camera (or coincident ones) has no spread; it then falls back to ``factor`` x 1, one world unit.
    """
    centers = camera_centers(cameras)
    radius = float(np.linalg.norm(centers - centers.mean(axis=0), axis=1).max())
    return factor * (radius if radius > 0 else 1.0)


def view_volume(cameras: list[Camera], extent: float) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box holding the camera centers and the points ``extent`` ahead of each camera."""
    centers = camera_centers(cameras)
    ahead = centers + extent * np.stack([c.c2w[:3, 2] for c in cameras])
    corners = np.concatenate([centers, ahead])
    return corners.min(axis=0), corners.max(axis=0)


def random_points(cameras: list[Camera], count: int, extent: float, rng: np.random.Generator) -> PointCloud:
    """``count`` points uniform in the cameras' view volume, with uniform random colors."""
    low, high = view_volume(cameras, extent)
    xyz = rng.uniform(low, high, size=(count, 3))
    rgb = rng.integers(0, 256, size=(count, 3))
    return PointCloud(xyz=xyz, rgb=rgb)


def initial_points(
    points: PointCloud | None, cameras: list[Camera], config: dict[str, Any], extent: float, rng: np.random.Generator
) -> PointCloud:
    """The given points, topped up with random ones when there are fewer than ``init_min_points``."""
    given = 0 if points is None else len(points)
    if given >= config["init_min_points"]:
        return points
    extra = random_points(cameras, config["init_random_points"], extent, rng)
    if given == 0:
        return extra
    return PointCloud(xyz=np.concatenate([points.xyz, extra.xyz]), rgb=np.concatenate([points.rgb, extra.rgb]))


def mean_neighbor_distance(xyz: np.ndarray, neighbors: int) -> np.ndarray:
    """Per point, sqrt of the mean squared distance to its ``neighbors`` nearest other points (3DGS init)."""
    k = min(neighbors, len(xyz) - 1)
    if k < 1:
        return np.ones(len(xyz))
    dist, _ = cKDTree(xyz).query(xyz, k=k + 1)
    dist2 = np.asarray(dist, np.float64).reshape(len(xyz), k + 1)[:, 1:] ** 2
    return np.sqrt(np.maximum(dist2.mean(axis=1), 1e-7))


def random_quaternions(count: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly distributed unit quaternions (wxyz)."""
    q = rng.normal(size=(count, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def rgb_to_sh0(rgb: np.ndarray) -> np.ndarray:
    """Colors in [0, 1] to degree-0 SH coefficients (gsplat adds 0.5 after evaluating the SH)."""
    return (rgb - 0.5) / SH_C0


def init_params(
    cloud: PointCloud, config: dict[str, Any], rng: np.random.Generator, *, surfel: bool, device: str | torch.device
) -> torch.nn.ParameterDict:
    """Gaussians at the points of ``cloud``.

    Scales: ``init_scale_factor`` x the mean distance to the ``init_scale_neighbors`` nearest points (3DGS);
    rotations: identity, or uniform random when ``init_random_rotation``; opacity ``init_opacity``;
    color: the point color in the DC band, higher bands zero. Surfels (``surfel=True``) keep a third scale
    ``surfel_flat_scale`` that the surfel rasterizer ignores; it stays below the two in-plane scales so that
    gsplat's strategy, which reads ``max(scales)``, sees the surfel's size.
    """
    n = len(cloud)
    xyz = cloud.xyz.astype(np.float64)
    log_scale = np.log(config["init_scale_factor"] * mean_neighbor_distance(xyz, config["init_scale_neighbors"]))
    scales = np.repeat(log_scale[:, None], 3, axis=1)
    if surfel:
        scales[:, 2] = math.log(config["surfel_flat_scale"])
    if config["init_random_rotation"]:
        quats = random_quaternions(n, rng)
    else:
        quats = np.tile([1.0, 0.0, 0.0, 0.0], (n, 1))
    opacity = config["init_opacity"]
    opacities = np.full(n, math.log(opacity / (1.0 - opacity)))
    sh0 = rgb_to_sh0(cloud.rgb.astype(np.float64) / 255.0)[:, None, :]
    num_bands = (config["sh_degree"] + 1) ** 2
    shN = np.zeros((n, num_bands - 1, 3))
    arrays = dict(means=xyz, scales=scales, quats=quats, opacities=opacities, sh0=sh0, shN=shN)
    return torch.nn.ParameterDict(
        {name: torch.nn.Parameter(as_float_tensor(arrays[name], device)) for name in PARAM_NAMES}
    )


def as_float_tensor(array: np.ndarray, device: str | torch.device) -> Tensor:
    # a fresh tensor with standard strides (numpy's [:, None, :] views have a 0 stride that autograd dislikes)
    out = torch.empty(array.shape, dtype=torch.float32, device=device)
    return out.copy_(torch.from_numpy(np.asarray(array, dtype=np.float32)))


def learning_rates(config: dict[str, Any], extent: float) -> dict[str, float]:
    """Initial learning rate per parameter; the means' rate is scaled by the scene extent (3DGS)."""
    rates = {name: float(config[f"{name}_lr"]) for name in PARAM_NAMES}
    rates["means"] *= extent
    return rates


def make_optimizers(
    params: torch.nn.ParameterDict, config: dict[str, Any], extent: float
) -> dict[str, torch.optim.Adam]:
    """One Adam per parameter (gsplat's strategies rewrite each optimizer's single param group)."""
    rates = learning_rates(config, extent)
    return {
        name: torch.optim.Adam([{"params": [params[name]], "lr": rates[name], "name": name}], eps=config["adam_eps"])
        for name in PARAM_NAMES
    }


def means_lr_scheduler(optimizer: torch.optim.Optimizer, config: dict[str, Any]) -> torch.optim.lr_scheduler.ExponentialLR:
    """Exponential decay of the means' rate from ``means_lr`` to ``means_lr_final`` over ``steps`` steps."""
    gamma = (config["means_lr_final"] / config["means_lr"]) ** (1.0 / max(int(config["steps"]), 1))
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)


def sh_degree_at(step: int, config: dict[str, Any]) -> int:
    """The active SH degree: one more band every ``sh_degree_interval`` steps, up to ``sh_degree``."""
    return min(step // int(config["sh_degree_interval"]), int(config["sh_degree"]))


def sh_colors(params: torch.nn.ParameterDict) -> Tensor:
    """All SH coefficients ``[N, K, 3]``."""
    return torch.cat([params["sh0"], params["shN"]], dim=1)
