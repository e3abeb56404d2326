"""GenFusion's loss terms by view kind: the switches of the Table 1 rows and the preset's numbers reach the
photometric and SSI depth losses."""

from __future__ import annotations

import pytest
import torch

from gfbench.methods.core.losses import photometric_loss
from gfbench.methods.genfusion.depth_loss import ssi_depth_loss
from gfbench.methods.genfusion.losses import repaired_view_terms, train_view_depth_terms
from gfbench.methods.genfusion.presets import resolve_preset


def maps(seed=0, h=16, w=20):
    g = torch.Generator().manual_seed(seed)
    rgb = lambda: torch.rand(h, w, 3, generator=g)  # noqa: E731
    depth = lambda: 0.5 + 3 * torch.rand(h, w, generator=g)  # noqa: E731
    return rgb(), depth(), rgb(), depth()


@pytest.mark.parametrize("row, expected", [
    ("table1-2-train-view-depth", set()),
    ("table1-3-sample-view-rgb", {"repair_rgb"}),
    ("table1-4-sample-view-depth", {"repair_rgb", "repair_depth"}),
])
def test_repaired_view_terms_follow_the_switches(row, expected):
    config = resolve_preset(row, "sparse")
    assert set(repaired_view_terms(*maps(), config)) == expected


def test_repaired_view_terms_use_the_presets_numbers():
    config = resolve_preset("code", "masked")  # D-SSIM weight 0.8
    rgb, depth, target_rgb, target_depth = maps(1)
    mask = torch.rand(16, 20, generator=torch.Generator().manual_seed(2)) > 0.2
    terms = repaired_view_terms(rgb, depth, target_rgb, target_depth, config, mask)
    expected_rgb, _ = photometric_loss(rgb, target_rgb, mask, ssim_lambda=0.8, ssim_window=11, ssim_sigma=1.5)
    assert terms["repair_rgb"].item() == pytest.approx(expected_rgb.item())
    expected_depth = ssi_depth_loss(depth, target_depth, mask, chunks=32, gradient_weight=0.5, gradient_scales=1)
    assert terms["repair_depth"].item() == pytest.approx(expected_depth.item())


def test_train_view_depth_term_and_its_switch():
    rgb, depth, _, prior_depth = maps(3)
    config = {**resolve_preset("paper", "masked"), "train_view_depth_weight": 2.0}
    term = train_view_depth_terms(depth, prior_depth, config)["train_depth"]
    assert term.item() == pytest.approx(2.0 * ssi_depth_loss(depth, prior_depth).item())
    assert train_view_depth_terms(depth, prior_depth, resolve_preset("table1-1-baseline", "masked")) == {}
