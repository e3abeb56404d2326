"""Growing Gaussians from a strategy: new rows appended to every parameter, with fresh optimizer moments and
zeroed strategy statistics, so a strategy of a method's own (e.g. FSGS's proximity-guided unpooling) adds
Gaussians the way gsplat's ``duplicate`` and ``split`` do, without reaching into gsplat's private helpers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


@torch.no_grad()
def append_gaussians(params: torch.nn.ParameterDict | dict, optimizers: dict[str, torch.optim.Optimizer],
                     state: dict[str, Any], new: dict[str, Tensor]) -> int:
    """Append the Gaussians in ``new`` (one ``[M, ...]`` tensor per parameter name, in the parameters' raw
    form: log scales, logit opacities, ...) and return M.

    Each parameter becomes a new ``Parameter`` holding old and new rows; its Adam moments get zero rows for
    the new ones (the step count is kept); every per-Gaussian tensor in the strategy ``state`` (first
    dimension N) gets zero rows.
    """
    names = list(params.keys())
    if set(new) != set(names):
        raise ValueError(f"append_gaussians: new Gaussians need exactly the parameters {sorted(names)}, "
                         f"got {sorted(new)}")
    old_count = len(params["means"])
    counts = {name: len(value) for name, value in new.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"append_gaussians: parameters disagree on the number of new Gaussians: {counts}")
    added = next(iter(counts.values()))
    for name in names:
        param = params[name]
        rows = new[name].to(device=param.device, dtype=param.dtype)
        if rows.shape[1:] != param.shape[1:]:
            raise ValueError(f"append_gaussians: {name!r} rows are {tuple(rows.shape[1:])}, the parameter's are "
                             f"{tuple(param.shape[1:])}")
        grown = torch.nn.Parameter(torch.cat([param.detach(), rows]), requires_grad=param.requires_grad)
        if name in optimizers:
            _grow_optimizer(optimizers[name], param, grown, added)
        params[name] = grown
    for key, value in state.items():
        if isinstance(value, Tensor) and value.dim() > 0 and len(value) == old_count:
            state[key] = torch.cat([value, value.new_zeros((added, *value.shape[1:]))])
    return added


def _grow_optimizer(optimizer: torch.optim.Optimizer, old: Tensor, new: Tensor, added: int) -> None:
    moments = optimizer.state.pop(old, {})
    for key, value in list(moments.items()):
        if key != "step" and isinstance(value, Tensor) and value.shape == old.shape:
            moments[key] = torch.cat([value, value.new_zeros((added, *value.shape[1:]))])
    group = optimizer.param_groups[0]
    group["params"] = [new if p is old else p for p in group["params"]]
    optimizer.state[new] = moments


__all__ = ["append_gaussians"]
