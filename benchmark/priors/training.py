"""Training the video prior on diffusion training clips (issue 15), through Hugging Face ``accelerate``.

The loss is the prior's own :meth:`DiffusionVideoPrior.training_loss` (v-prediction, condition dropout from the
prior's ``prior.json``); only :meth:`~DiffusionVideoPrior.trainable_modules` are updated, by AdamW. Settings come
from ``video_presets/training.json`` (overridable). Every random draw of step ``k`` (the batch's clips, the
noise, the timesteps, the dropout) comes from a generator seeded by ``(seed, k)``, so a run resumed from a
checkpoint (``accelerate``'s ``save_state``: weights, optimizer, scaler) reaches exactly the state of an
uninterrupted run.

Output folder::

    <out>/prior/                   the trained prior (save_pretrained): what ``--prior`` loads
    <out>/checkpoints/step_<k>/    accelerate states, the newest one resumes a run
    <out>/losses.json              train loss per step, validation loss every ``validate_every`` steps
    <out>/loss_curve.png
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from gfbench.clips import Clip
from gfbench.priors.video import ClipBatch, DiffusionVideoPrior

CHECKPOINTS = "checkpoints"
PRIOR_FOLDER = "prior"
LOSSES = "losses.json"
CHECKPOINT_RE = re.compile(r"^step_(\d+)$")


class TrainingError(RuntimeError):
    """Bad training settings or clips that do not fit the prior."""


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    learning_rate: float
    batch_size: int
    weight_decay: float
    adam_betas: tuple[float, float]
    val_fraction: float
    checkpoint_every: int
    validate_every: int
    seed: int
    mixed_precision: str

    @classmethod
    def defaults(cls) -> "TrainSettings":
        text = resources.files("gfbench.priors").joinpath("video_presets/training.json").read_text()
        data = {k: v for k, v in json.loads(text).items() if not k.startswith("_")}
        return cls(**{**data, "adam_betas": tuple(data["adam_betas"])})

    def with_overrides(self, **overrides) -> "TrainSettings":
        settings = replace(self, **{k: v for k, v in overrides.items() if v is not None})
        settings.check()
        return settings

    def check(self) -> None:
        positive = ("steps", "batch_size", "checkpoint_every", "validate_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise TrainingError(f"training setting {name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise TrainingError(f"training setting learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.val_fraction < 1:
            raise TrainingError(f"training setting val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise TrainingError(f"training setting mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")


# ---------------------------------------------------------------- clips as tensors


def _resize(video: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """[N, C, H, W] resized to ``size``; area averaging when shrinking RGB, nearest for depth."""
    if tuple(video.shape[-2:]) == size:
        return video
    if mode == "nearest":
        return F.interpolate(video, size=size, mode="nearest")
    return F.interpolate(video, size=size, mode="area" if video.shape[-1] >= size[1] else "bilinear")


@dataclass
class ClipTensors:
    """Clips at the prior's frame count and resolution, RGB in [0, 1]."""

    target_rgb: torch.Tensor  # [N, T, H, W, 3]
    target_depth: torch.Tensor  # [N, T, H, W]
    artifact_rgb: torch.Tensor
    artifact_depth: torch.Tensor
    reference: torch.Tensor  # [N, H, W, 3]

    def __len__(self) -> int:
        return self.target_rgb.shape[0]

    def batch(self, indices: torch.Tensor, device: torch.device) -> ClipBatch:
        return ClipBatch(**{f.name: getattr(self, f.name)[indices].to(device) for f in fields(self)})


