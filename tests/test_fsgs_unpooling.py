"""FSGS's proximity-guided unpooling on hand-built point sets, the k-NN under it, and the optimizer state it grows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gfbench.methods.fsgs.knn import nearest_neighbors
from gfbench.methods.fsgs.unpooling import UnpoolSettings, append_gaussians, plan_unpooling, unpool

SH_REST = 15  # degree-3 SH: 16 bands, 15 beyond DC


def make_params(xyz, log_scales, opacity_logits) -> torch.nn.ParameterDict:
    n = len(xyz)
    values = dict(
        means=torch.tensor(xyz, dtype=torch.float32),
        scales=torch.tensor(log_scales, dtype=torch.float32)[:, None].repeat(1, 3),
        quats=torch.nn.functional.normalize(torch.arange(4 * n, dtype=torch.float32).reshape(n, 4) + 1.0, dim=1),
        opacities=torch.tensor(opacity_logits, dtype=torch.float32),
        sh0=torch.full((n, 1, 3), 0.7),
        shN=torch.full((n, SH_REST, 3), 0.3),
    )
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in values.items()})


def make_optimizers(params) -> dict[str, torch.optim.Optimizer]:
    return {name: torch.optim.Adam([p], lr=1e-3, eps=1e-15) for name, p in params.items()}


def take_one_step(params, optimizers) -> None:
    """Give every optimizer non-zero moments."""
    loss = sum((p * torch.linspace(0.5, 1.5, p.numel()).reshape(p.shape)).sum() for p in params.values())
    loss.backward()
    for optimizer in optimizers.values():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


# --- the scene: a tight cluster, two isolated large Gaussians and one isolated small one --------------------
CLUSTER = [(10.0, 0.0, 0.0), (10.0, 0.2, 0.0), (10.0, 0.0, 0.5), (10.1, 0.3, 0.3)]
S1, S2, S3 = (0.0, 0.0, 0.0), (0.0, 0.0, -30.0), (0.0, 50.0, 0.0)
POINTS = [*CLUSTER, S1, S2, S3]  # indices: cluster 0-3, S1 = 4, S2 = 5, S3 = 6
I_S1, I_S2 = 4, 5
LOG_SCALES = [-3.0, -2.9, -2.8, -2.7, 1.0, 1.1, -3.0]  # S1, S2 larger than e^0 = 1 world unit; S3 small
OPACITY_LOGITS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
EXTENT = 1.0
# scores: S1 ~ 10 (its 3 neighbours are cluster points 0, 1, 2), S2 ~ 31 (S1, cluster 0, cluster 1), S3 ~ 50;
# cluster points < 1. With a threshold of 2 x extent and a minimum size of 0.5 x extent S1 and S2 grow.
SETTINGS = UnpoolSettings(neighbors=3, proximity_threshold=2.0, min_scale=0.5)

# hand-derived edges, as (source, destination) -> midpoint
PAPER_EDGES = {
    (I_S1, 0): (5.0, 0.0, 0.0),
    (I_S1, 1): (5.0, 0.1, 0.0),
    (I_S1, 2): (5.0, 0.0, 0.25),
    (I_S2, I_S1): (0.0, 0.0, -15.0),
    (I_S2, 0): (5.0, 0.0, -15.0),
    (I_S2, 1): (5.0, 0.1, -15.0),
}
# the official code's pairing: sources tiled (S1, S2, S1, S2, S1, S2) against neighbours row by row
# (0, 1, 2 | S1, 0, 1)
CODE_EDGES = [(I_S1, 0), (I_S2, 1), (I_S1, 2), (I_S2, I_S1), (I_S1, 0), (I_S2, 1)]


def scene_params():
    return make_params(POINTS, LOG_SCALES, OPACITY_LOGITS)


def test_knn_matches_brute_force_with_coincident_points():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(500, 3))
    xyz[100:110] = xyz[100]  # ten coincident points: each must still not count itself
    points = torch.tensor(xyz, dtype=torch.float32)
    brute = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    np.fill_diagonal(brute, np.inf)
    expected = np.sort(brute, axis=1)[:, :3]
    for method in ("kdtree", "cdist"):
        distances, indices = nearest_neighbors(points, 3, method=method)
        assert distances.shape == (500, 3) and indices.dtype == torch.int64
        np.testing.assert_allclose(distances.numpy(), expected, atol=1e-5)
        assert not (indices == torch.arange(500)[:, None]).any()
        recomputed = np.linalg.norm(xyz[indices.numpy()] - xyz[:, None], axis=-1)
        np.testing.assert_allclose(recomputed, expected, atol=1e-5)


def test_knn_small_sets_and_errors():
    distances, indices = nearest_neighbors(torch.zeros(1, 3), 3)
    assert distances.shape == (1, 0) and indices.shape == (1, 0)
    distances, _ = nearest_neighbors(torch.tensor([[0.0, 0, 0], [3.0, 4.0, 0]]), 3)
    assert distances.tolist() == [[5.0], [5.0]]
    with pytest.raises(ValueError, match=r"shape \[N, 3\]"):
        nearest_neighbors(torch.zeros(4, 2), 3)
    with pytest.raises(ValueError, match="unknown nearest-neighbour method"):
        nearest_neighbors(torch.zeros(4, 3), 2, method="octree")


def test_unpooling_grows_midpoints_of_every_far_large_gaussian_with_its_own_neighbours():
    params = scene_params()
    plan = plan_unpooling(params, EXTENT, SETTINGS)
    edges = list(zip(plan.sources.tolist(), plan.destinations.tolist()))
    assert sorted(edges) == sorted(PAPER_EDGES)  # S3 (far but small) and the cluster (dense) grow nothing
    for row, edge in enumerate(edges):
        dst = edge[1]
        np.testing.assert_allclose(plan.new["means"][row].numpy(), PAPER_EDGES[edge], atol=1e-6)
        np.testing.assert_allclose(plan.new["scales"][row].numpy(), [LOG_SCALES[dst]] * 3, rtol=1e-6)
        assert plan.new["opacities"][row].item() == pytest.approx(OPACITY_LOGITS[dst])
        assert plan.new["quats"][row].tolist() == [1.0, 0.0, 0.0, 0.0]
        assert plan.new["sh0"][row].abs().sum() == 0  # DC zero: gsplat's colour 0.5 + SH_C0 * 0 = mid grey
        assert plan.new["shN"][row].shape == (SH_REST, 3) and plan.new["shN"][row].abs().sum() == 0


def test_code_pairing_reproduces_the_official_mismatch():
    params = scene_params()
    plan = plan_unpooling(params, EXTENT, UnpoolSettings(neighbors=3, proximity_threshold=2.0, min_scale=0.5,
                                                         pairing="code"))
    edges = list(zip(plan.sources.tolist(), plan.destinations.tolist()))
    assert edges == CODE_EDGES
    xyz = np.array(POINTS)
    for row, (src, dst) in enumerate(edges):
        np.testing.assert_allclose(plan.new["means"][row].numpy(), (xyz[src] + xyz[dst]) / 2, atol=1e-6)
    # S2 never reaches its own neighbour 0, and S1 <-> 0 is grown twice
    assert (I_S2, 0) not in edges and edges.count((I_S1, 0)) == 2


def test_a_single_source_pairs_the_same_way_under_both_rules():
    params = scene_params()
    only_s1 = UnpoolSettings(neighbors=3, proximity_threshold=2.0, min_scale=0.5)
    with torch.no_grad():
        params["scales"][I_S2] = -3.0  # S2 now small: S1 is the only source
    paper = plan_unpooling(params, EXTENT, only_s1)
    code = plan_unpooling(params, EXTENT, UnpoolSettings(neighbors=3, proximity_threshold=2.0, min_scale=0.5,
                                                         pairing="code"))
    assert paper.sources.tolist() == code.sources.tolist() == [I_S1] * 3
    assert paper.destinations.tolist() == code.destinations.tolist() == [0, 1, 2]


def test_dense_points_grow_nothing():
    grid = np.stack(np.meshgrid(*[np.linspace(0, 1, 8)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    params = make_params(grid, [2.0] * len(grid), [0.0] * len(grid))  # large Gaussians, 1/7 apart
    optimizers = make_optimizers(params)
    plan = unpool(params, optimizers, {}, EXTENT, UnpoolSettings(proximity_threshold=0.2, min_scale=0.5))
    assert len(plan) == 0 and len(params["means"]) == len(grid)


def test_thresholds_are_relative_to_the_extent_and_the_size_condition_can_be_dropped():
    params = scene_params()
    rule = UnpoolSettings(proximity_threshold=3.0, min_scale=0.5)
    # scores: S1 ~10, S2 ~31, S3 50; sizes: S1 e^1 = 2.7, S2 e^1.1 = 3.0, S3 e^-3
    assert set(plan_unpooling(params, 1.0, rule).sources.tolist()) == {I_S1, I_S2}
    assert set(plan_unpooling(params, 4.0, rule).sources.tolist()) == {I_S2}  # 3 x 4 = 12 > S1's 10
    assert set(plan_unpooling(params, 6.2, rule).sources.tolist()) == set()  # S2 far enough, but 3.0 < 0.5 x 6.2
    no_size = UnpoolSettings(proximity_threshold=3.0, min_scale=None)
    assert set(plan_unpooling(params, 4.0, no_size).sources.tolist()) == {I_S2, 6}  # small S3 grows too


def test_squared_score_is_the_codes_units_dependent_rule():
    params = scene_params()
    # squared scores: S1 ~ 100, S2 ~ 967; with a threshold of 200 x extent only S2 is selected
    plan = plan_unpooling(params, EXTENT, UnpoolSettings(proximity_threshold=200.0, min_scale=0.5,
                                                         score="mean_squared_distance"))
    assert set(plan.sources.tolist()) == {I_S2}
    with pytest.raises(ValueError, match="unpool_score must be one of"):
        UnpoolSettings(score="median")
    with pytest.raises(ValueError, match="unpool_pairing must be one of"):
        UnpoolSettings(pairing="zip")


def test_unpool_extends_parameters_optimizer_moments_and_strategy_state_consistently():
    params = scene_params()
    optimizers = make_optimizers(params)
    take_one_step(params, optimizers)
    n = len(params["means"])
    old = {name: p.detach().clone() for name, p in params.items()}
    old_moments = {name: {k: v.clone() for k, v in opt.state[params[name]].items()} for name, opt in optimizers.items()}
    state = {"grad2d": torch.arange(n, dtype=torch.float32), "count": torch.ones(n), "scene_scale": EXTENT}

    plan = unpool(params, optimizers, state, EXTENT, SETTINGS)
    added = len(plan)
    assert added == len(PAPER_EDGES)
    for name, param in params.items():
        assert len(param) == n + added and param.requires_grad
        torch.testing.assert_close(param[:n].detach(), old[name])
        torch.testing.assert_close(param[n:].detach(), plan.new[name])
        optimizer = optimizers[name]
        assert optimizer.param_groups[0]["params"][0] is param  # the optimizer holds the new tensor
        moments = optimizer.state[param]
        assert moments["step"] == old_moments[name]["step"]
        for key in ("exp_avg", "exp_avg_sq"):
            assert moments[key].shape == param.shape
            torch.testing.assert_close(moments[key][:n], old_moments[name][key])
            assert moments[key][n:].abs().sum() == 0
    assert state["grad2d"].tolist() == list(range(n)) + [0.0] * added
    assert state["count"].tolist() == [1.0] * n + [0.0] * added
    assert state["scene_scale"] == EXTENT
    take_one_step(params, optimizers)  # the grown optimizer still steps


def test_append_gaussians_refuses_incomplete_or_ragged_input():
    params = scene_params()
    optimizers = make_optimizers(params)
    with pytest.raises(ValueError, match="lack parameters"):
        append_gaussians(params, optimizers, {}, {"means": torch.zeros(1, 3)})
    ragged = {name: torch.zeros((2 if name == "means" else 1, *p.shape[1:])) for name, p in params.items()}
    with pytest.raises(ValueError, match="disagree on their number"):
        append_gaussians(params, optimizers, {}, ragged)


def test_new_gaussian_colour_is_mid_grey():
    from gfbench.methods.core.gaussians import SH_C0

    params = scene_params()
    plan = plan_unpooling(params, EXTENT, SETTINGS)
    rgb = SH_C0 * plan.new["sh0"][:, 0, :] + 0.5  # gsplat's degree-0 colour
    assert torch.allclose(rgb, torch.full_like(rgb, 0.5))
    assert math.isclose(SH_C0, 0.28209479177387814)
