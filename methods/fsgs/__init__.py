"""FSGS (Zhu et al., ECCV 2024): the method (:class:`FSGS`, entry point ``fsgs``) and its building blocks:
proximity-guided unpooling, its densification strategy, pseudo views and the depth correlation loss. Numbers:
``methods/presets/fsgs.yaml`` (see its header for where the paper and the official code differ)."""

from gfbench.methods.fsgs.depth_loss import (
    DepthLossSchedule,
    depth_correlation_loss,
    depth_correlation_loss_min_of_two,
    pearson_correlation,
)
from gfbench.methods.fsgs.knn import nearest_neighbors
from gfbench.methods.fsgs.method import FSGS, PseudoDepthSource
from gfbench.methods.fsgs.pseudo_views import (
    depth_bounds,
    interpolated_pseudo_cameras,
    pseudo_cameras,
    random_pseudo_cameras_around_mean,
)
from gfbench.methods.fsgs.strategy import FSGSStrategy, make_fsgs_strategy
from gfbench.methods.fsgs.unpooling import UnpoolPlan, UnpoolSettings, append_gaussians, plan_unpooling, unpool

__all__ = [
    "DepthLossSchedule",
    "FSGS",
    "FSGSStrategy",
    "UnpoolPlan",
    "UnpoolSettings",
    "append_gaussians",
    "depth_bounds",
    "depth_correlation_loss",
    "depth_correlation_loss_min_of_two",
    "interpolated_pseudo_cameras",
    "make_fsgs_strategy",
    "nearest_neighbors",
    "pearson_correlation",
    "PseudoDepthSource",
    "plan_unpooling",
    "pseudo_cameras",
    "random_pseudo_cameras_around_mean",
    "unpool",
]
