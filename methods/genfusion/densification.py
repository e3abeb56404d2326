"""GenFusion's sparsity-aware densification, as a gsplat strategy.

The supplement (B.3): gradient statistics are not reset every densification round, and a Gaussian joins the
densification list only if its mean view-space gradient exceeds the threshold AND its visibility count
reaches a minimum. The numbers and the order of operations come from the official code
(``Reconstruction/datasets/gaussian_model.py`` with ``sparse_aware=True``, used by the masked protocol):

- minimum visibility at step ``s``: ``min(cap, base + s // every)`` (code: ``min(100, 50 + s // 100)``);
- clone first (small Gaussians), then reset the statistics of the cloned Gaussians, of their copies and of
  every Gaussian seen more than ``stats_reset_count`` (code: 500) times; then split (large Gaussians) with
  the visibility test on the statistics as they are after that reset, so a large Gaussian seen more than
  500 times is not split in that round but waits for the next one (the code's order, kept);
- the split's children start from zero statistics; every other Gaussian keeps its statistics;
- pruning (opacity below ``prune_opa``; too large after ``reset_every``) and the periodic opacity reset are
  those of :class:`OpacityResettingStrategy`.

The gradient test is gsplat's ``grad > grow_grad2d`` (the code's ``>=`` differs only on exact ties).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from gsplat.strategy.ops import duplicate, reset_opa, split
from torch import Tensor

from gfbench.methods.core.strategies import OpacityResettingStrategy

STRATEGY_KEYS = OpacityResettingStrategy.CONFIG_KEYS  # the default strategy's numbers, which this one also reads

SPARSITY_KEYS = ("min_visibility_base", "min_visibility_every", "min_visibility_cap", "stats_reset_count")


@dataclass
class SparsityAwareStrategy(OpacityResettingStrategy):
    """:class:`OpacityResettingStrategy` with GenFusion's visibility gate and selective statistics reset.

    ``min_visibility_base``, ``min_visibility_every`` and ``min_visibility_cap`` give the minimum visibility
    count ``min(cap, base + step // every)``; ``stats_reset_count``: statistics of Gaussians seen more
    often than this are reset at each densification round.
    """

    min_visibility_base: int = 50
    min_visibility_every: int = 100
    min_visibility_cap: int = 100
    stats_reset_count: int = 500

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, gradient_key: str) -> "SparsityAwareStrategy":
        """The strategy with a preset's numbers: the keys of ``make_strategy`` plus :data:`SPARSITY_KEYS`."""
        missing = [key for key in (*STRATEGY_KEYS, *SPARSITY_KEYS) if key not in config]
        if missing:
            raise KeyError(f"sparsity-aware densification: the config lacks {', '.join(missing)}")
        numbers = {key: config[key] for key in (*STRATEGY_KEYS, *SPARSITY_KEYS)}
        return cls(key_for_gradient=gradient_key, **numbers)

    def __post_init__(self) -> None:
        if self.min_visibility_every < 1:
            raise ValueError(f"min_visibility_every must be at least 1, got {self.min_visibility_every}")

    def min_visibility(self, step: int) -> int:
        """The visibility count a Gaussian needs at ``step`` to be cloned or split."""
        return min(self.min_visibility_cap, self.min_visibility_base + step // self.min_visibility_every)

    def is_refine_step(self, step: int) -> bool:
        """gsplat's ``DefaultStrategy`` refining condition."""
        return (
            self.refine_start_iter < step < self.refine_stop_iter
            and step % self.refine_every == 0
            and step % self.reset_every >= self.pause_refine_after_reset
        )

    def step_post_backward(self, params, optimizers, state, step, info, packed=False):
        """Accumulate statistics; on refining steps grow and prune (no global statistics reset); reset
        opacities on reset steps."""
        if step >= self.refine_stop_iter:
            return
        self._update_state(params, state, info, packed=packed)
        if self.is_refine_step(step):
            n_clone, n_split = self.grow(params, optimizers, state, step)
            n_prune = self._prune_gs(params, optimizers, state, step)
            if self.verbose:
                print(f"Step {step}: {n_clone} cloned, {n_split} split, {n_prune} pruned, "
                      f"{len(params['means'])} Gaussians")
        if self.is_reset_step(step):
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.opacity_reset_value)

    @torch.no_grad()
    def grow(self, params, optimizers, state: dict[str, Any], step: int) -> tuple[int, int]:
        """Clone, reset statistics, split, in the code's order; returns ``(cloned, split)`` counts."""
        count = state["count"]
        grads = state["grad2d"] / count.clamp_min(1)
        high_grad = grads > self.grow_grad2d
        small = torch.exp(params["scales"]).max(dim=-1).values <= self.grow_scale3d * state["scene_scale"]
        to_clone = high_grad & small & (count >= self.min_visibility(step))
        n_clone = int(to_clone.sum().item())
        if n_clone > 0:
            duplicate(params=params, optimizers=optimizers, state=state, mask=to_clone)
        fresh = torch.zeros(n_clone, dtype=torch.bool, device=count.device)
        self.reset_statistics(state, torch.cat([to_clone | (count > self.stats_reset_count), ~fresh]))

        # the clones are small and start at zero visibility: neither is ever split in this round
        high_grad, large = torch.cat([high_grad, fresh]), torch.cat([~small, fresh])
        to_split = high_grad & large & (state["count"] >= self.min_visibility(step))
        n_split = int(to_split.sum().item())
        if n_split > 0:
            split(params=params, optimizers=optimizers, state=state, mask=to_split, revised_opacity=self.revised_opacity)
            children = torch.zeros(len(params["means"]), dtype=torch.bool, device=count.device)
            children[-2 * n_split:] = True  # gsplat's split appends the children after the kept Gaussians
            self.reset_statistics(state, children)
        return n_clone, n_split

    @staticmethod
    def reset_statistics(state: dict[str, Any], which: Tensor) -> None:
        """Zero every per-Gaussian running statistic (gradient sum, count, radii) where ``which`` holds."""
        for key in ("grad2d", "count", "radii"):
            if isinstance(state.get(key), Tensor):
                state[key][which] = 0.0


__all__ = ["SPARSITY_KEYS", "SparsityAwareStrategy"]
