"""``gfbench build-data colmap|nerfstudio|dl3dv|tnt|mipnerf360``: real captures into shards.

The commands are registered into the ``build-data`` group by ``gfbench.cli.data``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import click

from gfbench.builders.undistort import UNDISTORT_OPTIONS

# the same help as ``gfbench.cli.data.OUT_HELP``; not imported, since that module imports this one
OUT_HELP = "Shard root (default: $GFBENCH_DATA, else ~/.cache/gfbench/data)."
_OUT = click.option("--out", type=click.Path(file_okay=False, path_type=Path), help=OUT_HELP)
_DATASET = click.option("--dataset", default="custom", show_default=True,
                        help="Dataset id the shard is filed under (<out>/<dataset>/<scene>.tar).")
_SCENE_ID = click.option("--scene", "scene_id", help="Scene id (default: the capture folder's name).")
_SCENES = click.option("--scene", "scenes", multiple=True,
                       help="Build only this scene (repeatable). Default: every scene of the dataset spec.")
_UNDISTORT_CHOICES = click.Choice(UNDISTORT_OPTIONS)
_UNDISTORT_HELP = ("How distorted cameras become pinhole ones: keep-size (same size and focal, pixels without a "
                   "source masked) or opencv-alpha0 (GenFusion's official code: OpenCV's optimal new camera at "
                   "alpha 0, cropped to the valid region). Pixels without a source are never scored.")
_SPLITS_HELP = ("Folder of split files (train_test_split_<n>.json, ReconFusion's format) to store in the shard"
                "{where}. Default: those in the scene folder.")


@contextmanager
def _build_errors() -> Iterator[None]:
    """A builder's refusal becomes a one-line CLI error (exit code 1) instead of a traceback."""
    from gfbench.builders.common import BuildError

    try:
        yield
    except BuildError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("colmap")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--images", default="images", show_default=True,
              help="Image folder inside PATH (images_2/4/8 scale the intrinsics to the image size).")
@_DATASET
@_SCENE_ID
@_OUT
@click.option("--undistort", type=_UNDISTORT_CHOICES, default="keep-size", show_default=True, help=_UNDISTORT_HELP)
@click.option("--splits", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help=_SPLITS_HELP.format(where=" (the files themselves, not a folder per scene)"))
def colmap_command(path: Path, images: str, dataset: str, scene_id: str | None, out: Path | None, undistort: str,
                   splits: Path | None) -> None:
    """Build a COLMAP capture: PATH holds sparse/0 (or sparse) and an image folder, and optionally
    ReconFusion-style split files (train_test_split_{n}.json) for sparse-view suites."""
    from gfbench.builders.colmap import build_colmap

    with _build_errors():
        shard = build_colmap(path, images=images, dataset=dataset, scene_id=scene_id, out=out, progress=True,
                             undistort=undistort, splits=splits)
    click.echo(f"wrote {shard}")


@click.command("nerfstudio")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--images", default=None,
              help="Read the frames from this folder instead of their file_path's (e.g. images_4).")
@_DATASET
@_SCENE_ID
@_OUT
def nerfstudio_command(path: Path, images: str | None, dataset: str, scene_id: str | None, out: Path | None) -> None:
    """Build a nerfstudio capture: PATH is a folder with transforms.json (or the file itself)."""
    from gfbench.builders.nerfstudio import build_nerfstudio

    with _build_errors():
        shard = build_nerfstudio(path, images=images, dataset=dataset, scene_id=scene_id, out=out, progress=True)
    click.echo(f"wrote {shard}")


def _build_known(dataset_id: str, source: Path, scenes: tuple[str, ...], out: Path | None,
                 undistort: str | None = None, splits: Path | None = None) -> None:
    from gfbench.builders.known import build_known

    notes: list[str] = []
    with _build_errors():
        written = build_known(dataset_id, source, list(scenes) or None, out=out, progress=True, undistort=undistort,
                              splits=splits, notes=notes)
    for shard in written:
        click.echo(f"wrote {shard}")
    for note in notes:
        click.echo(f"note: {note}", err=True)


_UNDISTORT = click.option("--undistort", type=_UNDISTORT_CHOICES, default=None,
                          help=_UNDISTORT_HELP + " Default: the dataset spec's (options.undistort), else keep-size.")
_SPLITS = click.option("--splits", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                       help=_SPLITS_HELP.format(where=": <DIR>/<scene>/train_test_split_<n>.json"))


_SOURCE_HELP = "Local copy of the dataset (the folder holding the scene folders)."


@click.command("dl3dv")
@click.option("--source", type=click.Path(file_okay=False, path_type=Path),
              help=_SOURCE_HELP + " With --from-hub: where to download to (default: the hub cache).")
@click.option("--from-hub", is_flag=True, help="Download the scenes from the gated Hugging Face repo first.")
@click.option("--token", default=None, help="Hugging Face token for --from-hub (default: your saved login).")
@_SCENES
@_OUT
@_UNDISTORT
def dl3dv_command(source: Path | None, from_hub: bool, token: str | None, scenes: tuple[str, ...],
                  out: Path | None, undistort: str | None) -> None:
    """DL3DV benchmark scenes at 960x540 (images_4): GenFusion's preprocessed release (<hash>/nerfstudio/ with
    colmap/sparse/0 or sparse/0 and images_4), or the raw benchmark's COLMAP or nerfstudio layouts."""
    if from_hub:
        from gfbench.builders.known import download_dl3dv

        with _build_errors():
            source = download_dl3dv(list(scenes) or None, token=token, local_dir=source)
    elif source is None:
        raise click.UsageError("pass --source PATH (a local copy) or --from-hub")
    _build_known("dl3dv", source, scenes, out, undistort)


def _known_layout_command(dataset_id: str, help_text: str) -> click.Command:
    """``gfbench build-data <dataset_id> --source PATH``: a known benchmark layout read from a local copy."""

    @click.command(dataset_id, help=help_text)
    @click.option("--source", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
                  help=_SOURCE_HELP)
    @_SCENES
    @_OUT
    @_UNDISTORT
    @_SPLITS
    def command(source: Path, scenes: tuple[str, ...], out: Path | None, undistort: str | None,
                splits: Path | None) -> None:
        _build_known(dataset_id, source, scenes, out, undistort, splits)

    return command


tnt_command = _known_layout_command(
    "tnt", "Tanks and Temples scenes (3DGS tandt layout: <scene>/images and sparse/0).")
mipnerf360_command = _known_layout_command(
    "mipnerf360", "Mip-NeRF 360 scenes (<scene>/images_4 and sparse/0; the image folder comes from the spec), "
                  "with ReconFusion's train_test_split_{3,6,9}.json from each scene folder or --splits DIR.")