def clip_tensors(clips: list[Clip], prior: DiffusionVideoPrior) -> ClipTensors:
    """Stack ``clips``, resized to the prior's height x width (same aspect ratio required: the clip builder
    already cropped to it); a clip's frame count must be the prior's."""
    settings = prior.settings
    size = (settings.height, settings.width)
    for clip in clips:
        frames, height, width = clip.target_rgb.shape[:3]
        if frames != settings.num_frames:
            raise TrainingError(f"clip {clip.info.get('scene')}/{clip.info.get('frame_indices', ['?'])[0]} has {frames} "
                                f"frames, the prior takes {settings.num_frames}")
        if abs(width / height - settings.width / settings.height) > 0.02:
            raise TrainingError(f"clips are {width}x{height}, the prior is {settings.width}x{settings.height}: "
                                "aspect ratios differ (set the suite's protocol.clip to the prior's aspect)")

    def rgb(name: str) -> torch.Tensor:
        video = torch.from_numpy(np.stack([getattr(c, name) for c in clips])).float() / 255.0  # N T H W 3
        n, t = video.shape[:2]
        flat = _resize(video.flatten(0, 1).permute(0, 3, 1, 2), size, "area")
        return flat.permute(0, 2, 3, 1).reshape(n, t, *size, 3).contiguous()

    def depth(name: str) -> torch.Tensor:
        video = torch.from_numpy(np.stack([getattr(c, name) for c in clips])).float()
        n, t = video.shape[:2]
        return _resize(video.flatten(0, 1)[:, None], size, "nearest")[:, 0].reshape(n, t, *size).contiguous()

    reference = torch.from_numpy(np.stack([c.reference for c in clips])).float() / 255.0
    reference = _resize(reference.permute(0, 3, 1, 2), size, "area").permute(0, 2, 3, 1).contiguous()
    return ClipTensors(target_rgb=rgb("target_rgb"), target_depth=depth("target_depth"),
                       artifact_rgb=rgb("artifact_rgb"), artifact_depth=depth("artifact_depth"), reference=reference)


def split_by_scene(clips: list[Clip], val_fraction: float) -> tuple[list[Clip], list[Clip]]:
    """(train, validation): the clips of the last ``ceil(val_fraction * scenes)`` scenes in name order are held
    out (whole scenes, so no validation clip shares frames with a training one); no validation with one scene
    or a zero fraction."""
    scenes = sorted({c.info["scene"] for c in clips})
    held = math.ceil(val_fraction * len(scenes)) if len(scenes) > 1 and val_fraction > 0 else 0
    val_scenes = set(scenes[len(scenes) - held:]) if held else set()
    return [c for c in clips if c.info["scene"] not in val_scenes], [c for c in clips if c.info["scene"] in val_scenes]


# ---------------------------------------------------------------- the trainer


def step_generator(seed: int, step: int, device: torch.device, stream: int = 0) -> torch.Generator:
    """Every draw of one step comes from this generator (so resuming at ``step`` replays the same draws);
    ``stream`` 1 is validation's (batch ``step``), never a training step's."""
    entropy = np.random.SeedSequence([seed, stream, step]).generate_state(1)[0]
    return torch.Generator(device=device).manual_seed(int(entropy))


