"""FSGS's proximity-guided Gaussian unpooling (Zhu et al., ECCV 2024, Sec. 3.2), on gsplat-style parameters.

Each Gaussian's K nearest neighbours form the edges of a directed proximity graph. A Gaussian is a *source*
when its proximity score (the mean distance to its K neighbours) exceeds ``proximity_threshold`` x the scene
extent and its largest scale exceeds ``min_scale`` x the extent; then one new Gaussian grows at the midpoint of
each edge from it to a neighbour (the edge's *destination*). A new Gaussian takes the destination's scale and
opacity, the identity rotation and zero SH coefficients: with gsplat's (and 3DGS's) ``0.5 + SH_C0 * sh0``
colour, zero DC is mid grey (0.5, 0.5, 0.5).

Where the official code (``scene/gaussian_model.py`` ``proximity``) differs, the difference is a named setting:

- ``score="mean_squared_distance"``: its ``distCUDA2`` score is the mean *squared* distance, compared with a
  linear ``5 x extent`` (so the rule changes with the scene's units);
- ``pairing="code"``: it builds the sources with ``xyz[mask].repeat(1, K, 1).reshape(-1, 3)``, which tiles the
  M sources (s0, s1, ..., s0, s1, ...) while the neighbour indices come row by row (n00, n01, n02, n10, ...),
  so with more than one source, new Gaussian e sits between source ``e mod M`` and the e-th neighbour index of
  the flattened [M, K] table (a neighbour of source ``e // K``).

Parameters: gsplat's ``ParameterDict`` (``means``, ``scales`` (log), ``quats`` (wxyz), ``opacities`` (logit),
``sh0``, ``shN``) with one optimizer per parameter; new Gaussians extend the optimizer moments with zeros and
every per-Gaussian tensor of the strategy state with zeros, as gsplat's ``strategy.ops`` do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
from gsplat.strategy.ops import _update_param_with_optimizer
from torch import Tensor

from gfbench.methods.fsgs.knn import nearest_neighbors

Params = Union[dict[str, torch.nn.Parameter], torch.nn.ParameterDict]
ProximityScore = Literal["mean_distance", "mean_squared_distance"]
Pairing = Literal["paper", "code"]
SCORES = ("mean_distance", "mean_squared_distance")
PAIRINGS = ("paper", "code")


@dataclass(frozen=True)
class UnpoolSettings:
    """The unpooling rule. ``proximity_threshold`` and ``min_scale`` are fractions of the scene extent;
    ``min_scale=None`` drops the size condition."""

    neighbors: int = 3
    proximity_threshold: float = 5.0
    min_scale: float | None = 1.0
    score: ProximityScore = "mean_distance"
    pairing: Pairing = "paper"

    def __post_init__(self) -> None:
        if self.neighbors < 1:
            raise ValueError(f"unpool_neighbors must be at least 1, got {self.neighbors}")
        if self.score not in SCORES:
            raise ValueError(f"unpool_score must be one of {', '.join(SCORES)}; got {self.score!r}")
        if self.pairing not in PAIRINGS:
            raise ValueError(f"unpool_pairing must be one of {', '.join(PAIRINGS)}; got {self.pairing!r}")


@dataclass
class UnpoolPlan:
    """What one unpooling round adds: edge ``e`` runs from Gaussian ``sources[e]`` to ``destinations[e]``
    and gives the new Gaussian ``new[name][e]`` (raw parameter values, as stored in ``params``)."""

    sources: Tensor
    destinations: Tensor
    new: dict[str, Tensor]

    def __len__(self) -> int:
        return len(self.sources)


def proximity_scores(distances: Tensor, score: ProximityScore = "mean_distance") -> Tensor:
    """Per Gaussian, the mean distance (paper) or mean squared distance (code) to its neighbours [N, K]."""
    if score == "mean_distance":
        return distances.mean(dim=1)
    if score == "mean_squared_distance":
        return (distances**2).mean(dim=1)
    raise ValueError(f"unknown proximity score {score!r}; use one of {', '.join(SCORES)}")


def far_and_large(params: Params, scores: Tensor, extent: float, threshold: float, min_scale: float | None) -> Tensor:
    """Gaussians whose proximity score exceeds ``threshold x extent`` and whose largest scale exceeds
    ``min_scale x extent`` (no size condition when ``min_scale`` is None)."""
    selected = scores > threshold * extent
    if min_scale is not None:
        largest = torch.exp(params["scales"].detach()).max(dim=1).values
        selected &= largest > min_scale * extent
    return selected


def edges(selected: Tensor, neighbor_indices: Tensor, pairing: Pairing) -> tuple[Tensor, Tensor]:
    """``(sources, destinations)`` of the new Gaussians: for each selected Gaussian, one edge to each of its
    neighbours (``pairing="paper"``), or the official code's mis-paired version (``"code"``, see the module)."""
    chosen = torch.nonzero(selected).flatten()
    k = neighbor_indices.shape[1]
    destinations = neighbor_indices[chosen].reshape(-1)
    if pairing == "paper":
        sources = chosen.repeat_interleave(k)
    elif pairing == "code":
        sources = chosen.repeat(k)
    else:
        raise ValueError(f"unknown unpool pairing {pairing!r}; use one of {', '.join(PAIRINGS)}")
    return sources, destinations


