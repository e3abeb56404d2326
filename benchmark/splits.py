"""Frozen splits: the frame names (and patch boxes) a suite chose for each scene, written once under
``datasets/splits/<suite>/<scene>.json`` so that results never depend on floating-point luck or on a
reader's sort order. Later runs recompute the split and verify it against the frozen file.

File layout::

    {"format": "gfbench-split", "format_version": 1, "suite": ..., "suite_version": ..., "dataset": ...,
     "scene": ..., "protocol": {...}, "frames": 48,
     "splits": [{"seed": null, "train": [{"name": ..., "index": 0, "box": [x, y, w, h] or null}, ...],
                 "test": [{"name": ..., "index": 1}, ...]}]}

``seed`` is null for protocols that do not depend on it; the corner protocol has one entry per suite seed.
"""

from __future__ import annotations

import json
from pathlib import Path

from gfbench.paths import splits_root
from gfbench.protocols import Split, is_seeded, make_split
from gfbench.scene import Scene
from gfbench.specs import SuiteSpec

FORMAT = "gfbench-split"
FORMAT_VERSION = 1


class SplitMismatch(ValueError):
    """A frozen split disagrees with the data or with the split computed now."""


def frozen_split_path(suite_id: str, scene_id: str, root: Path | None = None) -> Path:
    return Path(root or splits_root()) / suite_id / f"{scene_id}.json"


def _entry(split: Split, seed: int | None) -> dict:
    return {
        "seed": seed,
        "train": [{"name": v.name, "index": v.frame_index, "box": list(v.box) if v.box else None} for v in split.train],
        "test": [{"name": v.name, "index": v.frame_index} for v in split.test],
    }


def freeze_split(suite: SuiteSpec, scene: Scene) -> dict:
    """The frozen split of ``scene`` under ``suite`` (one entry per seed when the protocol draws from it)."""
    if scene.dataset != suite.dataset:
        raise ValueError(f"suite {suite.id} runs on dataset {suite.dataset!r}, scene {scene.key} is from another")
    seeds = list(suite.seeds) if is_seeded(suite.protocol) else [None]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "suite": suite.id,
        "suite_version": suite.version,
        "dataset": scene.dataset,
        "scene": scene.scene_id,
        "protocol": suite.protocol,
        "frames": len(scene.frames),
        "splits": [_entry(make_split(scene, suite.protocol, seed=seed or 0), seed) for seed in seeds],
    }


def _to_text(frozen: dict) -> str:
    """JSON with one line per frame, so that diffs of a re-frozen split read frame by frame."""
    def rows(items: list[dict]) -> str:
        return ",\n".join(f"    {json.dumps(item)}" for item in items)

    entries = [f'  {{"seed": {json.dumps(e["seed"])},\n   "train": [\n{rows(e["train"])}\n   ],\n'
               f'   "test": [\n{rows(e["test"])}\n   ]}}' for e in frozen["splits"]]
    head = json.dumps({k: v for k, v in frozen.items() if k != "splits"}, indent=1)
    return head[:-2] + ',\n "splits": [\n' + ",\n".join(entries) + "\n ]\n}\n"


def write_frozen_split(frozen: dict, root: Path | None = None) -> Path:
    path = frozen_split_path(frozen["suite"], frozen["scene"], root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_to_text(frozen))
    return path


def load_frozen_split(suite_id: str, scene_id: str, root: Path | None = None) -> dict:
    path = frozen_split_path(suite_id, scene_id, root)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no frozen split for suite {suite_id!r}, scene {scene_id!r} "
                                f"(gfbench splits freeze --suite {suite_id})")
    try:
        frozen = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SplitMismatch(f"{path}: not valid JSON: {exc}") from exc
    if frozen.get("format") != FORMAT or frozen.get("format_version") != FORMAT_VERSION:
        raise SplitMismatch(f"{path}: not a {FORMAT} v{FORMAT_VERSION} file")
    if (frozen.get("suite"), frozen.get("scene")) != (suite_id, scene_id):
        raise SplitMismatch(f"{path}: holds suite {frozen.get('suite')!r}, scene {frozen.get('scene')!r}")
    return frozen


def _frozen_entry(frozen: dict, seed: int | None, path: Path) -> dict:
    for entry in frozen["splits"]:
        if entry["seed"] is None or entry["seed"] == seed:
            return entry
    seeds = [e["seed"] for e in frozen["splits"]]
    raise SplitMismatch(f"{path}: no frozen split for seed {seed} (frozen seeds: {seeds})")


def verify_frozen_split(split: Split, frozen: dict, root: Path | None = None) -> None:
    """Raise SplitMismatch, naming the split file and the frame, unless ``split`` chose exactly the frozen
    frames and boxes."""
    path = frozen_split_path(frozen["suite"], frozen["scene"], root)
    entry = _frozen_entry(frozen, split.info.get("seed"), path)
    names = set(split.info["frame_names"])
    for role in ("train", "test"):
        for item in entry[role]:
            if item["name"] not in names:
                raise SplitMismatch(f"{path}: {role} frame {item['name']!r} is not in the scene "
                                    f"({len(names)} frames); the data differ from those the split was frozen from")
    now = {
        "train": {v.name: list(v.box) if v.box else None for v in split.train},
        "test": {v.name: None for v in split.test},
    }
    for role in ("train", "test"):
        then = {item["name"]: item.get("box") for item in entry[role]}
        for name in sorted(set(then) | set(now[role])):
            if name not in now[role]:
                raise SplitMismatch(f"{path}: frame {name!r} is a frozen {role} frame but not a {role} frame now")
            if name not in then:
                raise SplitMismatch(f"{path}: frame {name!r} is a {role} frame now but not in the frozen split")
            if then[name] != now[role][name]:
                raise SplitMismatch(f"{path}: {role} frame {name!r} has box {then[name]} in the split file but "
                                    f"{now[role][name]} now")


def split_for_run(suite: SuiteSpec, scene: Scene, *, seed: int = 0, root: Path | None = None,
                  require_frozen: bool = False) -> Split:
    """The split a run uses: computed from the protocol and checked against the frozen file when there is
    one (required with ``require_frozen``)."""
    split = make_split(scene, suite.protocol, seed=seed)
    path = frozen_split_path(suite.id, scene.scene_id, root)
    if path.exists() or require_frozen:
        verify_frozen_split(split, load_frozen_split(suite.id, scene.scene_id, root), root)
    return split
