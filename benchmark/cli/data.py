"""``gfbench build-data`` and ``gfbench show``."""

from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm

from gfbench.paths import data_root

OUT_HELP = "Shard root (default: $GFBENCH_DATA, else ~/.cache/gfbench/data)."


@click.group("build-data")
def build_data() -> None:
    """Package scenes as WebDataset shards (one shard per scene plus a manifest per dataset)."""


@build_data.command("synthetic")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help=OUT_HELP)
@click.option("--scene", "scenes", multiple=True, help="Build only this scene (repeatable). Default: all.")
def build_synthetic_command(out: Path | None, scenes: tuple[str, ...]) -> None:
    """Ray-cast the built-in synthetic scenes (exact RGB, depth and observed surface points)."""
    from gfbench.data import build_synthetic
    from gfbench.specs import SpecError

    bar = tqdm(unit="frame", desc="synthetic")

    def on_scene(scene_id: str, frames: int) -> None:
        bar.set_description(f"synthetic/{scene_id}")
        bar.total = (bar.total or 0) + frames
        bar.refresh()

    try:
        written = build_synthetic(out, list(scenes) or None, on_scene=on_scene, on_frame=lambda: bar.update())
    except SpecError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        bar.close()
    for shard in written:
        click.echo(f"wrote {shard}")


@click.command()
@click.argument("scene_ref", metavar="DATASET/SCENE")
@click.option("--data", "root", type=click.Path(file_okay=False, path_type=Path), help=OUT_HELP)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG to write (default: <dataset>-<scene>.png in the current folder).")
@click.option("--frames", default=8, show_default=True, help="How many evenly spaced frames to show.")
def show(scene_ref: str, root: Path | None, out: Path | None, frames: int) -> None:
    """Save a contact sheet (frames and depth) of a built scene."""
    from gfbench.data import load_scene
    from gfbench.shards import ShardError
    from gfbench.specs import SpecError
    from gfbench.viz import contact_sheet

    dataset, _, scene_id = scene_ref.partition("/")
    if not scene_id:
        raise click.BadParameter(f"expected DATASET/SCENE, got {scene_ref!r}", param_hint="DATASET/SCENE")
    try:
        scene = load_scene(dataset, scene_id, data_root(root))
    except (ShardError, SpecError) as exc:
        raise click.ClickException(str(exc)) from exc
    out = out or Path(f"{dataset}-{scene_id}.png")
    contact_sheet(scene, pick=frames).save(out)
    click.echo(f"wrote {out}")