class PriorTrainer:
    """Train ``prior`` on ``train`` clips, validating on ``val``, writing under ``out`` (see the module doc)."""

    def __init__(self, prior: DiffusionVideoPrior, train: ClipTensors, val: ClipTensors | None,
                 settings: TrainSettings, out: Path, *, device: str | None = None):
        from accelerate import Accelerator

        settings.check()
        if len(train) == 0:
            raise TrainingError("no training clips (every clip was held out for validation: lower val_fraction)")
        self.settings, self.out, self.train, self.val = settings, Path(out), train, val
        cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
        self.accelerator = Accelerator(cpu=cpu, mixed_precision=settings.mixed_precision,
                                       project_dir=str(self.out))
        self.prior = prior.to(self.accelerator.device, torch.float32)  # fp32 master weights; autocast does fp16
        modules = list(prior.trainable_modules().values())
        parameters = [p for module in modules for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay,
                                      betas=tuple(settings.adam_betas))
        *self.modules, self.optimizer = self.accelerator.prepare(*modules, optimizer)
        self.step = 0
        self.history: dict[str, list] = {"train": [], "val": []}

    # checkpoints

    def checkpoint_dir(self, step: int) -> Path:
        return self.out / CHECKPOINTS / f"step_{step:07d}"

    def latest_checkpoint(self) -> Path | None:
        folder = self.out / CHECKPOINTS
        found = [p for p in folder.iterdir() if CHECKPOINT_RE.match(p.name) and (p / "trainer.json").exists()] \
            if folder.is_dir() else []
        return max(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1))) if found else None

    def save_checkpoint(self) -> Path:
        path = self.checkpoint_dir(self.step)
        self.accelerator.save_state(str(path))
        state = {"step": self.step, "history": self.history, "settings": asdict(self.settings)}
        (path / "trainer.json").write_text(json.dumps(state))  # written last: a checkpoint without it is partial
        return path

    def resume(self) -> bool:
        """Load the newest complete checkpoint under ``out``; False when there is none."""
        path = self.latest_checkpoint()
        if path is None:
            return False
        state = json.loads((path / "trainer.json").read_text())
        self.accelerator.load_state(str(path))
        self.step, self.history = state["step"], state["history"]
        return True

    # steps

    def train_step(self) -> float:
        for module in self.modules:
            module.train()
        generator = step_generator(self.settings.seed, self.step, torch.device("cpu"))
        indices = torch.randint(len(self.train), (self.settings.batch_size,), generator=generator)
        batch = self.train.batch(indices, self.accelerator.device)
        noise_generator = step_generator(self.settings.seed, self.step, self.accelerator.device)
        # Modules in train mode may draw from the global generator (dropout): seed it per step as well, inside a
        # fork so that the caller's random state is left alone.
        devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            with self.accelerator.autocast():
                loss = self.prior.training_loss(batch, noise_generator)
            self.accelerator.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        value = float(loss.detach())
        self.history["train"].append([self.step, value])
        return value

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Mean loss over the held-out clips, with fixed draws (the same for every evaluation)."""
        if self.val is None or len(self.val) == 0:
            return None
        for module in self.modules:
            module.eval()
        total = 0.0
        for start in range(0, len(self.val), self.settings.batch_size):
            indices = torch.arange(start, min(start + self.settings.batch_size, len(self.val)))
            generator = step_generator(self.settings.seed, start, self.accelerator.device, stream=1)
            with self.accelerator.autocast():
                loss = self.prior.training_loss(self.val.batch(indices, self.accelerator.device), generator)
            total += float(loss) * len(indices)
        return total / len(self.val)

    def run(self, on_step: Callable[[int, float], None] | None = None) -> Path:
        """Train up to ``settings.steps`` (from wherever a resume left off); returns the saved prior's folder."""
        while self.step < self.settings.steps:
            loss = self.train_step()
            if self.step % self.settings.validate_every == 0 or self.step == self.settings.steps:
                val = self.validation_loss()
                if val is not None:
                    self.history["val"].append([self.step, val])
            if self.step % self.settings.checkpoint_every == 0 or self.step == self.settings.steps:
                self.save_checkpoint()
            if on_step:
                on_step(self.step, loss)
        return self.finish()

    def finish(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / LOSSES).write_text(json.dumps(self.history) + "\n")
        plot_losses(self.history, self.out / "loss_curve.png")
        for module in self.modules:
            module.eval()
        return self.prior.save_pretrained(self.out / PRIOR_FOLDER)


def plot_losses(history: dict[str, list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    if history["train"]:
        steps, values = zip(*history["train"])
        axes.plot(steps, values, lw=0.6, alpha=0.4, label="train (per step)")
        window = max(1, len(values) // 20)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        axes.plot(steps[window - 1:], smooth, lw=1.5, label=f"train (mean of {window})")
    if history["val"]:
        steps, values = zip(*history["val"])
        axes.plot(steps, values, "o-", lw=1.5, label="validation (held-out scenes)")
    axes.set_xlabel("step")
    axes.set_ylabel("v-prediction MSE")
    axes.set_yscale("log")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
