"""``gfbench train-prior``: train the video prior on diffusion training clips (``gfbench build-data clips``)."""

from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm


@click.command("train-prior")
@click.option("--clips", "clips_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Clip folder written by 'gfbench build-data clips' (shards + manifest.json).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: prior/ (what --prior loads), checkpoints/, losses.json, loss_curve.png. A run "
                   "with checkpoints there resumes from the newest.")
@click.option("--init", "init", default="tiny", show_default=True,
              help="Starting prior: a preset built from scratch (tiny) or a prior folder (save_pretrained).")
@click.option("--steps", type=int, default=None, help="Total optimizer steps (default: video_presets/training.json).")
@click.option("--lr", "learning_rate", type=float, default=None,
              help="AdamW learning rate (default 1e-5, the paper's; see video_presets/training.json).")
@click.option("--batch-size", type=int, default=None, help="Clips per step per device (default 2, the paper's).")
@click.option("--val-fraction", type=float, default=None,
              help="Fraction of scenes (the last in name order) held out for the validation loss (default 0.1).")
@click.option("--checkpoint-every", type=int, default=None, help="Steps between checkpoints (default 200).")
@click.option("--validate-every", type=int, default=None, help="Steps between validation losses (default 100).")
@click.option("--seed", type=int, default=None, help="Seed of every draw (batches, noise, timesteps, dropout).")
@click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default=None,
              help="accelerate's mixed precision (GPU; default no). Several GPUs: launch with 'accelerate launch'.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Default: cuda when available.")
def train_prior(clips_dir: Path, out: Path, init: str, steps: int | None, learning_rate: float | None,
                batch_size: int | None, val_fraction: float | None, checkpoint_every: int | None,
                validate_every: int | None, seed: int | None, mixed_precision: str | None,
                device: str | None) -> None:
    """Train the RGB-D video prior (v-prediction, condition dropout, AdamW) with Hugging Face accelerate.

    \b
    Example:
      gfbench build-data clips --suite synthetic-train-corner --out clips
      gfbench train-prior --clips clips --out trained --steps 2000
      gfbench run --method genfusion --suite synthetic-masked --prior trained/prior
    """
    from gfbench.clips import ClipError, read_clip_folder
    from gfbench.priors import PriorError
    from gfbench.priors.training import (PriorTrainer, TrainingError, TrainSettings, clip_tensors,
                                         split_by_scene)
    from gfbench.priors.video import PRESETS, DiffusionVideoPrior, build_video_prior
    from gfbench.shards import ShardError

    try:
        settings = TrainSettings.defaults().with_overrides(
            steps=steps, learning_rate=learning_rate, batch_size=batch_size, val_fraction=val_fraction,
            checkpoint_every=checkpoint_every, validate_every=validate_every, seed=seed,
            mixed_precision=mixed_precision)
        prior = (build_video_prior(init, seed=settings.seed) if init in PRESETS
                 else DiffusionVideoPrior.from_pretrained(init))
        train, val = split_by_scene(read_clip_folder(clips_dir), settings.val_fraction)
        trainer = PriorTrainer(prior, clip_tensors(train, prior), clip_tensors(val, prior) if val else None,
                               settings, out, device=device)
    except (ClipError, ShardError, TrainingError, PriorError) as exc:
        raise click.ClickException(str(exc)) from exc
    if trainer.resume():
        click.echo(f"resumed at step {trainer.step} from {trainer.latest_checkpoint()}")
    click.echo(f"{len(trainer.train)} training clips, {len(val)} validation clips; steps {settings.steps}")
    bar = tqdm(total=settings.steps, initial=trainer.step, unit="step", desc="train-prior")

    def on_step(step: int, loss: float) -> None:
        bar.update()
        bar.set_postfix(loss=f"{loss:.4f}")

    try:
        folder = trainer.run(on_step)
    finally:
        bar.close()
    click.echo(f"wrote {folder} (load it with --prior {folder}); loss curve {out / 'loss_curve.png'}")
