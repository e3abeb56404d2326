"""``gfbench protocol show`` (a picture of a scene's split) and ``gfbench splits freeze|verify``."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageDraw

from gfbench import specs
from gfbench.protocols import Split, make_split
from gfbench.scene import Scene

TRAIN_COLOR, TEST_COLOR, UNUSED_COLOR = (60, 220, 60), (230, 60, 60), (150, 150, 150)
THUMB_WIDTH = 192
SUITE_HELP = "Suite id (see 'gfbench ls suites') or the path of a suite file."


def load_scene(dataset: str, scene_id: str, data: str | None) -> Scene:
    from gfbench.data import load_scene as load

    return load(dataset, scene_id, Path(data) if data else None)


def _load_suite(suite_id: str) -> specs.SuiteSpec:
    try:
        return specs.load_suite(suite_id)
    except specs.SpecError as exc:
        raise click.ClickException(str(exc)) from exc


def _check_scene(suite: specs.SuiteSpec, scene_id: str) -> None:
    if scene_id not in suite.scenes:
        raise click.ClickException(f"suite {suite.id} has no scene {scene_id!r}; scenes: {', '.join(suite.scenes)}")


def _tile(frame_image: np.ndarray, role: str, box, coverage, label: str, scale: float) -> Image.Image:
    """One frame: train frames dimmed outside their patch, test frames dimmed where no train view saw them."""
    image = frame_image.astype(np.float32)
    if role == "train" and box is not None:
        x, y, w, h = box
        keep = np.zeros(image.shape[:2], bool)
        keep[y:y + h, x:x + w] = True
        image[~keep] *= 0.3
    elif role == "test" and coverage is not None:
        image[~coverage] = image[~coverage] * 0.4 + np.array(TEST_COLOR) * 0.3
    elif role == "unused":
        image *= 0.3
    tile = Image.fromarray(image.clip(0, 255).astype(np.uint8))
    tile = tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))))
    draw = ImageDraw.Draw(tile)
    color = {"train": TRAIN_COLOR, "test": TEST_COLOR}.get(role, UNUSED_COLOR)
    if role == "train" and box is not None:
        x, y, w, h = (v * scale for v in box)
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=color, width=2)
    else:
        draw.rectangle([0, 0, tile.width - 1, tile.height - 1], outline=color, width=2)
    draw.text((4, 2), label, fill=color)
    return tile


def split_sheet(scene: Scene, split: Split, title: str, columns: int = 8) -> Image.Image:
    """Every frame of ``scene`` as a thumbnail, marked train (patch box), test (red, uncovered parts
    tinted) or unused."""
    roles = {v.frame_index: ("train", v.box, None) for v in split.train}
    tested = {v.frame_index for v in split.test}
    for view in split.test:
        if view.frame_index not in roles:  # the corner protocol tests on its train frames too
            roles[view.frame_index] = ("test", None, view.coverage)
    tiles = []
    for k, frame in enumerate(scene.frames):
        role, box, coverage = roles.get(k, ("unused", None, None))
        label = f"{k} train+test" if role == "train" and k in tested else f"{k} {role}"
        scale = min(1.0, THUMB_WIDTH / frame.camera.width)
        tiles.append(_tile(frame.image, role, box, coverage, label, scale))
    tile_w, tile_h = max(t.width for t in tiles), max(t.height for t in tiles)
    columns = min(columns, len(tiles))
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile_w, rows * tile_h + 18), (20, 20, 20))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * tile_w, 18 + (i // columns) * tile_h))
    ImageDraw.Draw(sheet).text((4, 3), title, fill=(255, 255, 255))
    return sheet


@click.group("protocol")
def protocol_group() -> None:
    """Inspect what a suite's protocol does to a scene."""


