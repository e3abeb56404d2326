"""gfbench's surface normals from depth against gsplat's own ``depth_to_normal``, which they replace on the
CPU: the same bits for values and gradients, and a camera cache that never serves the wrong camera."""

from __future__ import annotations

import math

import torch
from gsplat.utils import depth_to_normal

from gfbench.methods.core import surface_normals as sn


def random_cameras(n: int, seed: int, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-to-world matrices with random rotations and origins, and intrinsics with an off-centre
    principal point."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=generator)
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    rotations = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(n, 3, 3)
    camtoworlds = torch.eye(4).repeat(n, 1, 1)
    camtoworlds[:, :3, :3] = rotations
    camtoworlds[:, :3, 3] = torch.randn(n, 3, generator=generator)
    Ks = torch.tensor([[0.9 * width, 0.0, 0.47 * width + 0.3], [0.0, 0.95 * width, 0.52 * height - 0.2],
                       [0.0, 0.0, 1.0]]).repeat(n, 1, 1)
    return camtoworlds, Ks


def normals_and_depth_grad(fn, depths, camtoworlds, Ks, weights):
    depths = depths.detach().clone().requires_grad_()
    normals = fn(depths, camtoworlds, Ks)
    (normals * weights).sum().backward()
    return normals.detach(), depths.grad


def test_normals_and_their_depth_gradient_equal_gsplats_bit_for_bit():
    H, W = 217, 331
    camtoworlds, Ks = random_cameras(2, seed=3, width=W, height=H)
    generator = torch.Generator().manual_seed(4)
    depths = 1.5 + torch.rand(2, H, W, 1, generator=generator)
    weights = torch.randn(2, H, W, 3, generator=generator)
    sn.RAY_DIRECTIONS.clear()
    expected = normals_and_depth_grad(depth_to_normal, depths, camtoworlds, Ks, weights)
    for _ in range(2):  # the first call fills the camera cache, the second reads it
        got = normals_and_depth_grad(sn.surface_normals, depths, camtoworlds, Ks, weights)
        assert torch.equal(got[0], expected[0])
        assert torch.equal(got[1], expected[1])
    assert len(sn.RAY_DIRECTIONS) == 1


def test_the_fused_cross_product_rounds_as_torch_cross_and_has_its_gradients():
    generator = torch.Generator().manual_seed(5)
    a, b = (torch.randn(4000, 3, generator=generator, requires_grad=True) for _ in range(2))
    grad = torch.randn(4000, 3, generator=generator)
    expected = torch.cross(a, b, dim=-1)
    expected_grads = torch.autograd.grad(expected, (a, b), grad)
    got = sn.CrossProduct.apply(a, b)
    got_grads = torch.autograd.grad(got, (a, b), grad)
    assert torch.equal(got, expected)
    assert all(torch.equal(g, e) for g, e in zip(got_grads, expected_grads))
    # the plain a1 b2 - a2 b1 rounds differently: the equality above is a real check of the fused form
    a0, a1, a2 = a.detach().unbind(-1)
    b0, b1, b2 = b.detach().unbind(-1)
    assert not torch.equal(a1 * b2 - a2 * b1, expected[:, 0].detach())


def test_the_direction_cache_tells_cameras_apart_and_stays_within_its_budget():
    H, W = 20, 30
    camtoworlds, Ks = random_cameras(3, seed=6, width=W, height=H)
    per_camera = H * W * 3 * 4
    cache = sn.RayDirections(max_bytes=2 * per_camera)
    first = cache(camtoworlds[:1], Ks[:1], W, H)
    assert cache(camtoworlds[:1].clone(), Ks[:1].clone(), W, H) is first  # same values, same entry
    nudged = camtoworlds[:1].clone()
    nudged[0, 0, 0] = torch.nextafter(nudged[0, 0, 0], torch.tensor(math.inf))
    assert cache(nudged, Ks[:1], W, H) is not first
    fresh = sn.camera_ray_directions(camtoworlds[1:2], Ks[1:2], W, H)
    assert torch.equal(cache(camtoworlds[1:2], Ks[1:2], W, H), fresh)
    assert len(cache) == 2  # the oldest went to stay within two cameras' bytes
    assert cache(camtoworlds[:1], Ks[:1], W, H) is not first
    shifted = Ks[:1].clone()
    shifted[0, 0, 2] += 1.0
    assert not torch.equal(cache(camtoworlds[:1], shifted, W, H), first)
    assert cache(camtoworlds[:1], Ks[:1], W + 1, H).shape == (1, H, W + 1, 3)


def test_cameras_that_need_gradients_get_fresh_directions_that_carry_them():
    H, W = 8, 9
    camtoworlds, Ks = random_cameras(1, seed=7, width=W, height=H)
    cache = sn.RayDirections()
    directions = cache(camtoworlds.requires_grad_(), Ks, W, H)
    assert directions.requires_grad and len(cache) == 0
    directions.sum().backward()
    assert camtoworlds.grad is not None and camtoworlds.grad[:, :3, :3].abs().sum() > 0
