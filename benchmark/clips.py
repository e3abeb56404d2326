"""Diffusion training clips (issue 15): the data that teaches GenFusion's video prior to repair reconstructions.

For each scene of a ``corner``-protocol suite and each of its seeds, a method (2DGS by default) reconstructs the
scene from the corner patches only, then renders every frame of the capture trajectory whole; those renders are
artifact-prone wherever the corner never looked. Windows of consecutive frames (``clip.frames``, every
``clip.stride`` frames) become clips holding:

- ``artifact_rgb`` / ``artifact_depth``: the reconstruction's render (RGB uint8, depth float32);
- ``target_rgb`` / ``target_depth``: the captured frames and their ground-truth depth;
- ``reference``: one captured frame of the window, drawn from the seed (the image GenFusion conditions on).

Every frame is centre-cropped to the clip's aspect ratio and then resized to ``clip.width`` x ``clip.height``
(area-averaged RGB, nearest-neighbour depth, so no depth is invented across an edge), as the official training
loaders do (resize after a crop to the target aspect). Clips are WebDataset shards, one per scene, with a
manifest, written by :func:`gfbench.shards.write_shard` (crash-safe). Sample ``<set>/<scene>/s<seed>_c<start>``:
``artifact_rgb.npy``, ``artifact_depth.npy``, ``target_rgb.npy``, ``target_depth.npy``, ``reference.png`` and
``clip.json`` (scene, its shard's sha256, method, preset, seed, corner, frame indices and names, reference).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from gfbench import shards
from gfbench.scene import Scene

CLIP_FIELDS = ("artifact_rgb", "artifact_depth", "target_rgb", "target_depth")


class ClipError(RuntimeError):
    """Bad clip settings, a clip folder built with other settings, or a scene that cannot make clips."""


@dataclass(frozen=True)
class ClipSettings:
    frames: int
    width: int
    height: int
    stride: int

    @classmethod
    def from_protocol(cls, protocol: dict, where: str) -> "ClipSettings":
        block = protocol.get("clip") or {}
        try:
            frames, width, height = int(block["frames"]), int(block["width"]), int(block["height"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ClipError(f"{where}: protocol.clip needs integer frames, width and height, got {block!r}") from exc
        stride = int(block.get("stride", frames))
        if min(frames, width, height, stride) < 1:
            raise ClipError(f"{where}: protocol.clip frames, width, height and stride must be >= 1, got {block!r}")
        return cls(frames, width, height, stride)


@dataclass
class Clip:
    """One clip read back: arrays as stored and the ``clip.json`` record."""

    artifact_rgb: np.ndarray  # [T, H, W, 3] uint8
    artifact_depth: np.ndarray  # [T, H, W] float32
    target_rgb: np.ndarray
    target_depth: np.ndarray
    reference: np.ndarray  # [H, W, 3] uint8
    info: dict


# ---------------------------------------------------------------- frames


def aspect_crop_box(width: int, height: int, aspect: float) -> tuple[int, int, int, int]:
    """The largest centred (x, y, w, h) box of ``aspect`` = w / h inside a width x height frame."""
    if width / height > aspect:
        w = max(1, round(height * aspect))
        return (width - w) // 2, 0, w, height
    h = max(1, round(width / aspect))
    return 0, (height - h) // 2, width, h


def fit_rgb(image: np.ndarray, width: int, height: int) -> np.ndarray:
    x, y, w, h = aspect_crop_box(image.shape[1], image.shape[0], width / height)
    crop = Image.fromarray(np.ascontiguousarray(image[y:y + h, x:x + w]))
    return np.asarray(crop.resize((width, height), Image.Resampling.BOX if w >= width else Image.Resampling.BILINEAR))


def fit_depth(depth: np.ndarray, width: int, height: int) -> np.ndarray:
    x, y, w, h = aspect_crop_box(depth.shape[1], depth.shape[0], width / height)
    crop = Image.fromarray(np.ascontiguousarray(depth[y:y + h, x:x + w], dtype=np.float32), mode="F")
    return np.asarray(crop.resize((width, height), Image.Resampling.NEAREST), dtype=np.float32)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def clip_windows(num_frames: int, settings: ClipSettings) -> list[list[int]]:
    """Frame indices of each clip: windows of ``frames`` consecutive frames starting every ``stride``."""
    if num_frames < settings.frames:
        raise ClipError(f"a scene of {num_frames} frames is shorter than a clip ({settings.frames} frames)")
    return [list(range(start, start + settings.frames))
            for start in range(0, num_frames - settings.frames + 1, settings.stride)]


# ---------------------------------------------------------------- building


def make_clips(scene: Scene, renders: list, settings: ClipSettings, *, seed: int, info: dict) -> list[dict]:
    """The clips of one reconstruction: ``renders`` (one :class:`gfbench.methods.Render` per frame of
    ``scene``, with depth) cut into windows with the captured frames as targets."""
    if len(renders) != len(scene.frames):
        raise ClipError(f"scene {scene.key}: {len(renders)} renders for {len(scene.frames)} frames")
    if any(r.depth is None for r in renders):
        raise ClipError(f"scene {scene.key}: the method's renders have no depth (clips need RGB-D)")
    if any(f.depth is None for f in scene.frames):
        raise ClipError(f"scene {scene.key}: frames without ground-truth depth; clips need target depth "
                        "(a depth-prior target is not implemented yet)")
    size = (settings.width, settings.height)
    rng = np.random.default_rng([seed, *scene.scene_id.encode()])
    clips = []
    for window in clip_windows(len(scene.frames), settings):
        reference = int(rng.choice(window))
        clips.append({
            "key": f"s{seed}_c{window[0]:05d}",
            "artifact_rgb": np.stack([fit_rgb(to_uint8(renders[k].rgb), *size) for k in window]),
            "artifact_depth": np.stack([fit_depth(renders[k].depth, *size) for k in window]),
            "target_rgb": np.stack([fit_rgb(scene.frames[k].image, *size) for k in window]),
            "target_depth": np.stack([fit_depth(scene.frames[k].depth, *size) for k in window]),
            "reference": fit_rgb(scene.frames[reference].image, *size),
            "info": {**info, "seed": seed, "frame_indices": window,
                     "frame_names": [scene.frames[k].name for k in window], "reference_index": reference},
        })
    return clips


def clip_members(set_id: str, scene_id: str, clips: list[dict]) -> list[tuple[str, bytes]]:
    members = []
    for clip in clips:
        key = f"{set_id}/{scene_id}/{clip['key']}"
        for field in CLIP_FIELDS:
            members.append((f"{key}.{field}.npy", shards._npy_bytes(clip[field])))
        members.append((f"{key}.reference.png", shards._png_bytes(clip["reference"])))
        members.append((f"{key}.clip.json", json.dumps(clip["info"], sort_keys=True).encode()))
    return members


def write_scene_clips(directory: Path, scene_id: str, clips: list[dict], identity: dict) -> Path:
    """One scene's clips as ``<directory>/<scene>.tar``, recorded in ``<directory>/manifest.json``."""
    counts = {"clips": len(clips), "samples": len(clips), **identity}
    return shards.write_shard(Path(directory), Path(directory).name, scene_id, clip_members(Path(directory).name,
                                                                                            scene_id, clips), counts)


