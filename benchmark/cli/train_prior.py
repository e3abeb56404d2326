"""``gfbench train-prior``: train the video prior on diffusion training clips (``gfbench build-data clips``)."""

from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm

from gfbench.priors import training_defaults

_DEFAULTS = training_defaults()  # video_presets/training.json: the help quotes the numbers from there


@click.command("train-prior")
@click.option("--clips", "clips_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Clip folder written by 'gfbench build-data clips' (shards + manifest.json).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: prior/ (what --prior loads), checkpoints/, losses.json, loss_curve.png. A run "
                   "with checkpoints there resumes from the newest.")
@click.option("--init", "init", default="tiny", show_default=True,
              help="Starting prior: a preset built from scratch (tiny) or a prior folder (save_pretrained).")
@click.option("--steps", type=int, default=None, help=f"Total optimizer steps (default {_DEFAULTS['steps']}).")
@click.option("--lr", "learning_rate", type=float, default=None,
              help=f"AdamW learning rate (default {_DEFAULTS['learning_rate']:g}, the paper's).")
@click.option("--batch-size", type=int, default=None,
              help=f"Clips per step per device (default {_DEFAULTS['batch_size']}, the paper's).")
@click.option("--val-fraction", type=float, default=None,
              help=f"Fraction of scenes (the last in name order) held out for the validation loss (default "
                   f"{_DEFAULTS['val_fraction']:g}).")
@click.option("--checkpoint-every", type=int, default=None,
              help=f"Steps between checkpoints (default {_DEFAULTS['checkpoint_every']}).")
@click.option("--validate-every", type=int, default=None,
              help=f"Steps between validation losses (default {_DEFAULTS['validate_every']}).")
@click.option("--seed", type=int, default=None, help="Seed of every draw (batches, noise, timesteps, dropout).")
@click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default=None,
              help="accelerate's mixed precision (GPU; default no). Several GPUs: launch with 'accelerate launch'.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Default: cuda when available.")
@click.option("--autoencoder-steps", type=int, default=None,
              help=f"VAE steps before the diffusion steps (default {_DEFAULTS['autoencoder_steps']} when --init is a "
                   "preset, whose VAE is untrained; 0 for a prior folder, which keeps its VAE).")
@click.option("--autoencoder-lr", "autoencoder_learning_rate", type=float, default=None,
              help=f"AdamW learning rate of the autoencoder stage (default "
                   f"{_DEFAULTS['autoencoder_learning_rate']:g}).")
@click.option("--autoencoder-kl-weight", type=float, default=None,
              help=f"Weight of the autoencoder stage's KL term per latent element (default "
                   f"{_DEFAULTS['autoencoder_kl_weight']:g}).")
@click.option("--zero-depth-fraction", type=float, default=None,
              help="Share of training clips whose artifact depth input is zeroed, so the prior learns the depth "
                   f"estimate GenFusion asks of it for train views (default {_DEFAULTS['zero_depth_fraction']:g}).")
def train_prior(clips_dir: Path, out: Path, init: str, steps: int | None, learning_rate: float | None,
                batch_size: int | None, val_fraction: float | None, checkpoint_every: int | None,
                validate_every: int | None, seed: int | None, mixed_precision: str | None,
                device: str | None, autoencoder_steps: int | None, autoencoder_learning_rate: float | None,
                autoencoder_kl_weight: float | None, zero_depth_fraction: float | None) -> None:
    """Train the RGB-D video prior (v-prediction, condition dropout, AdamW) with Hugging Face accelerate.

    \b
    Example:
      gfbench build-data clips --suite synthetic-train-corner --out clips
      gfbench train-prior --clips clips --out trained --steps 2000
      gfbench run --method genfusion --suite synthetic-masked --prior trained/prior

    A prior built from a preset first trains its VAE (the autoencoder stage, under OUT/autoencoder), then the
    UNet and image resampler with the VAE frozen. Both stages resume from their newest checkpoint.
    """
    from gfbench.clips import ClipError, read_clip_folder
    from gfbench.priors import PriorError
    from gfbench.priors.training import (AUTOENCODER, PriorTrainer, TrainingError, TrainSettings, clip_tensors,
                                         load_trained_autoencoder, repair_sheet, split_by_scene)
    from gfbench.priors.video import PRESETS, DiffusionVideoPrior, build_video_prior
    from gfbench.shards import ShardError

    from_preset = init in PRESETS
    try:
        settings = TrainSettings.defaults().with_overrides(
            steps=steps, learning_rate=learning_rate, batch_size=batch_size, val_fraction=val_fraction,
            checkpoint_every=checkpoint_every, validate_every=validate_every, seed=seed,
            mixed_precision=mixed_precision, autoencoder_learning_rate=autoencoder_learning_rate,
            autoencoder_kl_weight=autoencoder_kl_weight, zero_depth_fraction=zero_depth_fraction,
            autoencoder_steps=autoencoder_steps if autoencoder_steps is not None or from_preset else 0)
        prior = (build_video_prior(init, seed=settings.seed) if from_preset
                 else DiffusionVideoPrior.from_pretrained(init))
        train, val = split_by_scene(read_clip_folder(clips_dir), settings.val_fraction)
        train_clips, val_clips = clip_tensors(train, prior), clip_tensors(val, prior) if val else None
        click.echo(f"{len(train_clips)} training clips, {len(val)} validation clips")
        if settings.autoencoder_steps and not load_trained_autoencoder(prior, out):
            stage = PriorTrainer(prior, train_clips, val_clips, settings, out, device=device, stage=AUTOENCODER)
            _run_stage(stage, "autoencoder")
            load_trained_autoencoder(prior, out)
        trainer = PriorTrainer(prior, train_clips, val_clips, settings, out, device=device)
    except (ClipError, ShardError, TrainingError, PriorError) as exc:
        raise click.ClickException(str(exc)) from exc
    folder = _run_stage(trainer, "diffusion")
    sheet = repair_sheet(DiffusionVideoPrior.from_pretrained(folder), val or train, out / "repairs.png",
                         seed=settings.seed, title=f"{folder}: held-out clips, artifact -> repaired -> target")
    click.echo(f"wrote {folder} (load it with --prior {folder}); loss curve {out / 'loss_curve.png'}, "
               f"repairs of held-out clips {sheet}")


def _run_stage(trainer, name: str):
    """Resume ``trainer`` from its newest checkpoint if any, train it to the end with a progress bar."""
    if trainer.resume():
        click.echo(f"{name}: resumed at step {trainer.step} from {trainer.latest_checkpoint()}")
    bar = tqdm(total=trainer.total_steps, initial=trainer.step, unit="step", desc=f"train-prior {name}")

    def on_step(step: int, loss: float) -> None:
        bar.update()
        bar.set_postfix(loss=f"{loss:.4f}")

    try:
        return trainer.run(on_step)
    finally:
        bar.close()
