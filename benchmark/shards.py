"""Scenes as WebDataset tar shards: one shard per scene, a manifest with counts and sha256 per dataset.

Layout under a data root::

    <root>/<dataset>/<scene>.tar       # the scene's samples, frames in name order, scene sample last
    <root>/<dataset>/manifest.json     # per scene: shard file, sha256, bytes, frame and point counts

Frames are stored in natural order of their names (numbers inside names compare as numbers).
Frame sample ``<dataset>/<scene>/<frame stem>``: ``image.png`` (or ``image.jpg``, the captured file itself,
when the frame's pixels are exactly its decode), ``camera.json`` (name, index, K, c2w, width,
height) and, when the frame has them, ``depth.npy`` (float32) and ``mask.png``. Scene sample
``<dataset>/<scene>/__scene__``: ``scene.json`` (ids, counts, meta) and ``points.npz``. The scene sample
comes last so that loaders inferring fields from the first samples (Hugging Face ``datasets``) see frames.

Crash consistency: a scene is either fully in (its shard and its manifest entry agree) or not at all, after a
crash or a full disk at any point of a build. The new shard is written and synced under a temporary name;
the manifest then records it as ``pending``; the shard is renamed into place; the manifest moves the entry
from ``pending`` to ``scenes``. A reader accepts the shard that matches either entry, so a crash between
two steps leaves the old scene (or none) or the new one, never a scene that reads as altered.

Remote roots: a data root may be a URL that WebDataset opens (``http(s)://...``, an fsspec URL such as
``s3://bucket/data``, or ``pipe:COMMAND`` where ``{path}`` in the command stands for ``<dataset>/<file>``).
The manifest is read from there and a shard is downloaded once into a local cache
(``$GFBENCH_SHARD_CACHE``, else ``~/.cache/gfbench/shards``), named by its sha256 and checked against the
manifest exactly as a shard on disk is (a mismatch is refused with the same message, naming the URL).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from gfbench.camera import Camera
from gfbench.scene import Frame, PointCloud, Scene, natural_sorted
from gfbench.storage import reporting_disk_full

FORMAT = "gfbench-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PENDING = "pending"  # manifest key: entries of shards being put in place (see the module docstring)
SCENE_SAMPLE = "__scene__"
SHARD_CACHE_ENV = "GFBENCH_SHARD_CACHE"
REMOTE_PREFIXES = ("http://", "https://", "pipe:")
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")  # dataset and scene ids name files and keys


class ShardError(RuntimeError):
    """A shard or manifest is missing, altered, truncated or malformed; the message names the file."""


# ---------------------------------------------------------------- encoding


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _points_bytes(points: PointCloud | None) -> bytes:
    buffer = io.BytesIO()
    cloud = points or PointCloud(np.zeros((0, 3)), np.zeros((0, 3)))
    np.savez(buffer, xyz=cloud.xyz, rgb=cloud.rgb, obs_point=cloud.obs_point, obs_frame=cloud.obs_frame,
             obs_uv=cloud.obs_uv)
    return buffer.getvalue()


def _decode_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))


def _image_member(frame: Frame) -> tuple[str, bytes]:
    """Keep a source JPEG only when decoding it gives back the frame's pixels exactly; else lossless PNG."""
    if frame.source_jpeg is not None and np.array_equal(_decode_rgb(frame.source_jpeg), frame.image):
        return "image.jpg", frame.source_jpeg
    return "image.png", _png_bytes(frame.image)


def frame_key(name: str) -> str:
    """The sample key part for a frame file name: its stem, with dots (which WebDataset reads as field
    separators) replaced by underscores."""
    return Path(name).stem.replace(".", "_")


def _frame_members(scene: Scene, index: int, frame: Frame) -> list[tuple[str, bytes]]:
    key = f"{scene.dataset}/{scene.scene_id}/{frame_key(frame.name)}"
    camera = {"name": frame.name, "index": index, **frame.camera.to_json()}
    field, data = _image_member(frame)
    members = [(f"{key}.{field}", data), (f"{key}.camera.json", json.dumps(camera).encode())]
    if frame.depth is not None:
        members.append((f"{key}.depth.npy", _npy_bytes(frame.depth.astype(np.float32))))
    if frame.mask is not None:
        members.append((f"{key}.mask.png", _png_bytes(frame.mask.astype(np.uint8) * 255)))
    return members