def built_scenes(directory: Path, identity: dict) -> list[str]:
    """Scenes already in the clip folder with this build's identity (method, preset, seeds, clip settings);
    ClipError for a scene built with another identity (a folder holds one kind of clip)."""
    directory = Path(directory)
    done = shards.list_built_scenes(directory.parent, directory.name)
    if not done:
        return []
    entries = shards.read_manifest(directory.parent, directory.name)
    all_entries = {**entries.get(shards.PENDING, {}), **entries["scenes"]}
    for scene_id in done:
        theirs = {k: all_entries[scene_id].get(k) for k in identity}
        if theirs != identity:
            raise ClipError(f"{directory / shards.MANIFEST}: scene {scene_id} was built with {theirs}, this build is "
                            f"{identity}; use another --out folder (clips of different builds are never mixed)")
    return done


def read_clips(directory: Path, scene_id: str) -> list[Clip]:
    """The clips of one scene, after checking its shard against the manifest."""
    directory = Path(directory)
    samples, entry = shards.read_samples(directory.parent, directory.name, scene_id)
    clips = []
    for key, sample in samples.items():
        try:
            arrays = {f: np.load(io.BytesIO(sample[f"{f}.npy"]), allow_pickle=False) for f in CLIP_FIELDS}
            reference = shards._decode_rgb(sample["reference.png"])
            info = json.loads(sample["clip.json"])
        except (KeyError, ValueError, OSError) as exc:
            raise shards.ShardError(f"{directory / entry['shard']}: clip {key}: malformed sample: {exc}") from exc
        clips.append(Clip(reference=reference, info=info, **arrays))
    if len(clips) != entry["clips"]:
        raise shards.ShardError(f"{directory / entry['shard']}: {len(clips)} clips, the manifest says {entry['clips']}")
    return clips


