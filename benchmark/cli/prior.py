"""``gfbench prior``: prepare prior model folders. ``gfbench prior convert`` turns the released GenFusion
checkpoint and the LDM3D VAE (downloaded by the user; gfbench never downloads weights) into a folder of safetensors
and configs that ``--prior`` loads."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("prior")
def prior_group() -> None:
    """Prepare prior model folders (convert released checkpoints)."""


@prior_group.command("convert")
@click.option("--checkpoint", "checkpoint", required=True, type=click.Path(path_type=Path),
              help="The released GenFusion Lightning checkpoint (epoch=59-step=34000.ckpt).")
@click.option("--vae", "vae", required=True, type=click.Path(path_type=Path),
              help="The Intel/ldm3d-4c folder (or its vae/ subfolder): the 4-channel RGB-D AutoencoderKL.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Video-prior folder to create (prior.json, unet/, image_proj/, image_encoder/, vae/, "
                   "scheduler/, architecture.json, source.json); pass it as --prior.")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default="float16",
              show_default=True, help="Precision of the written weights.")
@click.option("--architecture", "architecture_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Architecture JSON for a non-default model (default: the released model's).")
@click.option("--allow-pickle", is_flag=True,
              help="Load a checkpoint that holds arbitrary Python objects (runs code from the file: only for files "
                   "you trust). Without it the checkpoint is read weights-only.")
@click.option("--overwrite", is_flag=True, help="Replace an existing, non-empty --out folder.")
def convert_command(checkpoint: Path, vae: Path, out: Path, dtype: str, architecture_file: Path | None,
                    allow_pickle: bool, overwrite: bool) -> None:
    """Convert the released GenFusion checkpoint into a prior folder (once; takes a few minutes and about the
    checkpoint's size in memory).

    \b
    Example:
      gfbench prior convert --checkpoint epoch=59-step=34000.ckpt --vae ldm3d-4c --out priors/genfusion
    """
    from gfbench.priors import PriorError
    from gfbench.priors.official import ArchitectureError, OfficialArchitecture, convert_checkpoint

    try:
        architecture = (OfficialArchitecture.from_json(architecture_file) if architecture_file
                        else OfficialArchitecture.official())
        folder = convert_checkpoint(checkpoint, vae, out, architecture=architecture, dtype=dtype,
                                    allow_pickle=allow_pickle, overwrite=overwrite,
                                    progress=lambda message: click.echo(f"  {message}", err=True))
    except (PriorError, ArchitectureError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"wrote {folder}")