def _scene_members(scene: Scene) -> list[tuple[str, bytes]]:
    key = f"{scene.dataset}/{scene.scene_id}/{SCENE_SAMPLE}"
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dataset": scene.dataset,
        "scene": scene.scene_id,
        "frames": len(scene.frames),
        "frame_names": scene.frame_names,
        "points": len(scene.points) if scene.points is not None else None,
        "meta": scene.meta,
    }
    return [(f"{key}.scene.json", json.dumps(info, sort_keys=True).encode()), (f"{key}.points.npz", _points_bytes(scene.points))]


def _check_ids(scene: Scene) -> None:
    for label, value in (("dataset", scene.dataset), ("scene", scene.scene_id)):
        if not SAFE_ID.match(value):
            raise ValueError(f"{label} id {value!r} must be letters, digits, '_' or '-' (it names files and keys)")
    keys = [frame_key(f.name) for f in scene.frames]
    if len(set(keys)) != len(keys):
        clash = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"scene {scene.key}: frame names collide as sample keys: {clash[:5]}")


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A reproducible tar: fixed mtime, owner and mode, members in the given order; synced to disk."""
    with open(path, "wb") as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
        handle.flush()
        os.fsync(handle.fileno())


_VERIFIED: dict[tuple[int, ...], str] = {}  # file identity (see _verified_sha256) -> its sha256


def _verified_sha256(path: Path) -> str:
    """sha256 of a shard, hashed once per process while the file is unchanged: any write or rename changes
    its inode, size or change time (which no user can set back)."""
    stat = path.stat()
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_file(path)
    return _VERIFIED[key]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- remote roots (URLs)


def is_remote(root: Path | str | None) -> bool:
    """Whether a data root is a URL (http(s), ``pipe:``, or any ``scheme://`` fsspec reads) and not a folder."""
    text = str(root or "")
    return text.startswith(REMOTE_PREFIXES) or bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text))


def remote_url(root: str, dataset: str, name: str) -> str:
    """The URL of ``<dataset>/<name>`` under a remote root (a ``pipe:`` root names it with ``{path}``)."""
    if root.startswith("pipe:"):
        if "{path}" not in root:
            raise ShardError(f"{root}: a pipe: data root needs '{{path}}' where the file's <dataset>/<name> goes, "
                             f"e.g. 'pipe:aws s3 cp s3://bucket/data/{{path}} -'")
        return root.replace("{path}", f"{dataset}/{name}")
    return f"{root.rstrip('/')}/{dataset}/{name}"


def shard_cache_dir() -> Path:
    return Path(os.environ.get(SHARD_CACHE_ENV) or Path.home() / ".cache" / "gfbench" / "shards").expanduser()


@contextmanager
def _open_remote(url: str) -> Iterator:
    """A binary stream of ``url`` through WebDataset's opener (curl for http(s), the command for ``pipe:``),
    or fsspec for the schemes WebDataset has no opener for (s3://, az://...); any failure, including one
    reported when the stream closes, is a ShardError."""
    from urllib.parse import urlparse

    from webdataset.gopen import gopen, gopen_schemes

    try:
        if urlparse(url).scheme in gopen_schemes:
            stream = gopen(url, "rb")
        else:
            import fsspec

            stream = fsspec.open(url, "rb").open()
        try:
            yield stream
        finally:
            stream.close()
    except ShardError:
        raise
    except Exception as exc:  # curl, the pipe's command or fsspec failed: name the URL
        raise ShardError(f"{url}: could not be read: {exc}") from exc


def _read_remote_text(url: str) -> str:
    with _open_remote(url) as stream:
        return stream.read().decode()


