"""GenFusion as a method: 2DGS plus cyclic fusion with the RGB-D video prior, through the method contract's
public seams only (``setup``, a step callback per repair round, a :class:`ViewSource` per round, the
``regularization`` seam for the train views' depth term, and a strategy of its own).

- Train-view depth (``train_view_depth``): once, before step 0, the prior estimates the depth of the train
  images (zero depth input; 16-frame clips as in a repair round) and each train view keeps it in
  ``data["prior_depth"]`` for the SSI depth loss.
- A repair round (at each step of ``RepairSchedule.rounds()``): the round's trajectory (the train poses at
  full frame, or the sparse protocol's ellipse) in overlapping clips; each clip's cameras cut to the prior's
  crop, rendered as RGB-D without gradients, repaired by the prior with its reference frame; the kept frames
  become the views of a source ``repaired-<round>`` weighted ``RepairSchedule.weight(step)``, which never feeds
  densification and replaces the previous round's. A contact sheet per round goes to
  ``<workdir>/genfusion/``, with ``rounds.json`` (each round's step, views and wall time).
- Densification: the ``strategy`` setting (``sparsity_aware``: :class:`SparsityAwareStrategy`).
Numbers: ``methods/presets/genfusion.yaml``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gfbench.methods import Capabilities
from gfbench.methods.config import ConfigError
from gfbench.methods.core.rasterize_cpu import full_threads
from gfbench.methods.core.training import GaussianMethod, Rendered, Trainer, TrainView, ViewSource, to_numpy
from gfbench.methods.genfusion.contact_sheet import save_repair_contact_sheet
from gfbench.methods.genfusion.densification import SparsityAwareStrategy
from gfbench.methods.genfusion.losses import repaired_view_terms, train_view_depth_terms
from gfbench.methods.genfusion.presets import TRAJECTORIES
from gfbench.methods.genfusion.schedule import RepairSchedule
from gfbench.methods.genfusion.trajectories import EllipseSettings, diffusion_crop, repair_trajectory
from gfbench.methods.genfusion.windows import Window, overlapping_windows, reference_index
from gfbench.methods.gs2d import GaussianSurfels2D

REPAIRED_SOURCE = "repaired"  # a round's source is named "repaired-<round index>"
SHEETS_FOLDER = "genfusion"
ROUNDS_FILE = "rounds.json"  # beside the sheets: per round its step, index, views and seconds


class RepairedViews(ViewSource):
    """One round's repaired views: the photometric loss against the repaired RGB and/or the SSI depth loss
    against the repaired depth (``repaired_view_terms``), weighted by the schedule; never feeding
    densification, without 2DGS's regularizers."""

    def __init__(self, name: str, views: list[TrainView], schedule: RepairSchedule, config: dict[str, Any]):
        super().__init__(name, views, weight=schedule.weight, feeds_densification=False, regularized=False)
        self.config = config

    def loss(self, trainer: Trainer, rendered: Rendered, view: TrainView, step: int) -> dict[str, Tensor]:
        return repaired_view_terms(rendered.rgb, rendered.depth, view.image, view.data["repaired_depth"], self.config)


