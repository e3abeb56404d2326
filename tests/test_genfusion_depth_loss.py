"""GenFusion's scale-and-shift-invariant depth loss against an independent numpy oracle (lstsq fit, explicit
neighbour loops), its invariances, its masking and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gfbench.methods.genfusion.depth_loss import scale_and_shift, ssi_depth_loss

EPS = 1e-6


def oracle(pred_depth, target_depth, mask, chunks, gradient_weight=0.5, scales=1):
    """The loss written out in numpy: lstsq fit of [p, 1] to t over valid pixels, MSE over valid pixels, and the
    gradient term by looping over neighbour pairs of the chunk grid."""
    h, w = pred_depth.shape
    rows = h if chunks is None else chunks
    p = (1.0 / (pred_depth.astype(np.float64) + EPS)).reshape(rows, -1)
    t = (1.0 / (target_depth.astype(np.float64) + EPS)).reshape(rows, -1)
    m = np.ones_like(p) if mask is None else mask.reshape(rows, -1).astype(np.float64)
    sel = m > 0
    design = np.stack([p[sel], np.ones(sel.sum())], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(design, t[sel], rcond=None)
    r = scale * p + shift - t
    loss = (r[sel] ** 2).mean()
    for level in range(scales):
        s = 2**level
        rr, mm = r[::s, ::s], m[::s, ::s]
        total = 0.0
        for i in range(rr.shape[0]):
            for j in range(rr.shape[1]):
                if j + 1 < rr.shape[1] and mm[i, j] and mm[i, j + 1]:
                    total += abs(rr[i, j + 1] - rr[i, j])
                if i + 1 < rr.shape[0] and mm[i, j] and mm[i + 1, j]:
                    total += abs(rr[i + 1, j] - rr[i, j])
        loss += gradient_weight * total / mm.sum()
    return loss, scale, shift


def depths(seed=0, h=16, w=12):
    rng = np.random.default_rng(seed)
    pred = rng.uniform(0.5, 4.0, (h, w))
    target = rng.uniform(0.5, 4.0, (h, w))
    return pred, target


def loss_of(pred, target, mask=None, **kw):
    mask_t = None if mask is None else torch.as_tensor(mask)
    return ssi_depth_loss(torch.as_tensor(pred), torch.as_tensor(target), mask_t, **kw).item()


@pytest.mark.parametrize("chunks", [32, 8, None])
def test_loss_equals_the_least_squares_oracle(chunks):
    pred, target = depths(seed=1)
    expected, _, _ = oracle(pred, target, None, chunks)
    assert loss_of(pred, target, chunks=chunks) == pytest.approx(expected, rel=1e-9)


def test_masked_loss_and_multiscale_gradient_equal_the_oracle():
    pred, target = depths(seed=2)
    mask = np.random.default_rng(3).random(pred.shape) > 0.3
    for scales in (1, 3):
        expected, _, _ = oracle(pred, target, mask, None, scales=scales)
        assert loss_of(pred, target, mask, chunks=None, gradient_scales=scales) == pytest.approx(expected, rel=1e-9)


def test_scale_and_shift_is_the_least_squares_fit():
    pred, target = depths(seed=4)
    _, scale, shift = oracle(pred, target, None, 32)
    p = torch.as_tensor(1.0 / (pred + EPS)).reshape(32, -1)
    t = torch.as_tensor(1.0 / (target + EPS)).reshape(32, -1)
    got = scale_and_shift(p, t, torch.ones_like(p))
    assert [g.item() for g in got] == pytest.approx([scale, shift], rel=1e-9)


def test_invariant_to_scale_and_shift_of_the_predicted_inverse_depth():
    pred, target = depths(seed=5)
    base = loss_of(pred, target)
    for a, c in [(3.0, 0.0), (0.2, 1.5), (7.0, -0.05)]:
        inv = a / (pred + EPS) + c
        assert inv.min() > 0
        moved = 1.0 / inv - EPS  # a depth whose inverse is a * inverse(pred) + c
        assert loss_of(moved, target) == pytest.approx(base, rel=1e-6)


def test_zero_for_an_affine_match_and_positive_otherwise():
    pred, _ = depths(seed=6)
    target = 1.0 / (2.5 / (pred + EPS) + 0.3) - EPS
    assert loss_of(pred, target) == pytest.approx(0.0, abs=1e-9)
    target[3, 4] *= 2.0
    assert loss_of(pred, target) > 1e-4


def test_masked_pixels_do_not_count():
    pred, target = depths(seed=7)
    mask = np.ones(pred.shape, bool)
    mask[:, :5] = False
    noisy = target.copy()
    noisy[:, :5] = 1e3  # wild values where the mask is off
    assert loss_of(pred, noisy, mask, chunks=None) == pytest.approx(loss_of(pred, target, mask, chunks=None), rel=1e-12)
    assert loss_of(pred, target, np.zeros(pred.shape, bool)) == 0.0


def test_gradient_reaches_the_rendered_depth_and_the_squared_term_vanishes_at_the_optimum():
    pred, target = depths(seed=8)
    rendered = torch.tensor(pred, requires_grad=True)
    ssi_depth_loss(rendered, torch.as_tensor(target)).backward()
    assert rendered.grad.abs().sum() > 0
    # (the gradient-matching term is an L1 norm: at a zero residual only its subgradient is defined)
    rendered = torch.tensor(pred, requires_grad=True)
    affine = torch.as_tensor(1.0 / (2.0 / (pred + EPS) + 0.1) - EPS)
    ssi_depth_loss(rendered, affine, gradient_weight=0.0).backward()
    assert rendered.grad.abs().max() < 1e-9


def test_float32_render_at_full_size_with_empty_pixels_matches_the_float64_oracle():
    rng = np.random.default_rng(9)
    pred = rng.uniform(1.0, 5.0, (64, 96)).astype(np.float32)
    pred[:10, :20] = 0.0  # nothing rendered there: inverse depth 1e6, as in the code
    target = rng.uniform(1.0, 5.0, (64, 96)).astype(np.float32)
    expected, _, _ = oracle(pred, target, None, 32)
    assert loss_of(pred, target) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    "pred_shape, target_shape, chunks, message",
    [((4, 6), (4, 5), 2, "must be two"), ((5, 3), (5, 3), 32, "does not split into 32"), ((4, 4), (4, 4), 0, "does not split")],
)
def test_bad_input_is_a_clear_error(pred_shape, target_shape, chunks, message):
    with pytest.raises(ValueError, match=message):
        ssi_depth_loss(torch.ones(pred_shape), torch.ones(target_shape), chunks=chunks)