def read_clip_folder(directory: Path) -> list[Clip]:
    """Every clip of a clip folder, scenes in name order."""
    directory = Path(directory)
    scenes = shards.list_built_scenes(directory.parent, directory.name)
    if not scenes:
        raise ClipError(f"{directory}: no clip shards (build them with 'gfbench build-data clips --suite S --out "
                        f"{directory}')")
    return [clip for scene_id in scenes for clip in read_clips(directory, scene_id)]


# ---------------------------------------------------------------- reconstruction


def reconstruct(scene: Scene, suite, *, method: str, preset: str, seed: int, device: str, workdir: Path,
                progress: Callable | None = None) -> tuple[list, dict]:
    """Fit ``method`` on the corner split of ``scene`` and render every frame whole; returns the renders and the
    split's info (corner, train indices)."""
    from gfbench import methods as method_registry
    from gfbench.priors import Priors
    from gfbench.splits import split_for_run

    split = split_for_run(suite, scene, seed=seed)
    cls = method_registry.load_method_class(method)
    presets = method_registry.method_presets(method, cls)
    config = presets.config(preset) if presets.presets else {}
    instance = cls(device=device)
    extra = {"priors": Priors({})} if method_registry.accepts_priors(instance.fit) else {}
    workdir.mkdir(parents=True, exist_ok=True)
    instance.fit(split.train, points=split.points, config=config, seed=seed, workdir=workdir, progress=progress,
                 **extra)
    renders = instance.render([frame.camera for frame in scene.frames])
    return renders, split.info


def build_clips(suite, out: Path, *, method: str = "2dgs", preset: str | None = None, device: str = "cpu",
                data: Path | None = None, scenes: list[str] | None = None,
                on_fitted: Callable[[str, int], None] | None = None,
                on_step: Callable | None = None) -> list[Path]:
    """Clips for every scene (and seed) of a corner-protocol ``suite`` into the folder ``out``; scenes already
    there with the same build identity are skipped (resumable per scene). ``on_fitted(scene, seed)`` follows
    each reconstruction (and each one a skipped scene already has)."""
    import tempfile

    from gfbench.data import load_scene
    from gfbench.paths import data_root

    if suite.protocol.get("type") != "corner":
        raise ClipError(f"{suite.path}: clips need a corner protocol, this suite's is {suite.protocol.get('type')!r}")
    settings = ClipSettings.from_protocol(suite.protocol, str(suite.path))
    preset = preset or suite.preset
    identity = {"suite": suite.id, "method": method, "preset": preset, "seeds": list(suite.seeds),
                "clip": [settings.frames, settings.width, settings.height, settings.stride]}
    done = set(built_scenes(out, identity))
    written = []
    root = data_root(data)
    for scene_id in scenes or suite.scenes:
        if scene_id in done:
            for seed in suite.seeds if on_fitted else ():
                on_fitted(scene_id, seed)
            continue
        scene = load_scene(suite.dataset, scene_id, root)
        source = {"dataset": suite.dataset, "scene": scene_id,
                  "scene_sha256": shards.scene_sha256(root, suite.dataset, scene_id),
                  "method": method, "preset": preset, "suite": suite.id}
        clips = []
        for seed in suite.seeds:
            with tempfile.TemporaryDirectory(prefix="gfbench-clips-") as workdir:
                renders, split_info = reconstruct(scene, suite, method=method, preset=preset, seed=seed,
                                                  device=device, workdir=Path(workdir), progress=on_step)
            info = {**source, "corner": split_info.get("corner"), "train_indices": split_info["train_indices"]}
            clips += make_clips(scene, renders, settings, seed=seed, info=info)
            if on_fitted:
                on_fitted(scene_id, seed)
        written.append(write_scene_clips(out, scene_id, clips, identity))
    return written
