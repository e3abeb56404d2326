"""Finding scenes under the data root, and building the built-in synthetic set on first use."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from gfbench import shards, specs
from gfbench.paths import data_root
from gfbench.scene import Scene


def build_synthetic(out: Path | None = None, scenes: list[str] | None = None,
                    on_scene: Callable[[str, int], None] | None = None,
                    on_frame: Callable[[], None] | None = None) -> list[Path]:
    """Render the synthetic scenes declared in ``datasets/synthetic.yaml`` into shards under ``out``."""
    from gfbench.synthetic import build_scene

    spec = specs.load_dataset("synthetic")
    chosen = list(scenes or spec.scenes)
    unknown = [s for s in chosen if s not in spec.scenes]
    if unknown:
        raise specs.SpecError(f"{spec.path}: no synthetic scene {unknown[0]!r}; scenes: {', '.join(spec.scenes)}")
    width, height = spec.resolution
    written = []
    for scene_id in chosen:
        if on_scene:
            on_scene(scene_id, spec.options["frames"])
        scene = build_scene(scene_id, spec.options, width, height, progress=on_frame)
        written.append(shards.write_scene(scene, data_root(out)))
    return written


def load_scene(dataset: str, scene_id: str, root: Path | str | None = None) -> Scene:
    """Read a scene from its shard; the synthetic scenes are built first if they are not there yet (not
    under a remote root, which is only read)."""
    root = data_root(root)
    if dataset == "synthetic" and not shards.is_remote(root) and scene_id not in shards.list_built_scenes(root, dataset):
        build_synthetic(root, [scene_id])
    return shards.read_scene(root, dataset, scene_id)
