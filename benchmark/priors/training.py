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
    <out>/autoencoder/             the autoencoder stage, when the prior's VAE is trained here first (a prior
                                   built from a preset has no pretrained VAE): checkpoints/, losses.json,
                                   loss_curve.png and vae/ (the trained VAE, its latent scale in latent_scale.json)

Stages: ``autoencoder`` trains only the VAE (:meth:`DiffusionVideoPrior.autoencoder_loss`), ``diffusion`` only
the UNet and the image resampler with the VAE frozen (the official recipe).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gfbench.clips import Clip, fit_depth, fit_rgb
from gfbench.priors import training_defaults
from gfbench.priors.video import ClipBatch, DiffusionVideoPrior

CHECKPOINTS = "checkpoints"
PRIOR_FOLDER = "prior"
LOSSES = "losses.json"
LATENT_SCALE = "latent_scale.json"
CHECKPOINT_RE = re.compile(r"^step_(\d+)$")
AUTOENCODER = "autoencoder"
DIFFUSION = "diffusion"
STAGES = (AUTOENCODER, DIFFUSION)


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
    autoencoder_steps: int
    autoencoder_learning_rate: float
    autoencoder_kl_weight: float
    autoencoder_frames: int
    latent_scale_clips: int
    zero_depth_fraction: float

    @classmethod
    def defaults(cls) -> "TrainSettings":
        data = training_defaults()
        return cls(**{**data, "adam_betas": tuple(data["adam_betas"])})

    def with_overrides(self, **overrides) -> "TrainSettings":
        settings = replace(self, **{k: v for k, v in overrides.items() if v is not None})
        settings.check()
        return settings

    def check(self) -> None:
        positive = ("steps", "batch_size", "checkpoint_every", "validate_every", "autoencoder_frames",
                    "latent_scale_clips")
        for name in positive:
            if getattr(self, name) < 1:
                raise TrainingError(f"training setting {name} must be >= 1, got {getattr(self, name)}")
        for name in ("learning_rate", "autoencoder_learning_rate"):
            if not getattr(self, name) > 0:
                raise TrainingError(f"training setting {name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.zero_depth_fraction <= 1:
            raise TrainingError(f"training setting zero_depth_fraction must be in [0, 1], got "
                                f"{self.zero_depth_fraction}")
        if self.autoencoder_steps < 0 or self.autoencoder_kl_weight < 0:
            raise TrainingError(f"training settings autoencoder_steps and autoencoder_kl_weight must be >= 0, got "
                                f"{self.autoencoder_steps} and {self.autoencoder_kl_weight}")
        if not 0 <= self.val_fraction < 1:
            raise TrainingError(f"training setting val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise TrainingError(f"training setting mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")


# ---------------------------------------------------------------- clips as tensors


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
    """Stack ``clips`` at the prior's frame size: every frame centre-cropped to the prior's aspect ratio, then
    resized (area-averaged RGB, nearest-neighbour depth), as the clip builder and the official loaders do; a
    clip's frame count must be the prior's."""
    settings = prior.settings
    for clip in clips:
        frames = clip.target_rgb.shape[0]
        if frames != settings.num_frames:
            raise TrainingError(f"clip {clip.info.get('scene')}/{clip.info.get('frame_indices', ['?'])[0]} has {frames} "
                                f"frames, the prior takes {settings.num_frames}")
    width, height = settings.width, settings.height

    def rgb(frames: np.ndarray) -> np.ndarray:
        return np.stack([fit_rgb(frame, width, height) for frame in frames])

    def depth(frames: np.ndarray) -> np.ndarray:
        return np.stack([fit_depth(frame, width, height) for frame in frames])

    def stacked(name: str, fit) -> torch.Tensor:
        return torch.from_numpy(np.stack([fit(getattr(clip, name)) for clip in clips])).float()

    return ClipTensors(target_rgb=stacked("target_rgb", rgb) / 255.0, target_depth=stacked("target_depth", depth),
                       artifact_rgb=stacked("artifact_rgb", rgb) / 255.0,
                       artifact_depth=stacked("artifact_depth", depth),
                       reference=stacked("reference", lambda image: fit_rgb(image, width, height)) / 255.0)


@dataclass
class ClipPosteriors:
    """The frozen VAE's posteriors (mean, std) of every clip's target, artifact and zero-depth artifact videos
    (``[N, T, 4, h, w]`` each), and the references in model space: the diffusion stage encodes each clip once
    instead of at every step."""

    target: tuple[torch.Tensor, torch.Tensor]
    artifact: tuple[torch.Tensor, torch.Tensor]
    zero_depth: tuple[torch.Tensor, torch.Tensor]
    references: torch.Tensor  # [N, 3, H, W] in [-1, 1]

    def batch(self, indices: torch.Tensor) -> dict:
        def pick(pair):
            return tuple(part[indices] for part in pair)

        return {"target": pick(self.target), "artifact": pick(self.artifact), "zero_depth": pick(self.zero_depth),
                "references": self.references[indices]}


@torch.no_grad()
def clip_posteriors(prior: DiffusionVideoPrior, clips: ClipTensors, *, chunk: int = 4) -> ClipPosteriors:
    parts: dict[str, list] = {"target": [], "artifact": [], "zero_depth": [], "references": []}
    for start in range(0, len(clips), chunk):
        indices = torch.arange(start, min(start + chunk, len(clips)))
        target, artifact, references = prior.model_inputs(clips.batch(indices, prior.device))
        zero_depth = artifact.clone()
        zero_depth[:, :, 3] = 0.0
        for name, video in (("target", target), ("artifact", artifact), ("zero_depth", zero_depth)):
            parts[name].append(prior.posterior(video))
        parts["references"].append(references)

    def joined(name):
        return tuple(torch.cat([pair[i] for pair in parts[name]]) for i in range(2))

    return ClipPosteriors(target=joined("target"), artifact=joined("artifact"), zero_depth=joined("zero_depth"),
                          references=torch.cat(parts["references"]))


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
    """Train ``prior`` on ``train`` clips, validating on ``val``, writing under ``out`` (see the module doc).

    ``stage``: ``diffusion`` (the UNet and resampler, VAE frozen; ``settings.steps`` at ``learning_rate``) or
    ``autoencoder`` (the VAE alone, under ``out/autoencoder``; ``autoencoder_steps`` at
    ``autoencoder_learning_rate``)."""

    def __init__(self, prior: DiffusionVideoPrior, train: ClipTensors, val: ClipTensors | None,
                 settings: TrainSettings, out: Path, *, device: str | None = None, stage: str = DIFFUSION):
        from accelerate import Accelerator

        settings.check()
        if stage not in STAGES:
            raise TrainingError(f"unknown training stage {stage!r} (stages: {', '.join(STAGES)})")
        if len(train) == 0:
            raise TrainingError("no training clips (every clip was held out for validation: lower val_fraction)")
        self.settings, self.stage, self.train, self.val = settings, stage, train, val
        self.out = Path(out) / AUTOENCODER if stage == AUTOENCODER else Path(out)
        cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
        self.accelerator = Accelerator(cpu=cpu, mixed_precision=settings.mixed_precision,
                                       project_dir=str(self.out))
        self.prior = prior.to(self.accelerator.device, torch.float32)  # fp32 master weights; autocast does fp16
        modules = [prior.vae] if stage == AUTOENCODER else list(prior.trainable_modules().values())
        for module in modules:
            module.requires_grad_(True)
        parameters = [p for module in modules for p in module.parameters() if p.requires_grad]
        learning_rate = settings.autoencoder_learning_rate if stage == AUTOENCODER else settings.learning_rate
        optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=settings.weight_decay,
                                      betas=tuple(settings.adam_betas))
        *self.modules, self.optimizer = self.accelerator.prepare(*modules, optimizer)
        self.posteriors = {}
        if stage == DIFFUSION:  # the VAE is frozen: encode every clip once
            self.posteriors = {"train": clip_posteriors(self.prior, train)}
            if val is not None and len(val):
                self.posteriors["val"] = clip_posteriors(self.prior, val)
        self.step = 0
        self.history: dict[str, list] = {"train": [], "val": []}

    @property
    def total_steps(self) -> int:
        return self.settings.autoencoder_steps if self.stage == AUTOENCODER else self.settings.steps

    def loss(self, split: str, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The stage's loss on clips ``indices`` of ``split`` (train or val)."""
        if self.stage == AUTOENCODER:
            batch = getattr(self, split).batch(indices, self.accelerator.device)
            return self.prior.autoencoder_loss(batch, generator, self.settings.autoencoder_kl_weight,
                                               self.settings.autoencoder_frames)
        chosen = self.posteriors[split].batch(indices)
        return self.prior.posterior_training_loss(chosen["target"], chosen["artifact"], chosen["zero_depth"],
                                                  chosen["references"], generator, self.settings.zero_depth_fraction)

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
        state = {"step": self.step, "stage": self.stage, "history": self.history, "settings": asdict(self.settings)}
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
        noise_generator = step_generator(self.settings.seed, self.step, self.accelerator.device)
        # Modules in train mode may draw from the global generator (dropout): seed it per step as well, inside a
        # fork so that the caller's random state is left alone.
        devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            with self.accelerator.autocast():
                loss = self.loss("train", indices, noise_generator)
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
                loss = self.loss("val", indices, generator)
            total += float(loss) * len(indices)
        return total / len(self.val)

    def run(self, on_step: Callable[[int, float], None] | None = None) -> Path:
        """Train up to the stage's step count (from wherever a resume left off); returns the saved prior's folder
        (the VAE's, for the autoencoder stage)."""
        total = self.total_steps
        while self.step < total:
            loss = self.train_step()
            if self.step % self.settings.validate_every == 0 or self.step == total:
                val = self.validation_loss()
                if val is not None:
                    self.history["val"].append([self.step, val])
            if self.step % self.settings.checkpoint_every == 0 or self.step == total:
                self.save_checkpoint()
            if on_step:
                on_step(self.step, loss)
        return self.finish()

    def finish(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / LOSSES).write_text(json.dumps(self.history) + "\n")
        ylabel = "L1 + KL (RGB-D, model space)" if self.stage == AUTOENCODER else "v-prediction MSE"
        plot_losses(self.history, self.out / "loss_curve.png", ylabel=ylabel)
        for module in self.modules:
            module.eval()
        if self.stage == AUTOENCODER:
            return self.finish_autoencoder()
        return self.prior.save_pretrained(self.out / PRIOR_FOLDER)

    def finish_autoencoder(self) -> Path:
        """Calibrate the latent scale on (up to) ``latent_scale_clips`` training clips, freeze the VAE and save it
        with its scale."""
        self.prior.vae.requires_grad_(False)
        count = min(len(self.train), self.settings.latent_scale_clips)
        batch = self.train.batch(torch.arange(count), self.accelerator.device)
        scale = self.prior.calibrate_latent_scale(batch, step_generator(self.settings.seed, 0,
                                                                        self.accelerator.device, stream=2))
        folder = self.out / "vae"
        self.prior.vae.save_pretrained(folder)
        (folder / LATENT_SCALE).write_text(json.dumps({"latent_scale": scale}) + "\n")
        return folder


def load_trained_autoencoder(prior: DiffusionVideoPrior, out: Path) -> bool:
    """Put the VAE an earlier autoencoder stage saved under ``out`` (and its latent scale) into ``prior``; False
    when there is none (or it is incomplete: the scale file is written last)."""
    from diffusers import AutoencoderKL

    folder = Path(out) / AUTOENCODER / "vae"
    if not (folder / LATENT_SCALE).is_file():
        return False
    scale = json.loads((folder / LATENT_SCALE).read_text())["latent_scale"]
    prior.vae = AutoencoderKL.from_pretrained(folder).to(prior.device)
    prior.vae.requires_grad_(False)
    prior.settings = replace(prior.settings, latent_scale=float(scale))
    return True


def repair_sheet(prior: DiffusionVideoPrior, clips: list[Clip], path: Path, *, count: int = 3, frames: int = 4,
                 seed: int = 0, title: str = "") -> Path:
    """Before and after, for people: for ``count`` clips (held-out ones, ideally), ``frames`` evenly spaced frames
    of the artifact video the prior gets, the prior's repair (conditioned on the clip's reference frame) and the
    target, RGB and depth rows, at the prior's size."""
    from gfbench.priors.video import RGBDVideo
    from gfbench.viz import colorize_depth, evenly_spaced, labelled_grid

    data = clip_tensors(clips[:count], prior)
    rows = []
    for i, clip in enumerate(clips[:count]):
        video = RGBDVideo(rgb=data.artifact_rgb[i], depth=data.artifact_depth[i])
        repaired = prior.repair(video, data.reference[i], seed=seed + i)
        picked = evenly_spaced(data.target_rgb.shape[1], frames)
        name = f"{clip.info.get('scene')} s{clip.info.get('seed')}"
        for label, rgb, depth in (("artifact", video.rgb, video.depth), ("repaired", repaired.rgb, repaired.depth),
                                  ("target", data.target_rgb[i], data.target_depth[i])):
            rgb8 = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
            rows.append((f"{name} {label}", [np.concatenate([rgb8[k], colorize_depth(depth[k].cpu().numpy())], 1)
                                            for k in picked]))
    zoom = max(1, -(-72 // data.target_rgb.shape[2]))  # small priors' frames enlarged (nearest) to >= 72 rows
    rows = [(label, [np.kron(image, np.ones((zoom, zoom, 1), np.uint8)) for image in images]) for label, images in rows]
    labelled_grid(rows, title or f"{prior.source.name}: artifact -> repaired -> target (RGB | depth)").save(path)
    return path


def plot_losses(history: dict[str, list], path: Path, *, ylabel: str = "v-prediction MSE") -> None:
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
    axes.set_ylabel(ylabel)
    axes.set_yscale("log")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
