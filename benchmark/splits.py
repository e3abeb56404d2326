"""Frozen splits, and the split files scenes carry.

**Frozen splits**: the frame names (and patch boxes) a suite chose for each scene, written once under
``splits/<suite>/<scene>.json`` of the spec folder the suite lives in (``datasets/splits/`` for the built-in
suites; beside a suite file of your own), so that results never depend on floating-point luck or on a
reader's sort order. Later runs recompute the split and verify it against the frozen file; ``gfbench
validate`` checks every frozen file against its suite without the data (see ``check_frozen_split_file``).

File layout::

    {"format": "gfbench-split", "format_version": 2, "suite": ..., "suite_version": ..., "dataset": ...,
     "scene": ..., "protocol": {...}, "frames": 48, "checksum": "<sha256 of the rest>",
     "splits": [{"seed": null, "train": [{"name": ..., "index": 0, "box": [x, y, w, h] or null}, ...],
                 "test": [{"name": ..., "index": 1}, ...]}]}

``seed`` is null for protocols that do not depend on it; the corner protocol has one entry per suite seed.
``checksum`` makes an edit by hand visible: frozen files are written by ``gfbench splits freeze`` only.

**Split files of a scene**: ReconFusion's ``train_test_split_{n}.json`` (``{"train_ids": [...], "test_ids":
[...]}``, indices into the sorted frames), read at build time into the scene's meta (``collect_split_files``)
for the ``train_views: split-file`` protocols. ``check_scene_inputs`` stops a run before training when a
scene lacks what its suite needs.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from pathlib import Path
from typing import Iterable

from gfbench import shards
from gfbench.protocols import (
    SPLIT_FILES_META, CornerProtocol, MaskedProtocol, SparseProtocol, Split, is_seeded, make_split, parse_protocol,
    sparse_pool_choice, split_file_name,
)
from gfbench.scene import Scene
from gfbench.specs import SuiteSpec

FORMAT = "gfbench-split"
FORMAT_VERSION = 2
SPLIT_FILE_RE = re.compile(r"^train_test_split_(\d+)\.json$")


class SplitMismatch(ValueError):
    """A frozen split disagrees with the data, with its suite, or with the split computed now."""


class SceneInputMissing(shards.ShardError):
    """A built scene lacks something its suite needs (a split file, an undistortion option)."""


# ---------------------------------------------------------------- frozen splits: writing


def frozen_split_path(suite_id: str, scene_id: str, root: Path) -> Path:
    return Path(root) / suite_id / f"{scene_id}.json"


def _entry(split: Split, seed: int | None) -> dict:
    return {
        "seed": seed,
        "train": [{"name": v.name, "index": v.frame_index, "box": list(v.box) if v.box else None} for v in split.train],
        "test": [{"name": v.name, "index": v.frame_index} for v in split.test],
    }


def checksum(frozen: dict) -> str:
    """sha256 of a frozen split's content (everything but the checksum), in canonical JSON."""
    content = {k: v for k, v in frozen.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def freeze_split(suite: SuiteSpec, scene: Scene) -> dict:
    """The frozen split of ``scene`` under ``suite`` (one entry per seed when the protocol draws from it)."""
    if scene.dataset != suite.dataset:
        raise ValueError(f"suite {suite.id} runs on dataset {suite.dataset!r}, scene {scene.key} is from another")
    seeds = list(suite.seeds) if is_seeded(suite.protocol) else [None]
    frozen = {
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
    return {**frozen, "checksum": checksum(json.loads(json.dumps(frozen)))}


def _to_text(frozen: dict) -> str:
    """JSON with one line per frame, so that diffs of a re-frozen split read frame by frame."""
    def rows(items: list[dict]) -> str:
        return ",\n".join(f"    {json.dumps(item)}" for item in items)

    entries = [f'  {{"seed": {json.dumps(e["seed"])},\n   "train": [\n{rows(e["train"])}\n   ],\n'
               f'   "test": [\n{rows(e["test"])}\n   ]}}' for e in frozen["splits"]]
    head = json.dumps({k: v for k, v in frozen.items() if k != "splits"}, indent=1)
    return head[:-2] + ',\n "splits": [\n' + ",\n".join(entries) + "\n ]\n}\n"


def write_frozen_split(frozen: dict, root: Path) -> Path:
    path = frozen_split_path(frozen["suite"], frozen["scene"], root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_to_text(frozen))
    return path


# ---------------------------------------------------------------- frozen splits: reading and checking


def read_frozen_file(path: Path) -> dict:
    """A frozen split file, checked for format and checksum (not yet against a suite)."""
    try:
        frozen = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise SplitMismatch(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(frozen, dict) or frozen.get("format") != FORMAT:
        raise SplitMismatch(f"{path}: not a {FORMAT} file")
    if frozen.get("format_version") != FORMAT_VERSION:
        raise SplitMismatch(f"{path}: {FORMAT} version {frozen.get('format_version')!r}, this gfbench reads version "
                            f"{FORMAT_VERSION}; freeze it again (gfbench splits freeze --suite {frozen.get('suite')})")
    if frozen.get("checksum") != checksum(frozen):
        raise SplitMismatch(f"{path}: content does not match its checksum: the file was edited after `gfbench splits "
                            "freeze` wrote it; freeze it again rather than editing it")
    return frozen


def load_frozen_split(suite_id: str, scene_id: str, root: Path) -> dict:
    path = frozen_split_path(suite_id, scene_id, root)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no frozen split for suite {suite_id!r}, scene {scene_id!r} "
                                f"(gfbench splits freeze --suite {suite_id})")
    frozen = read_frozen_file(path)
    if (frozen.get("suite"), frozen.get("scene")) != (suite_id, scene_id):
        raise SplitMismatch(f"{path}: holds suite {frozen.get('suite')!r}, scene {frozen.get('scene')!r}")
    return frozen


def _expected_indices(protocol, frames: int) -> tuple[list[int] | None, list[int]]:
    """Train indices (None where only the data can tell) and test indices a protocol gives ``frames``."""
    if isinstance(protocol, (MaskedProtocol, CornerProtocol)):
        train = list(range(0, frames, protocol.downsample))
        test = list(range(frames)) if isinstance(protocol, CornerProtocol) else \
            [k for k in range(frames) if k % protocol.downsample]
        return train, test
    assert isinstance(protocol, SparseProtocol)
    test = [k for k in range(frames) if k % protocol.test_every == 0]
    if protocol.train_views == "split-file":
        return None, test
    pool = [k for k in range(frames) if k % protocol.test_every]
    return ([pool[i] for i in sparse_pool_choice(len(pool), protocol.n_views)] if protocol.n_views <= len(pool)
            else None), test


def _entry_problems(entry: dict, protocol, frames: int) -> list[str]:
    """What is wrong with one seed's entry of a frozen split, judged without the data."""
    roles = {}
    for role in ("train", "test"):
        items = entry.get(role)
        if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str)
                                                  and isinstance(i.get("index"), int) for i in items):
            return [f"{role}: expected a list of {{name, index}} items"]
        roles[role] = items
    problems = []
    names = {}
    for item in roles["train"] + roles["test"]:
        if not 0 <= item["index"] < frames:
            problems.append(f"frame {item['name']!r} has index {item['index']}, outside 0..{frames - 1}")
        if names.setdefault(item["name"], item["index"]) != item["index"]:
            problems.append(f"frame {item['name']!r} has two indices, {names[item['name']]} and {item['index']}")
    expected_train, expected_test = _expected_indices(protocol, frames)
    train = [i["index"] for i in roles["train"]]
    test = [i["index"] for i in roles["test"]]
    if test != expected_test:
        problems.append(f"test frames {test[:6]}... are not the protocol's {expected_test[:6]}...")
    if expected_train is not None and train != expected_train:
        problems.append(f"train frames {train[:6]}... are not the protocol's {expected_train[:6]}...")
    if isinstance(protocol, SparseProtocol):
        if len(train) != protocol.n_views or len(set(train)) != len(train) or set(train) & set(test):
            problems.append(f"train frames {train} are not {protocol.n_views} distinct frames outside the test set")
        if any(i.get("box") is not None for i in roles["train"]):
            problems.append("sparse train frames are whole frames but some have a box")
    else:
        for item in roles["train"]:
            box = item.get("box")
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) for v in box)
                    and box[0] >= 0 and box[1] >= 0 and box[2] > 0 and box[3] > 0):
                problems.append(f"train frame {item['name']!r}: box {box!r} is not [x >= 0, y >= 0, w > 0, h > 0]")
                break
    return problems


