"""Densification strategies chosen by the ``strategy`` setting.

A strategy implements gsplat's interface (``check_sanity(params, optimizers)``, ``initialize_state(scene_scale)``,
``step_pre_backward(params, optimizers, state, step, info)``, ``step_post_backward(params, optimizers, state,
step, info, packed=False)``) plus gfbench's constructor ``from_config(config, *, gradient_key)``, which reads
its numbers from the method's config. Optional: ``devices`` (where it runs; default both) and
``loss_terms(params, step) -> dict[str, Tensor]`` (added to the loss once per step, e.g. MCMC's
regularizers).

Built in: ``default`` (:class:`OpacityResettingStrategy`) and ``mcmc`` (:class:`MCMC`). A method adds its own
by listing them in its class attribute ``strategies`` (name -> class); its preset then says
``strategy: <name>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from gsplat.strategy import DefaultStrategy, MCMCStrategy
from gsplat.strategy.ops import reset_opa
from torch import Tensor

from gfbench.methods.config import ConfigError


@dataclass
class OpacityResettingStrategy(DefaultStrategy):
    """gsplat's ``DefaultStrategy`` plus the periodic opacity reset of 3DGS.

    gsplat 1.5.3 guards its reset with ``step % self.reset_every == 0 & step > 0``. ``&`` binds tighter than
    the comparisons, so this is the chained comparison ``step % reset_every == (0 & step) > 0``, whose last
    link ``0 > 0`` is always False: the reset never runs. This class resets at every positive multiple of
    ``reset_every`` while refining (``step < refine_stop_iter``, as 3DGS resets only while densifying).
    Should gsplat fix its guard, resetting twice in one step is harmless: the reset clamps the opacities to
    one value and zeroes the optimizer's moments, both idempotent.

    ``reset_opacity`` is the post-sigmoid value opacities are clamped to (3DGS and 2DGS: 0.01); None keeps
    gsplat's ``2 x prune_opa``.
    """

    reset_opacity: float | None = None

    CONFIG_KEYS = (
        "refine_start_iter",
        "refine_every",
        "refine_stop_iter",
        "grow_grad2d",
        "grow_scale3d",
        "prune_opa",
        "prune_scale3d",
        "reset_every",
        "reset_opacity",
    )

    @classmethod
    def from_config(cls, config: dict[str, Any], *, gradient_key: str) -> "OpacityResettingStrategy":
        return cls(key_for_gradient=gradient_key, **{key: config[key] for key in cls.CONFIG_KEYS})

    @property
    def opacity_reset_value(self) -> float:
        return self.prune_opa * 2.0 if self.reset_opacity is None else self.reset_opacity

    def is_reset_step(self, step: int) -> bool:
        return 0 < step < self.refine_stop_iter and step % self.reset_every == 0

    def step_post_backward(self, params, optimizers, state, step, info, packed=False):
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        if self.is_reset_step(step):
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.opacity_reset_value)


@dataclass
class MCMC(MCMCStrategy):
    """gsplat's ``MCMCStrategy`` (3DGS as Markov chain Monte Carlo) on gfbench's loop: the same
    ``initialize_state(scene_scale)`` / ``step_post_backward(..., packed=False)`` signatures as the default
    strategy (the means' learning rate is read from its optimizer), and the paper's opacity and scale
    regularizers as ``loss_terms``. Its relocation and noise use gsplat's CUDA kernels: CUDA only."""

    opacity_reg: float = 0.01
    scale_reg: float = 0.01
    devices = ("cuda",)

    CONFIG_KEYS = {
        "cap_max": "mcmc_cap_max",
        "noise_lr": "mcmc_noise_lr",
        "min_opacity": "mcmc_min_opacity",
        "opacity_reg": "mcmc_opacity_reg",
        "scale_reg": "mcmc_scale_reg",
        "refine_start_iter": "refine_start_iter",
        "refine_every": "refine_every",
        "refine_stop_iter": "refine_stop_iter",
    }

    @classmethod
    def from_config(cls, config: dict[str, Any], *, gradient_key: str) -> "MCMC":
        missing = [key for key in cls.CONFIG_KEYS.values() if config.get(key) is None]
        if missing:
            raise ConfigError(f"strategy 'mcmc' needs setting {missing[0]!r} (settings it reads: "
                              f"{', '.join(cls.CONFIG_KEYS.values())})")
        return cls(**{field: config[key] for field, key in cls.CONFIG_KEYS.items()})

    def initialize_state(self, scene_scale: float = 1.0) -> dict[str, Any]:
        return super().initialize_state()

    def step_pre_backward(self, params, optimizers, state, step, info):
        pass

    def step_post_backward(self, params, optimizers, state, step, info, packed=False):
        lr = optimizers["means"].param_groups[0]["lr"]
        super().step_post_backward(params, optimizers, state, step, info, lr=lr)

    def loss_terms(self, params, step: int) -> dict[str, Tensor]:
        terms = {}
        if self.opacity_reg > 0:
            terms["opacity_reg"] = self.opacity_reg * torch.sigmoid(params["opacities"]).abs().mean()
        if self.scale_reg > 0:
            terms["scale_reg"] = self.scale_reg * torch.exp(params["scales"]).abs().mean()
        return terms


BUILTIN_STRATEGIES: dict[str, type] = {"default": OpacityResettingStrategy, "mcmc": MCMC}


def strategy_class(name: str, own: dict[str, type] | None = None) -> type:
    """The strategy class named ``name``: a method's own (``own``) or a built-in one."""
    table = {**BUILTIN_STRATEGIES, **(own or {})}
    if name not in table:
        raise ConfigError(f"setting 'strategy' = {name!r} is not allowed: expected one of {', '.join(table)}")
    return table[name]


def strategy_devices(cls: type) -> tuple[str, ...]:
    return tuple(getattr(cls, "devices", ("cpu", "cuda")))


def make_strategy(config: dict[str, Any], *, gradient_key: str, own: dict[str, type] | None = None):
    """The densification strategy the config's ``strategy`` names, built from the config's numbers
    (``gradient_key``: "means2d" for 3D Gaussians, "gradient_2dgs" for surfels)."""
    return strategy_class(config.get("strategy", "default"), own).from_config(config, gradient_key=gradient_key)


__all__ = ["BUILTIN_STRATEGIES", "MCMC", "OpacityResettingStrategy", "make_strategy", "strategy_class",
           "strategy_devices"]
