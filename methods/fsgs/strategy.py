"""FSGS's densification as a gsplat strategy: gsplat's default clone / split / prune with FSGS's numbers,
3DGS-style opacity resets on FSGS's schedule, and proximity-guided unpooling early in training.

It implements gsplat's strategy interface (``check_sanity``, ``initialize_state``, ``step_pre_backward``,
``step_post_backward``) by extending the suite's :class:`OpacityResettingStrategy` (gsplat's
``DefaultStrategy`` with the opacity reset that gsplat 1.5.3 never runs). Every number comes from the preset
through :func:`make_fsgs_strategy`.

In FSGS's ``densify_and_prune`` (``scene/gaussian_model.py``) unpooling follows clone and split and precedes
pruning; here it follows gsplat's whole refinement (grow, prune) at the same step, so Gaussians that unpooling
adds are pruned at the next refinement at the earliest. New Gaussians start with zero densification statistics
(FSGS zeroes every statistic after densifying anyway, as gsplat does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from gsplat.strategy.ops import split

from gfbench.methods.core.strategies import OpacityResettingStrategy
from gfbench.methods.fsgs.knn import nearest_neighbors
from gfbench.methods.fsgs.unpooling import UnpoolPlan, UnpoolSettings, far_and_large, proximity_scores, unpool


@dataclass
class FSGSStrategy(OpacityResettingStrategy):
    """gsplat's default densification + FSGS's opacity-reset schedule + proximity-guided unpooling.

    - ``reset_start_iter``: the first opacity reset, then every ``reset_every`` steps while refining
      (0: at ``reset_every``, as 3DGS). FSGS resets at ``start_sample_pseudo + 1 + k * 3000``.
    - unpooling runs at every refinement step before ``unpool_stop_iter`` (0: never), with the rule of
      :class:`UnpoolSettings` (``unpool_*`` fields; thresholds are fractions of the scene extent).
    - ``split_far_threshold`` (the official code only, ``densify_and_split``'s second mask): at refinement
      steps, also split Gaussians whose proximity score exceeds this x extent and whose largest scale exceeds
      ``unpool_min_scale`` x extent. None: off (the paper has no such rule).

    After each step, ``last_unpool`` holds the plan of the most recent unpooling round (None before any).
    """

    reset_start_iter: int = 0
    unpool_stop_iter: int = 0
    unpool_neighbors: int = 3
    unpool_proximity_threshold: float = 5.0
    unpool_min_scale: float | None = 1.0
    unpool_score: str = "mean_distance"
    unpool_pairing: str = "paper"
    split_far_threshold: float | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any], *, gradient_key: str) -> "FSGSStrategy":
        """gfbench's strategy constructor (``strategy: fsgs`` in a preset): :func:`make_fsgs_strategy`."""
        return make_fsgs_strategy(config, gradient_key=gradient_key)

    def __post_init__(self) -> None:
        self.unpool_settings = UnpoolSettings(
            neighbors=self.unpool_neighbors,
            proximity_threshold=self.unpool_proximity_threshold,
            min_scale=self.unpool_min_scale,
            score=self.unpool_score,
            pairing=self.unpool_pairing,
        )
        if self.reset_every < 1 or self.refine_every < 1:
            raise ValueError(f"reset_every and refine_every must be positive, got {self.reset_every}, {self.refine_every}")
        self.last_unpool: UnpoolPlan | None = None

    @property
    def first_reset_step(self) -> int:
        return self.reset_start_iter if self.reset_start_iter > 0 else self.reset_every

    def is_reset_step(self, step: int) -> bool:
        first = self.first_reset_step
        return first <= step < self.refine_stop_iter and (step - first) % self.reset_every == 0

    def is_refine_step(self, step: int) -> bool:
        """gsplat ``DefaultStrategy``'s refinement condition."""
        return (
            self.refine_start_iter < step < self.refine_stop_iter
            and step % self.refine_every == 0
            and step % self.reset_every >= self.pause_refine_after_reset
        )

    def is_unpool_step(self, step: int) -> bool:
        return step < self.unpool_stop_iter and self.is_refine_step(step)

    def step_post_backward(self, params, optimizers, state, step, info, packed=False):
        refining = self.is_refine_step(step)
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        if refining and self.split_far_threshold is not None:
            self.split_far_and_large(params, optimizers, state)
        if self.is_unpool_step(step):
            self.last_unpool = unpool(params, optimizers, state, float(state["scene_scale"]), self.unpool_settings)

    @torch.no_grad()
    def split_far_and_large(self, params, optimizers, state) -> int:
        """The official code's extra split of isolated large Gaussians; returns how many were split."""
        settings = self.unpool_settings
        distances, _ = nearest_neighbors(params["means"].detach(), settings.neighbors)
        if distances.shape[1] == 0:
            return 0
        scores = proximity_scores(distances, settings.score)
        mask = far_and_large(params, scores, float(state["scene_scale"]), self.split_far_threshold, settings.min_scale)
        count = int(mask.sum())
        if count:
            split(params=params, optimizers=optimizers, state=state, mask=mask, revised_opacity=self.revised_opacity)
        return count


STRATEGY_KEYS = OpacityResettingStrategy.CONFIG_KEYS
FSGS_STRATEGY_KEYS = (
    "reset_start_iter",
    "unpool_stop_iter",
    "unpool_neighbors",
    "unpool_proximity_threshold",
    "unpool_min_scale",
    "unpool_score",
    "unpool_pairing",
    "split_far_threshold",
)


def make_fsgs_strategy(config: dict[str, Any], *, gradient_key: str = "means2d") -> FSGSStrategy:
    """The strategy with the preset's numbers. ``prune_scale3d: null`` means never prune by size (FSGS passes
    no size threshold to ``densify_and_prune``)."""
    missing = [key for key in (*STRATEGY_KEYS, *FSGS_STRATEGY_KEYS) if key not in config]
    if missing:
        raise KeyError(f"FSGS config lacks densification settings: {', '.join(missing)}")
    values = {key: config[key] for key in (*STRATEGY_KEYS, *FSGS_STRATEGY_KEYS)}
    if values["prune_scale3d"] is None:
        values["prune_scale3d"] = math.inf
    return FSGSStrategy(key_for_gradient=gradient_key, **values)


__all__ = ["FSGS_STRATEGY_KEYS", "FSGSStrategy", "make_fsgs_strategy"]