def _download_verified(url: str, entry: dict) -> Path:
    """The shard at ``url`` in the local cache, checked against its manifest entry (size and sha256) with the
    messages of a shard on disk; a file that does not match is never kept."""
    cache = shard_cache_dir()
    cached = cache / f"{entry['sha256']}.tar"
    if cached.is_file() and cached.stat().st_size == entry["bytes"] and _verified_sha256(cached) == entry["sha256"]:
        return cached
    with reporting_disk_full(cache, "the shard cache"):
        cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".download-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle, _open_remote(url) as stream:
            with reporting_disk_full(cached, "a downloaded shard"):
                shutil.copyfileobj(stream, handle, 1 << 20)
        size = os.path.getsize(tmp)
        if size != entry["bytes"]:
            raise ShardError(f"{url}: {size} bytes, the manifest says {entry['bytes']} (truncated or altered)")
        if sha256_file(Path(tmp)) != entry["sha256"]:
            raise ShardError(f"{url}: sha256 differs from the manifest (altered or corrupted)")
        os.replace(tmp, cached)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return cached


# ---------------------------------------------------------------- manifest


def dataset_dir(root: Path, dataset: str) -> Path:
    return Path(root) / dataset


@contextmanager
def _manifest_lock(directory: Path) -> Iterator[None]:
    with open(directory / ".manifest.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make renames inside ``directory`` durable (a power cut cannot undo them after this)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def manifest_location(root: Path | str, dataset: str) -> Path | str:
    return remote_url(str(root), dataset, MANIFEST) if is_remote(root) else dataset_dir(root, dataset) / MANIFEST


def read_manifest(root: Path | str, dataset: str) -> dict:
    path = manifest_location(root, dataset)
    if is_remote(root):
        text = _read_remote_text(path)
    elif not path.exists():
        raise ShardError(f"{path}: no manifest; build the dataset first (gfbench build-data {dataset})")
    else:
        text = path.read_text()
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path}: manifest is not valid JSON: {exc}") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ShardError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} manifest")
    return manifest


def _pending_in_place(directory: Path, entry: dict) -> bool:
    """A pending entry whose shard was renamed into place before a crash (same size; the sha256 is checked
    when the scene is read)."""
    shard = directory / entry["shard"]
    return shard.is_file() and shard.stat().st_size == entry["bytes"]


def list_built_scenes(root: Path, dataset: str) -> list[str]:
    """Scenes with a shard in the manifest (empty when the dataset has not been built)."""
    try:
        manifest = read_manifest(root, dataset)
    except ShardError:
        return []
    if is_remote(root):  # a pending entry's shard cannot be looked at without downloading it
        return sorted(set(manifest["scenes"]) | set(manifest.get(PENDING, {})))
    directory = dataset_dir(root, dataset)
    pending = [scene for scene, entry in manifest.get(PENDING, {}).items() if _pending_in_place(directory, entry)]
    return sorted(set(manifest["scenes"]) | set(pending))


def _settle_crashed(directory: Path, manifest: dict, scene_id: str) -> dict:
    """Pop the pending entries; those of other scenes were left by a crashed build (a live build holds the
    manifest lock from its pending entry to its commit): keep the ones whose shard made it into place, drop
    the rest. Returns the pending entries still open (at most this scene's)."""
    waiting = manifest.pop(PENDING, {})
    for other in [s for s in waiting if s != scene_id]:
        entry = waiting.pop(other)
        if _pending_in_place(directory, entry) and sha256_file(directory / entry["shard"]) == entry["sha256"]:
            manifest["scenes"][other] = entry
    return waiting


def _update_manifest(directory: Path, dataset: str, scene_id: str, entry: dict, pending: bool) -> None:
    """Record ``entry`` for ``scene_id``: as pending (before its shard is renamed into place) or as the
    scene's entry (after, dropping the pending one)."""
    path = directory / MANIFEST
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.setdefault("format", FORMAT)
    manifest.setdefault("format_version", FORMAT_VERSION)
    manifest.setdefault("dataset", dataset)
    manifest.setdefault("scenes", {})
    waiting = _settle_crashed(directory, manifest, scene_id)
    if pending:
        waiting[scene_id] = entry
    else:
        waiting.pop(scene_id, None)
        manifest["scenes"][scene_id] = entry
    manifest["scenes"] = dict(sorted(manifest["scenes"].items()))
    if waiting:
        manifest[PENDING] = dict(sorted(waiting.items()))
    _atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------- write / read


