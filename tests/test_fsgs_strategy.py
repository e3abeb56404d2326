"""FSGSStrategy trains through gsplat's strategy interface on the CPU rasterizer's ``info`` (no CUDA): it unpools
on its schedule, resets opacities on FSGS's offset schedule, keeps its state in step with the Gaussians, and
(code variant) splits isolated large Gaussians."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gfbench.camera import Camera, intrinsics, look_at
from gfbench.methods.core.gaussians import sh_colors
from gfbench.methods.core.rasterize import rasterize_3dgs
from gfbench.methods.core.training import camera_tensors
from gfbench.methods.fsgs.strategy import FSGSStrategy, make_fsgs_strategy

WIDTH, HEIGHT = 32, 24
RESET_OPACITY = 0.05
SCHEDULE = dict(
    refine_start_iter=0, refine_every=2, refine_stop_iter=10,  # refines at 2, 4, 6, 8
    reset_every=3, reset_start_iter=4,  # resets at 4, 7
    unpool_stop_iter=5,  # unpools at 2 and 4
)
RULE = dict(unpool_neighbors=3, unpool_proximity_threshold=1.0, unpool_min_scale=0.5)
NO_GROWTH = dict(grow_grad2d=1e9, prune_opa=0.0, prune_scale3d=math.inf)  # isolate unpooling and resets
STEPS = 10


def scene(seed: int = 0) -> torch.nn.ParameterDict:
    """A tight cluster of 40 small Gaussians at the origin and two large isolated ones about 3 units away."""
    rng = np.random.default_rng(seed)
    xyz = np.concatenate([rng.uniform(-0.3, 0.3, size=(40, 3)), [[3.0, 0.0, 0.0], [-2.0, 0.5, 2.5]]])
    log_scales = np.concatenate([np.full(40, -3.0), [0.0, 0.0]])
    n = len(xyz)
    values = dict(
        means=torch.tensor(xyz, dtype=torch.float32),
        scales=torch.tensor(log_scales, dtype=torch.float32)[:, None].repeat(1, 3),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1),
        opacities=torch.zeros(n),
        sh0=torch.tensor(rng.normal(size=(n, 1, 3)), dtype=torch.float32),
        shN=torch.zeros(n, 3, 3),
    )
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in values.items()})


def camera() -> Camera:
    return Camera(K=intrinsics(20.0, 20.0, WIDTH / 2, HEIGHT / 2), c2w=look_at(np.array([0.0, -6.0, 1.0]), np.zeros(3)),
                  width=WIDTH, height=HEIGHT)


def train(strategy: FSGSStrategy, params, *, observe_resets: bool = False):
    """STEPS steps against a fixed target; returns per step (Gaussian count after the step, whether the
    opacities were at the reset value right after step_post_backward)."""
    optimizers = {name: torch.optim.Adam([p], lr=1e-3, eps=1e-15) for name, p in params.items()}
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    viewmat, K = camera_tensors(camera(), "cpu")
    target = torch.linspace(0, 1, HEIGHT * WIDTH * 3).reshape(HEIGHT, WIDTH, 3)
    counts, reset_seen, unpooled = [], [], []
    for step in range(STEPS):
        if observe_resets:
            with torch.no_grad():
                params["opacities"].fill_(0.0)  # opacity 0.5 before each step: a reset shows as <= 0.05 after it
        colors, _, info = rasterize_3dgs(
            params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
            sh_colors(params), viewmat, K, WIDTH, HEIGHT, sh_degree=1,
        )
        strategy.step_pre_backward(params, optimizers, state, step, info)
        loss = (colors[0, ..., :3] - target).abs().mean()
        loss.backward()
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        before = len(params["means"])
        strategy.last_unpool = None
        strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
        counts.append(len(params["means"]))
        unpooled.append((before, strategy.last_unpool))
        reset_seen.append(bool((torch.sigmoid(params["opacities"]) <= RESET_OPACITY + 1e-6).all()))
        assert len(state["grad2d"]) == len(state["count"]) == counts[-1]
        for name, param in params.items():
            assert len(param) == counts[-1]
            assert optimizers[name].param_groups[0]["params"][0] is param
    return counts, reset_seen, unpooled


def make(**overrides) -> FSGSStrategy:
    return FSGSStrategy(**{**SCHEDULE, **RULE, **NO_GROWTH, "reset_opacity": RESET_OPACITY, **overrides})


def test_strategy_unpools_on_schedule_on_cpu_info():
    params = scene()
    counts, _, unpooled = train(make(), params)
    unpool_steps = [step for step, (_, plan) in enumerate(unpooled) if plan is not None]
    assert unpool_steps == [2, 4]
    first_before, first = unpooled[2]
    assert first_before == 42 and len(first) == 6  # both isolated Gaussians grow 3 midpoints each
    assert set(first.sources.tolist()) == {40, 41}
    for step, (before, plan) in enumerate(unpooled):
        assert counts[step] == before + (len(plan) if plan is not None else 0)
    assert counts[-1] == counts[4]  # nothing grows after unpool_stop_iter
    assert not torch.cuda.is_initialized()


def test_opacity_resets_follow_the_offset_schedule_only():
    # gsplat 1.5.3's own reset never fires; should it ever fire, it would show here at multiples of reset_every
    _, reset_seen, _ = train(make(unpool_stop_iter=0), scene(), observe_resets=True)
    assert [step for step, seen in enumerate(reset_seen) if seen] == [4, 7]
    strategy = make(reset_start_iter=0)
    assert [s for s in range(STEPS) if strategy.is_reset_step(s)] == [3, 6, 9]  # 0: 3DGS's schedule


def test_code_variant_also_splits_isolated_large_gaussians():
    params = scene()
    strategy = make(unpool_stop_iter=0, split_far_threshold=1.0)
    counts, _, _ = train(strategy, params)
    assert counts[1] == 42 and counts[2] == 44  # at step 2 each isolated Gaussian becomes two (+2 net)
    assert counts[-1] > counts[2]  # split halves keep splitting while they stay large and isolated
    with pytest.raises(ValueError, match="unpool_pairing"):
        make(unpool_pairing="tiled")


def test_make_fsgs_strategy_names_missing_keys_and_reads_null_as_never():
    config = {**SCHEDULE, **RULE, "grow_grad2d": 5e-4, "grow_scale3d": 0.01, "prune_opa": 0.005,
              "prune_scale3d": None, "reset_opacity": 0.05, "unpool_score": "mean_distance",
              "unpool_pairing": "paper", "split_far_threshold": None}
    strategy = make_fsgs_strategy(config)
    assert strategy.prune_scale3d == math.inf and strategy.key_for_gradient == "means2d"
    del config["unpool_stop_iter"]
    with pytest.raises(KeyError, match="unpool_stop_iter"):
        make_fsgs_strategy(config)
