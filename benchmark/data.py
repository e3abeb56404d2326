"""Finding scenes under the data root, and building the built-in synthetic set on first use."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from gfbench import shards, specs
from gfbench.paths import data_root
from gfbench.scene import Scene


def build_synthetic(out: Path | None = None, scenes: list[str] | None = None,
                    on_scene: Callable[[str, int], None] | None = None,
                    on_frame: Callable[[], None] | None = None, dataset: str = "synthetic",
                    skip_built: bool = False) -> list[Path]:
    """Render the scenes of a synthetic-layout dataset (``datasets/synthetic.yaml``, the evaluation scenes, or
    ``datasets/synthetic-train.yaml``, the procedural training scenes) into shards under ``out``; with
    ``skip_built``, scenes already in the manifest are left as they are (an interrupted build resumes)."""
    from gfbench.synthetic import build_scene

    spec = specs.load_dataset(dataset)
    if spec.layout != "synthetic":
        raise specs.SpecError(f"{spec.path}: layout {spec.layout!r} is not 'synthetic'; build it with "
                              f"'gfbench build-data {spec.layout}'")
    chosen = list(scenes or spec.scenes)
    unknown = [s for s in chosen if s not in spec.scenes]
    if unknown:
        raise specs.SpecError(f"{spec.path}: no {dataset} scene {unknown[0]!r}; scenes: {', '.join(spec.scenes)}")
    width, height = spec.resolution
    written = []
    built = set(shards.list_built_scenes(data_root(out), dataset)) if skip_built else set()
    for scene_id in [s for s in chosen if s not in built]:
        if on_scene:
            on_scene(scene_id, spec.options["frames"])
        scene = build_scene(scene_id, spec.options, width, height, progress=on_frame, dataset=dataset)
        written.append(shards.write_scene(scene, data_root(out)))
    return written


def load_scene(dataset: str, scene_id: str, root: Path | str | None = None) -> Scene:
    """Read a scene from its shard; scenes of a synthetic-layout dataset are built first if they are not
    there yet (not under a remote root, which is only read)."""
    root = data_root(root)
    if not shards.is_remote(root) and scene_id not in shards.list_built_scenes(root, dataset) and _is_synthetic(dataset):
        build_synthetic(root, [scene_id], dataset=dataset)
    return shards.read_scene(root, dataset, scene_id)


def _is_synthetic(dataset: str) -> bool:
    try:
        return specs.load_dataset(dataset).layout == "synthetic"
    except specs.SpecError:
        return False
