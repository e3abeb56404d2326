"""GenFusion's sparsity-aware densification on constructed statistics: which Gaussians the visibility gate
admits and refuses, whose statistics are reset, and that nothing else is (unlike gsplat's default)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gfbench.methods import load_preset
from gfbench.methods.core.training import OpacityResettingStrategy
from gfbench.methods.genfusion.densification import SparsityAwareStrategy

SMALL, LARGE = 0.005, 0.05  # world scales on either side of grow_scale3d (0.01) x scene_scale (1.0)
HIGH, LOW = 5e-4, 1e-4  # mean gradients on either side of grow_grad2d (2e-4)

# tag: (scale, mean gradient, visibility count) at step 1000, where the gate is min(100, 50 + 10) = 60
CASES = {
    0: (SMALL, HIGH, 60),  # cloned: the count reaches the gate exactly
    1: (SMALL, HIGH, 59),  # refused: one view short
    2: (SMALL, LOW, 200),  # not densified: gradient low; keeps its statistics
    3: (LARGE, HIGH, 80),  # split
    4: (LARGE, HIGH, 40),  # refused
    5: (LARGE, HIGH, 600),  # seen more than 500 times: reset after cloning, so not split this round
    6: (SMALL, HIGH, 700),  # cloned (and reset)
    7: (LARGE, LOW, 501),  # reset: seen more than 500 times
    8: (SMALL, LOW, 500),  # kept: 500 is not more than 500
}


def strategy(**overrides) -> SparsityAwareStrategy:
    numbers = dict(
        refine_start_iter=500, refine_every=100, refine_stop_iter=15000, grow_grad2d=2e-4, grow_scale3d=0.01,
        prune_opa=0.05, prune_scale3d=0.1, reset_every=3000, reset_opacity=0.01, min_visibility_base=50,
        min_visibility_every=100, min_visibility_cap=100, stats_reset_count=500, key_for_gradient="means2d",
    )
    return SparsityAwareStrategy(**{**numbers, **overrides})


def gaussians(cases):
    """Parameters with one Gaussian per case (its tag in sh0), Adam optimizers, and the case's statistics."""
    n = len(cases)
    scales = torch.tensor([[np.log(s)] * 3 for s, _, _ in cases.values()], dtype=torch.float32)
    params = torch.nn.ParameterDict({
        "means": torch.nn.Parameter(torch.arange(3 * n, dtype=torch.float32).reshape(n, 3)),
        "scales": torch.nn.Parameter(scales),
        "quats": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]] * n)),
        "opacities": torch.nn.Parameter(torch.full((n,), 2.0)),  # sigmoid 0.88: never pruned
        "sh0": torch.nn.Parameter(torch.tensor(list(cases), dtype=torch.float32).reshape(n, 1, 1).repeat(1, 1, 3)),
    })
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    counts = torch.tensor([c for _, _, c in cases.values()], dtype=torch.float32)
    grads = torch.tensor([g for _, g, _ in cases.values()], dtype=torch.float32)
    state = {"grad2d": grads * counts, "count": counts.clone(), "scene_scale": 1.0}
    return params, optimizers, state


def by_tag(params, state):
    """tag -> list of (count, grad2d) of the Gaussians carrying that tag."""
    out: dict[int, list[tuple[float, float]]] = {}
    for tag, count, grad in zip(params["sh0"][:, 0, 0].tolist(), state["count"].tolist(), state["grad2d"].tolist()):
        out.setdefault(int(tag), []).append((count, grad))
    return out


def test_the_gate_admits_and_refuses_the_right_gaussians():
    params, optimizers, state = gaussians(CASES)
    s = strategy()
    s.check_sanity(params, optimizers)
    assert s.grow(params, optimizers, state, step=1000) == (2, 1)
    tags = by_tag(params, state)
    copies = {tag: len(v) for tag, v in tags.items()}
    assert copies == {0: 2, 1: 1, 2: 1, 3: 2, 4: 1, 5: 1, 6: 2, 7: 1, 8: 1}
    # the split's children sit around the parent (means 9..11), the parent is gone
    children = params["means"][params["sh0"][:, 0, 0] == 3]
    assert not any(torch.equal(c, torch.tensor([9.0, 10.0, 11.0])) for c in children)
    assert len(params["means"]) == len(optimizers["means"].param_groups[0]["params"][0])