def write_scene(scene: Scene, root: Path) -> Path:
    """Write ``scene`` as one shard under ``root/<dataset>/`` and record it in the manifest.

    Crash-safe and disk-full-safe (see the module docstring): the previous shard of the scene stays
    readable until the new one is complete. A full disk is a ``DiskFull`` naming the file."""
    if is_remote(root):
        raise ShardError(f"{root}: a URL data root is only read; build the scenes into a folder and upload it")
    _check_ids(scene)
    scene = dataclasses.replace(scene)  # a Scene sorts its frames: the shard is in natural name order
    directory = dataset_dir(root, scene.dataset)
    # PNG encoding dominates; zlib releases the GIL, so threads encode frames in parallel (order is kept).
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        encoded = pool.map(lambda item: _frame_members(scene, *item), enumerate(scene.frames))
        members = [m for frame_members in encoded for m in frame_members]
    members += _scene_members(scene)
    counts = {"frames": len(scene.frames), "points": len(scene.points) if scene.points is not None else 0,
              "samples": len(scene.frames) + 1}
    return write_shard(directory, scene.dataset, scene.scene_id, members, counts)


def write_shard(directory: Path, dataset: str, scene_id: str, members: list[tuple[str, bytes]],
                counts: dict) -> Path:
    """Write ``members`` as the shard ``<scene_id>.tar`` in ``directory`` and record it (with ``counts``) in the
    manifest, crash-safe and disk-full-safe as the module docstring says. Scene shards and diffusion-training
    clip shards (:mod:`gfbench.clips`) both go through here."""
    shard = directory / f"{scene_id}.tar"
    with reporting_disk_full(directory, "the dataset folder"):
        directory.mkdir(parents=True, exist_ok=True)
    unchanged = "nothing was changed (an earlier shard of the scene is intact)"
    tmp = None
    try:
        with reporting_disk_full(shard, "the shard", unchanged):
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{shard.name}.", suffix=".tmp")
            os.close(fd)
            _write_tar(Path(tmp), members)
        entry = {"shard": shard.name, "sha256": sha256_file(Path(tmp)), "bytes": os.path.getsize(tmp), **counts}
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; shards are meant to be shared
        with _manifest_lock(directory):
            with reporting_disk_full(directory / MANIFEST, "the manifest", unchanged):
                _update_manifest(directory, dataset, scene_id, entry, pending=True)
            os.replace(tmp, shard)
            tmp = None
            _sync_directory(directory)
            with reporting_disk_full(directory / MANIFEST, "the manifest",
                                     f"the new shard {shard.name} is in place and reads back (its entry is pending)"):
                _update_manifest(directory, dataset, scene_id, entry, pending=False)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return shard


def _verified_shard(root: Path | str, dataset: str, scene_id: str) -> tuple[Path, dict]:
    """The shard of a scene as a local file (downloaded first from a remote root), checked against the
    manifest, and its manifest entry."""
    manifest = read_manifest(root, dataset)
    candidates = [e for e in (manifest["scenes"].get(scene_id), manifest.get(PENDING, {}).get(scene_id)) if e]
    if not candidates:
        known = ", ".join(list_built_scenes(root, dataset)) or "none"
        raise ShardError(f"{manifest_location(root, dataset)}: no scene {scene_id!r} (built scenes: {known})")
    if is_remote(root):
        return _verified_remote(str(root), dataset, candidates)
    directory = dataset_dir(root, dataset)
    shard = directory / candidates[0]["shard"]
    if not shard.exists():
        raise ShardError(f"{shard}: listed in the manifest but missing")
    size = shard.stat().st_size
    sized = [e for e in candidates if e["bytes"] == size]
    if not sized:
        raise ShardError(f"{shard}: {size} bytes, the manifest says {candidates[0]['bytes']} (truncated or altered)")
    digest = _verified_sha256(shard)
    for entry in sized:
        if entry["sha256"] == digest:
            return shard, entry
    raise ShardError(f"{shard}: sha256 differs from the manifest (altered or corrupted)")


