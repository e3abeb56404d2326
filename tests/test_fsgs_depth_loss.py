"""FSGS's Pearson depth correlation loss: against numpy's correlation, its invariances, its sign convention,
masking, undefined cases, the code's min-of-two form, and the weight schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gfbench.methods.fsgs.depth_loss import (
    DepthLossSchedule,
    depth_correlation_loss,
    depth_correlation_loss_min_of_two,
    pearson_correlation,
)

H, W = 24, 32


def maps(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth positive depth map and an unrelated-but-correlated inverse depth map."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:H, 0:W]
    depth = 2.0 + np.sin(u / 5.0) + 0.5 * np.cos(v / 3.0) + 0.3 * rng.random((H, W))
    inverse = 1.0 / depth + 0.05 * rng.random((H, W))
    return torch.tensor(depth, dtype=torch.float64), torch.tensor(inverse, dtype=torch.float64)


def test_pearson_matches_numpy_and_respects_the_mask():
    x, y = maps(1)
    assert pearson_correlation(x, y).item() == pytest.approx(np.corrcoef(x.ravel(), y.ravel())[0, 1], abs=1e-12)
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[4:20, 3:17] = True
    garbage = y.clone()
    garbage[~mask] = 1e6  # what lies outside the mask never matters
    expected = np.corrcoef(x[mask].numpy(), y[mask].numpy())[0, 1]
    assert pearson_correlation(x, garbage, mask).item() == pytest.approx(expected, abs=1e-12)
    assert pearson_correlation(x[..., None], garbage[..., None], mask[..., None]).item() == pytest.approx(expected)


@pytest.mark.parametrize("scale_x, shift_x, scale_y, shift_y", [(3.0, 5.0, 1.0, 0.0), (1.0, 0.0, 0.02, -7.0),
                                                                 (250.0, -1.0, 9.0, 100.0)])
def test_loss_is_invariant_to_positive_scale_and_any_shift_of_either_input(scale_x, shift_x, scale_y, shift_y):
    depth, inverse = maps(2)
    reference = depth_correlation_loss(depth, inverse)
    moved = depth_correlation_loss(scale_x * depth + shift_x, scale_y * inverse + shift_y)
    assert moved.item() == pytest.approx(reference.item(), abs=1e-10)


def test_negative_scale_of_either_input_mirrors_the_loss_about_one():
    depth, inverse = maps(3)
    loss = depth_correlation_loss(depth, inverse).item()
    assert depth_correlation_loss(-2.0 * depth, inverse).item() == pytest.approx(2.0 - loss, abs=1e-10)
    assert depth_correlation_loss(depth, -0.5 * inverse + 3.0).item() == pytest.approx(2.0 - loss, abs=1e-10)


def test_sign_convention_rendered_depth_against_prior_inverse_depth():
    depth, _ = maps(4)
    inverse = 1.0 / depth  # an exact inverse-depth prior
    agreeing = depth_correlation_loss(depth, inverse).item()
    reversed_ = depth_correlation_loss(10.0 - depth, inverse).item()  # near and far swapped
    assert agreeing < 0.15 and reversed_ > 1.85  # not 0 and 2: inverse depth is not affine in depth
    assert depth_correlation_loss(-inverse * 4.0 + 1.0, inverse).item() == pytest.approx(0.0, abs=1e-12)
    assert depth_correlation_loss(inverse, inverse).item() == pytest.approx(2.0, abs=1e-12)


def test_gradient_pulls_the_rendered_depth_towards_the_prior_ordering():
    depth, _ = maps(5)
    inverse = 1.0 / depth
    rendered = 10.0 - depth  # reversed
    start = depth_correlation_loss(rendered, inverse).item()
    for _ in range(20):  # plain gradient descent
        rendered = rendered.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(depth_correlation_loss(rendered, inverse), rendered)
        rendered = rendered - 50.0 * gradient
    assert depth_correlation_loss(rendered, inverse).item() < start - 0.5


def test_undefined_correlation_is_zero_with_zero_gradient():
    flat = torch.full((H, W), 3.0, requires_grad=True)
    _, inverse = maps(6)
    loss = depth_correlation_loss(flat, inverse.float())
    loss.backward()
    assert loss.item() == pytest.approx(1.0) and torch.isfinite(flat.grad).all() and flat.grad.abs().max() == 0
    one_pixel = torch.zeros(H, W, dtype=torch.bool)
    one_pixel[3, 3] = True
    assert depth_correlation_loss(flat, inverse.float(), one_pixel).item() == pytest.approx(1.0)


def test_shape_mismatch_is_a_clear_error():
    depth, inverse = maps(7)
    with pytest.raises(ValueError, match="resize the prior's estimate"):
        depth_correlation_loss(depth, inverse[:, :-1])
    with pytest.raises(ValueError, match="mask of shape"):
        depth_correlation_loss(depth, inverse, torch.ones(H, W - 1, dtype=torch.bool))


def test_min_of_two_is_the_smaller_of_the_codes_two_correlations():
    depth, inverse = maps(8)
    inverse = inverse * 300.0  # MiDaS-like magnitudes, where the 200 offset means something
    rendered = depth ** 1.5
    negated = 1 - np.corrcoef(rendered.ravel(), -inverse.ravel())[0, 1]
    pseudo_depth = 1 - np.corrcoef(rendered.ravel(), (1.0 / (inverse + 200.0)).ravel())[0, 1]
    value = depth_correlation_loss_min_of_two(rendered, inverse, inverse_offset=200.0).item()
    assert value == pytest.approx(min(negated, pseudo_depth), abs=1e-10)
    assert depth_correlation_loss(rendered, inverse).item() == pytest.approx(negated, abs=1e-10)


PAPER_SCHEDULE = DepthLossSchedule(
    train_weight=0.05, train_weight_late=0.001, train_form="negated", inverse_offset=200.0, pseudo_weight=0.5,
    pseudo_start_iter=2000, pseudo_stop_iter=9500, pseudo_every=10, pseudo_ramp=500,
)


def test_schedule_follows_fsgs_train_loop():
    schedule = PAPER_SCHEDULE
    pseudo_steps = [step for step in range(10000) if schedule.is_pseudo_step(step)]
    assert pseudo_steps[0] == 2010 and pseudo_steps[-1] == 9490 and len(pseudo_steps) == 749
    assert schedule.pseudo_weight_at(2010) == pytest.approx(0.5 * 10 / 500)
    assert schedule.pseudo_weight_at(2250) == pytest.approx(0.25)
    assert schedule.pseudo_weight_at(2500) == schedule.pseudo_weight_at(9000) == pytest.approx(0.5)
    assert schedule.pseudo_weight_at(2011) == schedule.pseudo_weight_at(2000) == schedule.pseudo_weight_at(9500) == 0
    assert schedule.train_weight_at(0) == schedule.train_weight_at(9500) == 0.05
    assert schedule.train_weight_at(9501) == 0.001


def test_schedule_picks_the_train_form_and_checks_its_settings():
    depth, inverse = maps(9)
    inverse = inverse * 300.0
    code = DepthLossSchedule(**{**PAPER_SCHEDULE.__dict__, "train_form": "min-of-two"})
    assert code.train_view_loss(depth, inverse).item() == pytest.approx(
        depth_correlation_loss_min_of_two(depth, inverse).item())
    assert PAPER_SCHEDULE.train_view_loss(depth, inverse).item() == pytest.approx(
        depth_correlation_loss(depth, inverse).item())
    assert code.pseudo_view_loss(depth, inverse).item() == pytest.approx(depth_correlation_loss(depth, inverse).item())
    with pytest.raises(ValueError, match="depth_train_form must be one of"):
        DepthLossSchedule(**{**PAPER_SCHEDULE.__dict__, "train_form": "ssi"})
    with pytest.raises(KeyError, match="depth_pseudo_ramp"):
        DepthLossSchedule.from_config({"depth_weight": 0.05})