def check_frozen_split_file(suite: SuiteSpec, path: Path) -> list[str]:
    """Problems of a frozen split file of ``suite``, judged without the data: format and checksum, that it
    belongs to this suite's current version, protocol, dataset and scenes, and that its frames are the ones
    the protocol picks wherever that does not depend on the data (indices, roles, counts, boxes present)."""
    try:
        frozen = read_frozen_file(path)
    except SplitMismatch as exc:
        return [str(exc)]
    expected = {"suite": suite.id, "scene": path.stem, "suite_version": suite.version, "dataset": suite.dataset,
                "protocol": json.loads(json.dumps(suite.protocol))}
    problems = [f"{path}: {key} is {frozen.get(key)!r}, suite {suite.id} (file {suite.path}) has {value!r}"
                for key, value in expected.items() if frozen.get(key) != value]
    if frozen.get("scene") not in suite.scenes:
        problems.append(f"{path}: scene {frozen.get('scene')!r} is not a scene of suite {suite.id}")
    if problems:
        return problems + [f"{path}: freeze it again (gfbench splits freeze --suite {suite.id}) or delete it"]
    protocol = parse_protocol(suite.protocol)
    seeds = list(suite.seeds) if is_seeded(suite.protocol) else [None]
    frames = frozen.get("frames")
    entries = frozen.get("splits")
    if not isinstance(frames, int) or frames < 1 or not isinstance(entries, list):
        return [f"{path}: 'frames' must be a positive integer and 'splits' a list"]
    if [e.get("seed") if isinstance(e, dict) else None for e in entries] != seeds:
        return [f"{path}: seeds {[e.get('seed') for e in entries if isinstance(e, dict)]} are not the suite's {seeds}"]
    return [f"{path}: seed {entry['seed']}: {problem}"
            for entry in entries for problem in _entry_problems(entry, protocol, frames)]