def test_statistics_are_reset_only_for_densified_and_much_seen_gaussians():
    params, optimizers, state = gaussians(CASES)
    strategy().grow(params, optimizers, state, step=1000)
    tags = by_tag(params, state)
    for tag in (0, 3, 5, 6, 7):  # densified, their copies and children, and those seen > 500 times
        assert all(entry == (0.0, 0.0) for entry in tags[tag]), tag
    for tag in (1, 2, 4, 8):  # everyone else keeps its statistics
        _, grad, count = CASES[tag]
        assert tags[tag] == [(pytest.approx(count), pytest.approx(grad * count))], tag


def test_the_visibility_gate_grows_with_the_step_up_to_its_cap():
    s = strategy()
    assert [s.min_visibility(step) for step in (0, 99, 100, 1000, 4999, 5000, 9000)] == [50, 50, 51, 60, 99, 100, 100]
    case = {0: (SMALL, HIGH, 55)}
    for step, cloned in [(400, 1), (500, 1), (600, 0), (3000, 0)]:
        params, optimizers, state = gaussians(case)
        assert s.grow(params, optimizers, state, step=step)[0] == cloned, step


def fake_info(n: int, visible: torch.Tensor, grad: float) -> dict:
    """What the rasterizer hands the strategy for one 2x2 camera (gsplat's gradient scaling is then 1)."""
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    means2d.grad = torch.zeros(1, n, 2)
    means2d.grad[0, visible, 0] = grad
    radii = torch.zeros(1, n, 2, dtype=torch.int32)
    radii[0, visible] = 3
    return {"means2d": means2d, "width": 2, "height": 2, "n_cameras": 1, "radii": radii, "gaussian_ids": None}


@pytest.mark.parametrize("cls, survives", [(SparsityAwareStrategy, True), (OpacityResettingStrategy, False)])
def test_a_densification_round_keeps_the_statistics_of_the_others(cls, survives):
    """Two Gaussians, both small with a high gradient: one seen at every step, one rarely. gsplat's default
    clones both at the round and zeroes all statistics; GenFusion's clones the often-seen one only and the
    rarely seen one keeps counting."""
    s = cls(refine_start_iter=0, refine_every=100, refine_stop_iter=1000, reset_every=10_000, grow_grad2d=2e-4,
            key_for_gradient="means2d")
    params, optimizers, state = gaussians({0: (SMALL, 0.0, 0), 1: (SMALL, 0.0, 0)})
    state = s.initialize_state(scene_scale=1.0)
    for step in range(1, 101):
        visible = torch.tensor([True, step % 10 == 0])
        s.step_post_backward(params, optimizers, state, step, fake_info(len(params["means"]), visible, 1e-3))
    tags = by_tag(params, state)
    if survives:
        assert {tag: len(v) for tag, v in tags.items()} == {0: 2, 1: 1}
        assert tags[1] == [(10.0, pytest.approx(1e-2))]
    else:
        assert {tag: len(v) for tag, v in tags.items()} == {0: 2, 1: 2}
        assert float(state["count"].sum()) == 0.0


def test_opacities_are_reset_on_reset_steps_only():
    s = strategy(refine_start_iter=10_000, reset_every=3000)
    params, optimizers, state = gaussians({0: (SMALL, 0.0, 0)})
    state = s.initialize_state(scene_scale=1.0)
    for step in (2999, 3000):
        s.step_post_backward(params, optimizers, state, step, fake_info(1, torch.tensor([True]), 0.0))
        expected = 0.01 if step == 3000 else torch.sigmoid(torch.tensor(2.0)).item()
        assert torch.sigmoid(params["opacities"]).item() == pytest.approx(expected, rel=1e-5), step


def test_from_config_reads_the_preset_and_names_what_is_missing():
    config = {**load_preset("2dgs", "paper"), "min_visibility_base": 50, "min_visibility_every": 100,
              "min_visibility_cap": 100, "stats_reset_count": 500}
    s = SparsityAwareStrategy.from_config(config, gradient_key="gradient_2dgs")
    assert (s.key_for_gradient, s.prune_opa, s.reset_opacity, s.min_visibility(700)) == ("gradient_2dgs", 0.05, 0.01, 57)
    del config["stats_reset_count"]
    with pytest.raises(KeyError, match="stats_reset_count"):
        SparsityAwareStrategy.from_config(config, gradient_key="gradient_2dgs")