class GenFusion(GaussianSurfels2D):
    name = "genfusion"
    capabilities = Capabilities(protocols=("masked", "sparse"), priors=("video",))
    strategies = {"sparsity_aware": SparsityAwareStrategy}

    def __init__(self, device: str = "cpu"):
        super().__init__(device)
        self.repair_log: list[dict[str, Any]] = []  # one entry per round: step, round, views, seconds, sheet

    @classmethod
    def check_config(cls, config: dict[str, Any], *, device: str) -> None:
        super().check_config(config, device=device)
        try:
            RepairSchedule.from_config(config)
            EllipseSettings.from_config(config)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"method {cls.name!r}: {exc}") from None

    # --- the seams ---------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer) -> None:
        config = self.config
        self.repair_log = []
        self.previous_source: str | None = None
        uses_repairs = config["sample_view_rgb"] or config["sample_view_depth"]
        if config["train_view_depth"] or uses_repairs:
            check_prior_resolution(trainer.priors["video"], config)
        if config["train_view_depth"]:
            attach_train_view_depth(trainer, trainer.priors["video"], config)
        if not uses_repairs:
            return
        self.schedule = RepairSchedule.from_config(config)
        rounds = self.schedule.rounds()
        if rounds:
            trainer.add_callback(self.repair_round, start=rounds[0], every=self.schedule.every, until=rounds[-1])

    def regularization(self, rendered: Rendered, view: TrainView, step: int) -> dict[str, Tensor]:
        terms = super().regularization(rendered, view, step)
        if "prior_depth" in view.data:
            terms.update(train_view_depth_terms(rendered.depth, view.data["prior_depth"], self.config, view.mask))
        return terms

    # --- a repair round ----------------------------------------------------------------------------------
    def repair_round(self, trainer: Trainer, step: int) -> None:
        """Render the round's trajectory, repair it clip by clip, and swap in the repaired views."""
        config, prior = self.config, trainer.priors["video"]
        round_index = self.schedule.round_index(step)
        started = time.perf_counter()
        rng = trainer.rng_for(f"repair-{round_index}")
        inputs = [view.full_camera for view in trainer.train_views]
        cameras = repair_trajectory(TRAJECTORIES[config["trajectory"]], inputs, round_index, rng,
                                    EllipseSettings.from_config(config), points=_points(trainer))
        views, sheet = [], {"rendered_rgb": [], "rendered_depth": [], "repaired_rgb": [], "repaired_depth": []}
        for window in clip_windows(len(cameras), config):
            clip = diffusion_crop(cameras[window.start:window.stop], config["diffusion_crop_width"],
                                  config["diffusion_crop_height"], rng)
            renders = [trainer.render_camera(camera, step) for camera in clip]
            rendered_rgb = torch.stack([r.rgb.clamp(0, 1) for r in renders]).float().cpu()
            rendered_depth = torch.stack([r.depth for r in renders]).float().cpu()
            reference = trainer.views[reference_index(config["reference_rule"], clip, inputs, rng)].image
            with full_threads():  # the diffusion wants every thread (training runs torch on one)
                repaired = prior.repair(_video(rendered_rgb, rendered_depth),
                                        torch.as_tensor(reference).float() / 255.0,
                                        seed=int(rng.integers(2**31)), guidance_scale=config["guidance_scale"])
            for index in window.kept:
                j = index - window.start
                views.append(TrainView.from_camera(
                    clip[j], trainer.device, name=f"repaired-{round_index}-{index:04d}", image=repaired.rgb[j],
                    data={"repaired_depth": repaired.depth[j].to(trainer.device)}))
                for key, value in (("rendered_rgb", rendered_rgb[j]), ("rendered_depth", rendered_depth[j]),
                                   ("repaired_rgb", repaired.rgb[j]), ("repaired_depth", repaired.depth[j])):
                    sheet[key].append(value.numpy())
        if self.previous_source is not None:
            trainer.remove_source(self.previous_source)
        source = trainer.add_source(RepairedViews(f"{REPAIRED_SOURCE}-{round_index}", views, self.schedule, config))
        self.previous_source = source.name
        path = self.save_sheet(trainer, sheet, round_index, step)
        self.repair_log.append({"step": step, "round": round_index, "views": len(views),
                                "seconds": time.perf_counter() - started, "sheet": None if path is None else path.name})
        if trainer.workdir is not None:
            (trainer.workdir / SHEETS_FOLDER / ROUNDS_FILE).write_text(json.dumps(self.repair_log, indent=1) + "\n")

    def save_sheet(self, trainer: Trainer, sheet: dict[str, list[np.ndarray]], round_index: int,
                   step: int) -> Path | None:
        if trainer.workdir is None:
            return None
        path = trainer.workdir / SHEETS_FOLDER / f"repair-round{round_index:02d}-step{step:05d}.png"
        return save_repair_contact_sheet(path, *(np.stack(sheet[key]) for key in
                                                 ("rendered_rgb", "rendered_depth", "repaired_rgb", "repaired_depth")),
                                         title=f"GenFusion repair round {round_index} after {step} steps")


def check_prior_resolution(prior, config: dict[str, Any]) -> None:
    """A preset that names the prior's frame size (``diffusion_resize_*``) refuses a prior of another size, and
    clips longer than the prior's frame count are refused."""
    if int(config["window_frames"]) > prior.settings.num_frames:
        raise ValueError(f"genfusion: window_frames {config['window_frames']} is more than the "
                         f"{prior.settings.num_frames} frames video prior {prior.source.name} takes at a time")
    expected = (config["diffusion_resize_width"], config["diffusion_resize_height"])
    actual = (prior.settings.width, prior.settings.height)
    if any(e is not None for e in expected) and tuple(e if e is not None else a for e, a in zip(expected, actual)) != actual:
        raise ValueError(f"genfusion: the preset expects a {expected[0]}x{expected[1]} video prior "
                         f"(diffusion_resize_width/height) but {prior.source.name} works at {actual[0]}x{actual[1]}; "
                         f"use a matching prior, or --set diffusion_resize_width=null diffusion_resize_height=null")


def attach_train_view_depth(trainer: Trainer, prior, config: dict[str, Any]) -> None:
    """The prior's depth of every train image (zero depth input), once, as ``view.data["prior_depth"]``: clips of
    ``window_frames`` overlapping as in a repair round, or one clip when there are fewer train views."""
    frames = torch.stack([torch.as_tensor(view.image).float() / 255.0 for view in trainer.views])
    rng = trainer.rng_for("train-view-depth")
    depth = torch.zeros(frames.shape[:3])
    for window in clip_windows(len(frames), config):
        with full_threads():
            estimate = prior.estimate_depth(frames[window.start:window.stop], seed=int(rng.integers(2**31)))
        depth[window.keep_from:window.stop] = estimate[window.keep_from - window.start:].float().cpu()
    for view, estimate in zip(trainer.train_views, depth):
        view.data["prior_depth"] = estimate.to(trainer.device)


def clip_windows(count: int, config: dict[str, Any]) -> list[Window]:
    """The clips of ``count`` frames: overlapping ``window_frames``-frame windows, or one clip of all of them when
    there are fewer (the prior repeats frames of a short clip; a masked run with few train views has one)."""
    length = int(config["window_frames"])
    if count < length:
        return [Window(start=0, stop=count, keep_from=0)]
    return overlapping_windows(count, length, rule=config["window_rule"])


def _video(rgb: Tensor, depth: Tensor):
    from gfbench.priors.video import RGBDVideo

    return RGBDVideo(rgb=rgb, depth=depth)


def _points(trainer: Trainer) -> np.ndarray | None:
    return None if trainer.points is None else np.asarray(trainer.points.xyz)


__all__ = ["GenFusion", "RepairedViews", "attach_train_view_depth", "check_prior_resolution", "clip_windows"]