def check_frozen_splits(suites: Iterable[SuiteSpec]) -> list[str]:
    """``check_frozen_split_file`` for every frozen file of every suite, plus files that belong to no
    suite (a folder named after an unknown suite, or a scene the suite lacks)."""
    suites = list(suites)
    problems = []
    known = {(suite.splits_dir.resolve(), suite.id) for suite in suites}
    for suite in suites:
        for path in sorted((suite.splits_dir / suite.id).glob("*.json")):
            problems += check_frozen_split_file(suite, path)
    for splits_dir in sorted({suite.splits_dir.resolve() for suite in suites}):
        for folder in sorted(p for p in splits_dir.iterdir() if p.is_dir()) if splits_dir.is_dir() else []:
            if (splits_dir, folder.name) not in known:
                problems.append(f"{folder}: frozen splits of suite {folder.name!r}, which is not a suite of this "
                                "spec folder")
    return problems


def _frozen_entry(frozen: dict, seed: int | None, path: Path) -> dict:
    for entry in frozen["splits"]:
        if entry["seed"] is None or entry["seed"] == seed:
            return entry
    seeds = [e["seed"] for e in frozen["splits"]]
    raise SplitMismatch(f"{path}: no frozen split for seed {seed} (frozen seeds: {seeds})")


def verify_frozen_split(split: Split, frozen: dict, root: Path) -> None:
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
    """The split a run uses: computed from the protocol and checked against the suite's frozen file when
    there is one (required with ``require_frozen``). ``root`` overrides the suite's splits folder."""
    root = Path(root) if root is not None else suite.splits_dir
    split = make_split(scene, suite.protocol, seed=seed)
    path = frozen_split_path(suite.id, scene.scene_id, root)
    if path.exists() or require_frozen:
        verify_frozen_split(split, load_frozen_split(suite.id, scene.scene_id, root), root)
    return split


# ---------------------------------------------------------------- split files of a scene


def collect_split_files(folder: Path) -> dict[str, dict]:
    """Every ``train_test_split_{n}.json`` in ``folder``, checked and keyed by ``n`` (as a string), with the
    file name and its sha256: what a builder stores in the scene's meta under ``train_test_splits``."""
    found = {}
    for path in sorted(Path(folder).glob("train_test_split_*.json")):
        match = SPLIT_FILE_RE.match(path.name)
        if not match:
            continue
        raw = path.read_bytes()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from exc
        ids = {key: data.get(key) if isinstance(data, dict) else None for key in ("train_ids", "test_ids")}
        for key, values in ids.items():
            if not isinstance(values, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                       for i in values) or len(set(values)) != len(values):
                raise ValueError(f"{path}: {key} must be a list of distinct frame indices (integers >= 0), "
                                 f"got {values!r}")
        n = int(match.group(1))
        if len(ids["train_ids"]) != n:
            raise ValueError(f"{path}: {len(ids['train_ids'])} train_ids in a {n}-view split file")
        overlap = sorted(set(ids["train_ids"]) & set(ids["test_ids"]))
        if overlap:
            raise ValueError(f"{path}: frame {overlap[0]} is both a train and a test id")
        found[str(n)] = {**ids, "file": path.name, "sha256": hashlib.sha256(raw).hexdigest()}
    return found