@torch.no_grad()
def plan_unpooling(params: Params, extent: float, settings: UnpoolSettings) -> UnpoolPlan:
    """The Gaussians one unpooling round would add to ``params`` (nothing is changed)."""
    means = params["means"].detach()
    distances, neighbor_indices = nearest_neighbors(means, settings.neighbors)
    if distances.shape[1] == 0:
        selected = torch.zeros(len(means), dtype=torch.bool, device=means.device)
    else:
        scores = proximity_scores(distances, settings.score)
        selected = far_and_large(params, scores, extent, settings.proximity_threshold, settings.min_scale)
    sources, destinations = edges(selected, neighbor_indices, settings.pairing)
    return UnpoolPlan(sources, destinations, new_gaussians(params, sources, destinations))


def new_gaussians(params: Params, sources: Tensor, destinations: Tensor) -> dict[str, Tensor]:
    """Raw parameters of the Gaussians grown on the edges ``sources -> destinations``: midpoint position,
    the destination's scale and opacity, identity rotation, zero SH. Any further parameter a method keeps is
    copied from the destination."""
    new = {}
    for name, param in params.items():
        value = param.detach()
        if name == "means":
            new[name] = (value[sources] + value[destinations]) / 2
        elif name == "quats":
            identity = torch.zeros((len(sources), *value.shape[1:]), dtype=value.dtype, device=value.device)
            identity[:, 0] = 1.0
            new[name] = identity
        elif name in ("sh0", "shN"):
            new[name] = torch.zeros((len(sources), *value.shape[1:]), dtype=value.dtype, device=value.device)
        else:  # scales, opacities, anything else: the destination's
            new[name] = value[destinations].clone()
    return new


@torch.no_grad()
def append_gaussians(
    params: Params, optimizers: dict[str, torch.optim.Optimizer], state: dict[str, Any], new: dict[str, Tensor]
) -> int:
    """Append the Gaussians ``new`` (raw values per parameter name) to ``params``; extend each optimizer's
    moments and every per-Gaussian tensor of the strategy ``state`` with zeros (gsplat's ``strategy.ops``
    convention). Returns the number appended."""
    missing = set(params.keys()) - set(new)
    if missing:
        raise ValueError(f"new Gaussians lack parameters {sorted(missing)}")
    count = {len(value) for value in new.values()}
    if len(count) != 1:
        raise ValueError(f"new Gaussians disagree on their number: {sorted(count)}")
    added = count.pop()
    if added == 0:
        return 0
    old_count = len(params["means"])

    def grow_param(name: str, p: Tensor) -> Tensor:
        return torch.nn.Parameter(torch.cat([p, new[name].to(p.dtype)]), requires_grad=p.requires_grad)

    def grow_moment(key: str, v: Tensor) -> Tensor:
        return torch.cat([v, torch.zeros((added, *v.shape[1:]), dtype=v.dtype, device=v.device)])

    _update_param_with_optimizer(grow_param, grow_moment, params, optimizers)
    for key, value in state.items():
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == old_count:
            state[key] = grow_moment(key, value)
    return added


def unpool(
    params: Params,
    optimizers: dict[str, torch.optim.Optimizer],
    state: dict[str, Any],
    extent: float,
    settings: UnpoolSettings,
) -> UnpoolPlan:
    """One unpooling round, in place: plan it, then append the new Gaussians. Returns the plan."""
    plan = plan_unpooling(params, extent, settings)
    append_gaussians(params, optimizers, state, plan.new)
    return plan


__all__ = [
    "UnpoolPlan",
    "UnpoolSettings",
    "append_gaussians",
    "edges",
    "far_and_large",
    "new_gaussians",
    "plan_unpooling",
    "proximity_scores",
    "unpool",
]