@protocol_group.command("show")
@click.option("--suite", "suite_id", required=True, help=SUITE_HELP)
@click.option("--scene", "scene_id", required=True, help="Scene id of the suite's dataset.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="PNG to write [<suite>-<scene>.png].")
@click.option("--data", type=click.Path(file_okay=False), default=None, help="Data root [gfbench data root].")
@click.option("--seed", type=int, default=None, help="Seed for seeded protocols [the suite's first seed].")
def show(suite_id: str, scene_id: str, out: str | None, data: str | None, seed: int | None) -> None:
    """Save a PNG of every frame with its role: train (patch box), test, or unused."""
    suite = _load_suite(suite_id)
    _check_scene(suite, scene_id)
    scene = load_scene(suite.dataset, scene_id, data)
    seed = suite.seeds[0] if seed is None else seed
    try:
        split = make_split(scene, suite.protocol, seed=seed)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    extra = f", corner {split.info['corner']}" if "corner" in split.info else ""
    title = (f"{suite.id} / {scene.key}: {len(split.train)} train, {len(split.test)} test, "
             f"{len(split.points) if split.points is not None else 0} points{extra}")
    path = Path(out or f"{suite.id}-{scene_id}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    split_sheet(scene, split, title).save(path)
    click.echo(f"{title}\nwrote {path}")


@click.group("splits")
def splits_group() -> None:
    """Frozen splits: the frame names and patch boxes a suite chose, per scene."""


def _chosen_scenes(suite: specs.SuiteSpec, scenes: tuple[str, ...]) -> list[str]:
    chosen = [s for item in scenes for s in item.split(",") if s] or list(suite.scenes)
    for scene_id in chosen:
        _check_scene(suite, scene_id)
    return chosen


def _splits_root(suite: specs.SuiteSpec, folder: str | None) -> Path:
    """Where a suite's frozen splits are written: ``folder`` when given, else beside the suite (its spec
    folder's ``splits/``), never inside the installed package."""
    from gfbench.paths import inside_installed_package

    if folder:
        return Path(folder)
    if inside_installed_package(suite.splits_dir):
        raise click.ClickException(
            f"suite {suite.id} is built into the installed gfbench package ({suite.path}); nothing is written "
            f"there. Write a suite of your own that starts with 'include: {suite.id}' and freeze that one (its "
            "splits go beside it), or name another folder with --out DIR")
    return suite.splits_dir


@splits_group.command("freeze")
@click.option("--suite", "suite_id", required=True, help=SUITE_HELP)
@click.option("--scenes", multiple=True, help="Scene ids (repeat or comma-separate) [all of the suite's].")
@click.option("--data", type=click.Path(file_okay=False), default=None, help="Data root [gfbench data root].")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Splits root [splits/ of the suite's spec folder: datasets/splits for the checkout's suites, "
                   "beside the file for a suite of your own].")
def freeze(suite_id: str, scenes: tuple[str, ...], data: str | None, out: str | None) -> None:
    """Write <splits root>/<suite>/<scene>.json for each scene (never into the installed package)."""
    from gfbench.splits import freeze_split, write_frozen_split

    suite = _load_suite(suite_id)
    root = _splits_root(suite, out)
    for scene_id in _chosen_scenes(suite, scenes):
        scene = load_scene(suite.dataset, scene_id, data)
        try:
            frozen = freeze_split(suite, scene)
        except ValueError as exc:
            raise click.ClickException(f"{suite.id} / {scene.key}: {exc}") from exc
        path = write_frozen_split(frozen, root)
        entry = frozen["splits"][0]
        click.echo(f"{scene_id}: {len(entry['train'])} train, {len(entry['test'])} test -> {path}")


@splits_group.command("verify")
@click.option("--suite", "suite_id", required=True, help=SUITE_HELP)
@click.option("--scenes", multiple=True, help="Scene ids (repeat or comma-separate) [all of the suite's].")
@click.option("--data", type=click.Path(file_okay=False), default=None, help="Data root [gfbench data root].")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Splits root [splits/ of the suite's spec folder].")
def verify(suite_id: str, scenes: tuple[str, ...], data: str | None, root: str | None) -> None:
    """Recompute each scene's split (every suite seed) and check it against its frozen file."""
    from gfbench.splits import load_frozen_split, verify_frozen_split

    suite = _load_suite(suite_id)
    root_path = Path(root) if root else suite.splits_dir
    for scene_id in _chosen_scenes(suite, scenes):
        scene = load_scene(suite.dataset, scene_id, data)
        try:
            frozen = load_frozen_split(suite.id, scene_id, root_path)
            for seed in suite.seeds:
                verify_frozen_split(make_split(scene, suite.protocol, seed=seed), frozen, root_path)
        except (ValueError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"{scene_id}: ok")