def check_split_ids(stored: dict[str, dict], frames: int, where: str) -> None:
    """Refuse split files naming frames a scene of ``frames`` frames lacks."""
    for entry in stored.values():
        highest = max(entry["train_ids"] + entry["test_ids"], default=-1)
        if highest >= frames:
            raise ValueError(f"{where}: {entry['file']} names frame {highest}, but the scene has {frames} frames")


def read_scene_meta(root: Path, dataset: str, scene_id: str) -> dict:
    """A built scene's meta, read from its shard's scene sample alone (without decoding the frames)."""
    manifest = shards.read_manifest(root, dataset)
    entry = manifest["scenes"].get(scene_id)
    if entry is None:
        raise shards.ShardError(f"{shards.manifest_location(root, dataset)}: no scene {scene_id!r}")
    if shards.is_remote(root):
        shard = shards.local_shard(root, dataset, scene_id)
    else:
        shard = shards.dataset_dir(root, dataset) / entry["shard"]
    try:
        with tarfile.open(shard, "r") as tar:
            for member in tar:
                if member.name.endswith(f"/{shards.SCENE_SAMPLE}.scene.json"):
                    return json.loads(tar.extractfile(member).read())["meta"]
    except (tarfile.TarError, OSError, KeyError, ValueError) as exc:
        raise shards.ShardError(f"{shard}: unreadable scene sample: {exc}") from exc
    raise shards.ShardError(f"{shard}: the scene sample {shards.SCENE_SAMPLE!r} is missing")


def _split_file_hint(suite: SuiteSpec) -> str:
    from gfbench.specs import SpecError, list_suites, load_dataset

    try:
        source = load_dataset(suite.dataset).options.get("split_files", "")
    except SpecError:
        source = ""
    variant = f"{suite.id}-fsgs-rule"
    return (f"{' '.join(str(source).split())} " if source else "") + (
        f"Or run the variant suite {variant}, which spaces the views evenly (FSGS's rule) instead."
        if variant in list_suites() else "")


def missing_inputs(suite: SuiteSpec, meta: dict, scene_key: str) -> list[str]:
    """What a built scene (its ``meta``) lacks for ``suite``: the split file of a ``split-file`` protocol,
    or, for a distorted capture, the undistortion its dataset spec asks for."""
    problems = []
    protocol = parse_protocol(suite.protocol)
    if isinstance(protocol, SparseProtocol) and protocol.train_views == "split-file":
        name = split_file_name(protocol.n_views)
        if str(protocol.n_views) not in (meta.get(SPLIT_FILES_META) or {}):
            problems.append(
                f"scene {scene_key} was built without {name}, which suite {suite.id} reads its {protocol.n_views} "
                f"train views from. Put the file in the scene folder (or name its folder with --splits DIR) and "
                f"build the scene again. {_split_file_hint(suite)}".strip())
    wanted = suite.undistort
    provenance = meta.get("provenance") or {}
    if wanted and provenance.get("undistorted"):
        used = provenance.get("undistort", "keep-size")
        if used != wanted:
            problems.append(f"scene {scene_key} was undistorted with {used!r}, but the dataset spec of suite "
                            f"{suite.id} asks for {wanted!r}; build it again with --undistort {wanted}")
    return problems


def check_scene_inputs(pairs: Iterable[tuple[SuiteSpec, str]], root: Path) -> None:
    """Before any training: raise SceneInputMissing listing every (suite, scene) whose built scene lacks
    what the suite needs (see ``missing_inputs``)."""
    problems, metas = [], {}
    for suite, scene_id in pairs:
        key = (suite.dataset, scene_id)
        if key not in metas:
            metas[key] = read_scene_meta(root, *key)
        problems += missing_inputs(suite, metas[key], f"{suite.dataset}/{scene_id}")
    if problems:
        raise SceneInputMissing("\n".join(dict.fromkeys(problems)))
