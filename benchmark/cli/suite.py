"""``gfbench suite new``: a suite of your own that reuses a known suite's protocol on your own scenes."""

from __future__ import annotations

import os
from pathlib import Path

import click
import yaml

from gfbench import specs


def _layout_of(root: Path, dataset: str, scene_id: str) -> str:
    """The dataset spec layout a built scene came from (its provenance), ``colmap`` when unknown."""
    from gfbench.splits import read_scene_meta

    layout = str((read_scene_meta(root, dataset, scene_id).get("provenance") or {}).get("layout", ""))
    for part in reversed(layout.split("/")):
        if part in specs.KNOWN_LAYOUTS:
            return part
    return "colmap"


def _dataset_spec_text(dataset: str, scenes: list[str], layout: str, root: Path) -> str:
    data = {"id": dataset, "kind": "dataset", "version": 1,
            "description": f"Scenes of your own, built with gfbench build-data into {root / dataset}.",
            "layout": layout, "scenes": scenes}
    return f"# Written by `gfbench suite new` from the scenes built under {root / dataset}.\n" + \
        yaml.safe_dump(data, sort_keys=False, width=100)


def _suite_text(suite_id: str, base: specs.SuiteSpec, include: str, dataset: str, scenes: list[str] | None) -> str:
    data = {"include": include, "id": suite_id, "kind": "suite", "version": 1,
            "description": f"The protocol, metrics and preset of suite {base.id} on dataset {dataset}.",
            "dataset": dataset, "scenes": scenes or "all"}
    note = ""
    if base.default_priors:  # priors shipped for the base suite's scenes (e.g. trained on synthetic ones)
        data["default_priors"] = {kind: None for kind in sorted(base.default_priors)}
        note = (f"# default_priors: {base.id}'s default priors ({', '.join(sorted(base.default_priors.values()))}) "
                "were made for its own scenes, so this suite names none: pass them by flag.\n")
    return (f"# Written by `gfbench suite new`. Fields set here override those of {base.id} ({base.path});\n"
            "# bump `version` whenever you change what the suite trains on or how it scores.\n"
            + note + yaml.safe_dump(data, sort_keys=False, width=100))


@click.group("suite")
def suite_group() -> None:
    """Suites of your own (run them with --suite PATH, or put their folder in --specs / $GFBENCH_SPEC_PATH)."""


@suite_group.command("new")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "base_ref", required=True,
              help="Suite (id or file) whose protocol, metrics and preset yours includes, e.g. synthetic-masked.")
@click.option("--dataset", required=True,
              help="Dataset id your scenes are built under (gfbench build-data colmap PATH --dataset ID).")
@click.option("--scene", "scenes", multiple=True,
              help="Only this scene (repeatable). Default: all scenes of the dataset.")
@click.option("--data", "data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Shard root the dataset is built under (default: $GFBENCH_DATA, else ~/.cache/gfbench/data).")
@click.option("--force", is_flag=True, help="Replace PATH (and the dataset spec beside it) if they exist.")
def new(path: Path, base_ref: str, dataset: str, scenes: tuple[str, ...], data: Path | None, force: bool) -> None:
    """Write PATH (a .yaml suite that includes --from and runs on --dataset). When the dataset has no spec
    yet, also write one beside PATH (<dataset>.yaml) listing the scenes built under the data root."""
    from gfbench import shards
    from gfbench.paths import data_root

    if path.suffix not in specs.SUITE_FILE_SUFFIXES:
        raise click.UsageError(f"{path}: a suite file name ends with .yaml")
    try:
        base = specs.load_suite(base_ref)
    except specs.SpecError as exc:
        raise click.ClickException(str(exc)) from exc
    written: list[Path] = []
    dataset_file = path.parent / f"{dataset}.yaml"
    if dataset not in specs.list_datasets() and not dataset_file.is_file():
        root = data_root(data)
        built = shards.list_built_scenes(root, dataset)
        if not built:
            raise click.ClickException(f"{root / dataset}: no scenes built and no dataset spec {dataset!r}; build "
                                       f"them first (gfbench build-data colmap CAPTURE --dataset {dataset})")
        written.append(dataset_file)
        text = _dataset_spec_text(dataset, built, _layout_of(root, dataset, built[0]), root)
    for target in (path, *written):
        if target.exists() and not force:
            raise click.ClickException(f"{target}: exists (pass --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if written:
        dataset_file.write_text(text)
    include = base.id if not specs.is_suite_file(base_ref) else os.path.relpath(base.path, path.parent.resolve())
    path.write_text(_suite_text(path.stem, base, include, dataset, list(scenes) or None))
    written.insert(0, path)
    try:
        suite = specs.load_suite(str(path))
    except specs.SpecError as exc:
        for target in written:
            target.unlink(missing_ok=True)
        raise click.ClickException(str(exc)) from exc
    for target in written:
        click.echo(f"wrote {target}")
    click.echo(f"suite {suite.id} v{suite.version}: {suite.protocol_type} protocol of {base.id} on "
               f"{len(suite.scenes)} scene(s) of {suite.dataset}, metrics {', '.join(suite.metrics)}\n"
               f"next: gfbench run --suite {path}")