def _verified_remote(root: str, dataset: str, candidates: list[dict]) -> tuple[Path, dict]:
    """The first candidate entry (the scene's, then a pending one) whose shard downloads and matches."""
    url = remote_url(root, dataset, candidates[0]["shard"])
    first_error = None
    for entry in candidates:
        try:
            return _download_verified(url, entry), entry
        except ShardError as exc:
            first_error = first_error or exc
    raise first_error


def local_shard(root: Path | str, dataset: str, scene_id: str) -> Path:
    """A built scene's shard as a local file checked against the manifest (downloaded from a remote root)."""
    return _verified_shard(root if is_remote(root) else Path(root), dataset, scene_id)[0]


def scene_sha256(root: Path | str, dataset: str, scene_id: str) -> str:
    """The sha256 of a built scene's shard, checked against the manifest (it keys every result record)."""
    return _verified_shard(root if is_remote(root) else Path(root), dataset, scene_id)[1]["sha256"]


def _read_members(shard: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(shard, "r") as tar:
            for member in tar:
                key, _, field = member.name.rpartition("/")[2].partition(".")
                prefix = member.name.rpartition("/")[0]
                samples.setdefault(f"{prefix}/{key}", {})[field] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as exc:
        raise ShardError(f"{shard}: unreadable tar: {exc}") from exc
    return samples


def read_samples(root: Path, dataset: str, scene_id: str) -> tuple[dict[str, dict[str, bytes]], dict]:
    """The samples of a shard (key -> field -> bytes, in stored order) and its manifest entry, after checking
    the shard against the manifest (size and sha256)."""
    shard, entry = _verified_shard(Path(root), dataset, scene_id)
    return _read_members(shard), entry


def _decode_frame(sample: dict[str, bytes]) -> Frame:
    camera = json.loads(sample["camera.json"])
    image = _decode_rgb(sample["image.jpg"] if "image.jpg" in sample else sample["image.png"])
    depth = np.load(io.BytesIO(sample["depth.npy"]), allow_pickle=False) if "depth.npy" in sample else None
    mask = np.array(Image.open(io.BytesIO(sample["mask.png"]))) > 127 if "mask.png" in sample else None
    return Frame(name=camera["name"], image=image, camera=Camera.from_json(camera), depth=depth, mask=mask)


def _decode_points(data: bytes) -> PointCloud:
    arrays = np.load(io.BytesIO(data), allow_pickle=False)
    return PointCloud(**{name: arrays[name] for name in ("xyz", "rgb", "obs_point", "obs_frame", "obs_uv")})


def read_scene(root: Path | str, dataset: str, scene_id: str) -> Scene:
    """Read a scene back, after checking its shard against the manifest (size and sha256)."""
    shard, entry = _verified_shard(root if is_remote(root) else Path(root), dataset, scene_id)
    samples = _read_members(shard)
    scene_sample = samples.pop(f"{dataset}/{scene_id}/{SCENE_SAMPLE}", None)
    if scene_sample is None or "scene.json" not in scene_sample or "points.npz" not in scene_sample:
        raise ShardError(f"{shard}: the scene sample {SCENE_SAMPLE!r} is missing or incomplete")
    try:
        info = json.loads(scene_sample["scene.json"])
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # image decoding releases the GIL
            frames = list(pool.map(_decode_frame, samples.values()))
        points = _decode_points(scene_sample["points.npz"])
    except (KeyError, ValueError, OSError) as exc:
        raise ShardError(f"{shard}: malformed sample: {exc}") from exc
    if len(frames) != entry["frames"] or len(frames) != info["frames"]:
        raise ShardError(f"{shard}: {len(frames)} frames, the manifest says {entry['frames']}")
    stored = [frame.name for frame in frames]
    if stored != natural_sorted(stored):
        raise ShardError(f"{shard}: frames are not stored in natural name order (built by an older gfbench, which "
                         "sorted names as plain strings); rebuild the scene so that frame indices follow the names' "
                         "numbers")
    return Scene(
        dataset=dataset,
        scene_id=scene_id,
        frames=frames,
        points=points if info["points"] is not None else None,
        meta=info["meta"],
    )
