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
@click.option("--dataset", default="synthetic", show_default=True,
              help="Synthetic-layout dataset to build: 'synthetic' (the evaluation scenes) or 'synthetic-train' "
                   "(procedural diffusion-training scenes, disjoint from the evaluation ones).")
@click.option("--resume", is_flag=True, help="Skip scenes already in the manifest (finish an interrupted build).")
def build_synthetic_command(out: Path | None, scenes: tuple[str, ...], dataset: str, resume: bool) -> None:
    """Ray-cast the built-in synthetic scenes (exact RGB, depth and observed surface points)."""
    from gfbench.data import build_synthetic
    from gfbench.specs import SpecError

    bar = tqdm(unit="frame", desc=dataset)

    def on_scene(scene_id: str, frames: int) -> None:
        bar.set_description(f"{dataset}/{scene_id}")
        bar.total = (bar.total or 0) + frames
        bar.refresh()

    try:
        written = build_synthetic(out, list(scenes) or None, on_scene=on_scene, on_frame=lambda: bar.update(),
                                  dataset=dataset, skip_built=resume)
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


@build_data.command("clips")
@click.option("--suite", "suite_ref", required=True,
              help="A corner-protocol suite (id or file), e.g. synthetic-train-corner: its scenes, seeds, preset "
                   "and protocol.clip settings.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Clip folder (shards + manifest.json). Default: <data root>/clips-<suite>.")
@click.option("--data", "root", type=click.Path(file_okay=False, path_type=Path), help=OUT_HELP)
@click.option("--method", default="2dgs", show_default=True,
              help="Registered method that makes the corner-masked reconstructions (gfbench ls methods).")
@click.option("--preset", default=None, help="The method's preset (default: the suite's preset).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--scene", "scenes", multiple=True, help="Only this scene (repeatable). Default: the suite's scenes.")
def build_clips_command(suite_ref: str, out: Path | None, root: Path | None, method: str, preset: str | None,
                        device: str, scenes: tuple[str, ...]) -> None:
    """Diffusion training clips: corner-masked reconstructions rendered along the capture trajectory, cut into
    RGB-D clips (artifact video, reference frame, target video) as WebDataset shards. Resumable: scenes already
    in the folder are skipped."""
    from gfbench.clips import ClipError, build_clips
    from gfbench.shards import ShardError
    from gfbench.specs import SpecError, load_suite

    try:
        suite = load_suite(suite_ref)
    except SpecError as exc:
        raise click.ClickException(str(exc)) from exc
    out = out or data_root(root) / f"clips-{suite.id}"
    chosen = list(scenes) or list(suite.scenes)
    bar = tqdm(total=len(chosen) * len(suite.seeds), unit="fit", desc=f"clips {suite.id}")

    def on_fitted(scene_id: str, seed: int) -> None:
        bar.set_description(f"clips {scene_id} seed {seed}")
        bar.update()

    try:
        written = build_clips(suite, out, method=method, preset=preset, device=device, data=root, scenes=chosen,
                              on_fitted=on_fitted)
    except (ClipError, ShardError, SpecError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        bar.close()
    for shard in written:
        click.echo(f"wrote {shard}")
