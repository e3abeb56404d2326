"""The benchmark datasets with known layouts (DL3DV benchmark, Tanks and Temples, Mip-NeRF 360), and DL3DV
from the Hugging Face hub.

Scene lists, the image folder, the expected frame size and the undistortion come from
``datasets/<id>.yaml``. Layouts are found tolerantly under ``--source``:

- DL3DV: ``<hash>/`` (also one level down, e.g. ``1K/<hash>/``) holding, in order of preference:
  GenFusion's preprocessed release (``GenFusion_DL3DV_24Benchmark``), read where the official loader reads
  it: ``<hash>/nerfstudio/colmap/sparse/0`` or ``<hash>/nerfstudio/sparse/0`` with
  ``<hash>/nerfstudio/images_4``; then a COLMAP model (``sparse/0`` or ``sparse``) in the scene folder or its
  ``colmap/``, ``gaussian_splat/`` subfolder with ``images_4`` beside it (or in the scene folder); else a
  ``transforms.json`` with ``images_4`` beside it (the raw benchmark's ``<hash>/nerfstudio/`` layout).
- Tanks and Temples: ``<scene>/`` or ``tandt/<scene>/`` (3DGS's archive; names match case-insensitively,
  and nerfbaselines' ``<scene>_2down`` folders too) with ``images`` and ``sparse/0``.
- Mip-NeRF 360: ``<scene>/`` or ``360_v2/<scene>/`` with the spec's image folder and ``sparse/0``.

Split files (``train_test_split_{n}.json``, ReconFusion's) in a scene folder, or in ``<splits>/<scene>/``
when a splits folder is named, are stored in the shard (see ``gfbench.splits.collect_split_files``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from gfbench.builders.colmap import find_model, has_model, read_colmap_capture
from gfbench.builders.common import BuildError, Capture, build_and_write
from gfbench.builders.nerfstudio import TRANSFORMS, read_nerfstudio_capture
from gfbench.paths import data_root
from gfbench.protocols import SPLIT_FILES_META
from gfbench.specs import DatasetSpec, SpecError, load_dataset
from gfbench.splits import check_split_ids, collect_split_files

HUB_TIMEOUT_S = 10.0
DL3DV_OFFICIAL = ("nerfstudio/colmap", "nerfstudio")  # the official loader: <data_dir>/colmap/sparse/0, else sparse/0
DL3DV_SUBFOLDERS = (".", "colmap", "gaussian_splat", "nerfstudio")


# ---------------------------------------------------------------- finding scene folders


def _child(parent: Path, names: tuple[str, ...]) -> Path | None:
    """The sub-folder of ``parent`` whose name is one of ``names``, compared case-insensitively."""
    if not parent.is_dir():
        return None
    wanted = {name.lower() for name in names}
    matches = sorted(p for p in parent.iterdir() if p.is_dir() and p.name.lower() in wanted)
    return matches[0] if matches else None


def _scene_folder(source: Path, names: tuple[str, ...], parents: list[Path]) -> Path | None:
    """``source`` itself when its name is one of ``names``, else the first match in ``parents``."""
    if source.name.lower() in {name.lower() for name in names}:
        return source
    return next((found for parent in parents if (found := _child(parent, names))), None)


def _subfolders(source: Path) -> list[Path]:
    return sorted(p for p in source.iterdir() if p.is_dir())


def dl3dv_capture(scene_dir: Path, images: str, layout: str = "dl3dv") -> Capture:
    """A DL3DV scene: GenFusion's preprocessed layout, else a COLMAP model with ``images`` beside it, else
    ``transforms.json`` with ``images``."""
    official_images = scene_dir / "nerfstudio" / images
    for sub in DL3DV_OFFICIAL:
        model = scene_dir / sub / "sparse" / "0"
        if has_model(model) and official_images.is_dir():
            return read_colmap_capture(model, official_images, scene_dir, f"{layout}/genfusion")
    for sub in DL3DV_SUBFOLDERS:
        folder = scene_dir / sub
        if has_model(folder / "sparse" / "0") or has_model(folder / "sparse"):
            for image_dir in (folder / images, scene_dir / images):
                if image_dir.is_dir():
                    return read_colmap_capture(find_model(folder), image_dir, scene_dir, f"{layout}/colmap")
    for sub in DL3DV_SUBFOLDERS:
        folder = scene_dir / sub
        if (folder / TRANSFORMS).is_file() and (folder / images).is_dir():
            return read_nerfstudio_capture(folder, images, f"{layout}/nerfstudio")
    raise BuildError(
        f"{scene_dir}: no DL3DV capture found: looked for sparse/0 (or sparse) with {images}/, then "
        f"{TRANSFORMS} with {images}/, in the scene folder and its {', '.join(DL3DV_SUBFOLDERS[1:])} subfolders"
    )


def _colmap_scene(images: str, layout: str) -> Callable[[Path], Capture]:
    def read(scene_dir: Path) -> Capture:
        return read_colmap_capture(find_model(scene_dir), scene_dir / images, scene_dir, layout)
    return read


def _layout(spec: DatasetSpec) -> tuple[Callable[[Path, str], Path | None], Callable[[Path], Capture]]:
    """(find the scene folder under a source, read a scene folder) for a known dataset."""
    images = spec.options.get("images", "images")
    if spec.id == "dl3dv":
        return (lambda source, scene: _scene_folder(source, (scene,), [source, *_subfolders(source)]),
                lambda scene_dir: dl3dv_capture(scene_dir, images))
    if spec.id == "tnt":
        return (lambda source, scene: _scene_folder(source, (scene, f"{scene}_2down"), [source, source / "tandt"]),
                _colmap_scene(images, "tnt/colmap"))
    if spec.id == "mipnerf360":
        return (lambda source, scene: _scene_folder(source, (scene,), [source, source / "360_v2"]),
                _colmap_scene(images, "mipnerf360/colmap"))
    raise BuildError(f"{spec.path}: dataset {spec.id!r} has no known layout (known: dl3dv, tnt, mipnerf360)")


def locate_scenes(spec: DatasetSpec, source: Path, scenes: list[str] | None = None) -> dict[str, Path]:
    """Scene id -> folder under ``source`` for the chosen scenes (default: all of the spec's); every scene
    missing is reported at once, before anything is built."""
    chosen = list(scenes or spec.scenes)
    unknown = [s for s in chosen if s not in spec.scenes]
    if unknown:
        raise BuildError(f"{spec.path}: no scene {unknown[0]!r} in dataset {spec.id!r} "
                         f"(scenes: {', '.join(spec.scenes)})")
    if not source.is_dir():
        raise BuildError(f"{source}: source folder not found")
    find, _ = _layout(spec)
    found = {scene: find(source, scene) for scene in chosen}
    missing = [scene for scene, folder in found.items() if folder is None]
    if missing:
        raise BuildError(f"{source}: {len(missing)} of {len(chosen)} {spec.id} scenes not found: "
                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                         "(pass --scene to build only the scenes you have)")
    return found


def split_files_meta(folder: Path, frames: int, where: str) -> dict:
    """``{"train_test_splits": {...}}`` for a scene's meta from the split files in ``folder`` (empty when
    there are none); a malformed file, or one naming frames the scene lacks, is a BuildError."""
    try:
        stored = collect_split_files(folder)
        check_split_ids(stored, frames, where)
    except ValueError as exc:
        raise BuildError(str(exc)) from exc
    return {SPLIT_FILES_META: stored} if stored else {}


def _split_folder(scene: str, scene_dir: Path, splits: Path | None) -> Path:
    if splits is None:
        return scene_dir
    folder = Path(splits) / scene
    if not folder.is_dir():
        raise BuildError(f"{folder}: no split files for scene {scene!r} (--splits names a folder holding "
                         "<scene>/train_test_split_{n}.json)")
    return folder


def build_known(dataset_id: str, source: Path, scenes: list[str] | None = None, out: Path | None = None,
                progress: bool = False, undistort: str | None = None, splits: Path | None = None,
                notes: list[str] | None = None) -> list[Path]:
    """Build the chosen scenes of a known dataset from a local copy at ``source``; one shard per scene.

    ``undistort`` defaults to the spec's ``options.undistort`` (else ``keep-size``). Split files come from each
    scene folder, or from ``<splits>/<scene>/``; where the spec names ``options.split_files`` (their source)
    and a scene has none, a line saying so is appended to ``notes``."""
    try:
        spec = load_dataset(dataset_id)
    except SpecError as exc:
        raise BuildError(str(exc)) from exc
    undistort = undistort or spec.options.get("undistort", "keep-size")
    folders = locate_scenes(spec, Path(source), scenes)
    split_dirs = {scene: _split_folder(scene, folder, splits) for scene, folder in folders.items()}
    _, read = _layout(spec)
    written = []
    for scene, folder in tqdm(folders.items(), unit="scene", desc=dataset_id, disable=not progress):
        capture = read(folder)
        capture.provenance["dataset_spec"] = f"{spec.id} v{spec.version}"
        extra = split_files_meta(split_dirs[scene], len(capture.frames), f"{dataset_id}/{scene}")
        if not extra and spec.options.get("split_files") and notes is not None:
            notes.append(f"{dataset_id}/{scene}: no train_test_split_{{n}}.json in {split_dirs[scene]}; the suites "
                         f"that read them will refuse this scene. {' '.join(str(spec.options['split_files']).split())}")
        written.append(build_and_write(spec.id, scene, capture, data_root(out), progress=progress,
                                       expect_size=spec.resolution, undistort=undistort, extra_meta=extra))
    return written


# ---------------------------------------------------------------- the hub


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return flag or bool(constants.HF_HUB_OFFLINE)


def _hub_failure(repo: str, endpoint: str, problem: str) -> BuildError:
    return BuildError(f"cannot download {repo} from the Hugging Face hub at {endpoint}: {problem}. Download it "
                      "elsewhere and pass the local copy with --source PATH")


def download_dl3dv(scenes: list[str] | None = None, token: str | None = None, local_dir: Path | None = None,
                   timeout: float = HUB_TIMEOUT_S) -> Path:
    """Download the chosen DL3DV scenes (``images_4``, COLMAP models and ``transforms.json`` only) from the
    gated hub repo named in the spec; returns the local folder to build from.

    Fails fast, never hangs: offline mode is checked first, then the endpoint is probed with a short timeout
    before ``snapshot_download`` runs (which has no timeout of its own on its first request)."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    spec = load_dataset("dl3dv")
    repo = spec.options["hub_repo"]
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    if _hub_offline():
        raise _hub_failure(repo, endpoint, "the hub is unreachable from here (HF_HUB_OFFLINE is set)")
    chosen = list(scenes or spec.scenes)
    try:
        HfApi(endpoint=endpoint, token=token).dataset_info(repo, timeout=timeout)
    except RepositoryNotFoundError as exc:
        raise _hub_failure(repo, endpoint, f"repository not found or not visible with this token ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - connection, timeout, TLS and HTTP errors all mean "unreachable"
        raise _hub_failure(repo, endpoint, f"the hub is unreachable ({type(exc).__name__}: {exc})") from exc
    patterns = [f"{h}/{pattern}" for h in chosen for pattern in ("*images_4/*", "*sparse/*", f"*{TRANSFORMS}")]
    try:
        folder = snapshot_download(repo, repo_type="dataset", allow_patterns=patterns, token=token,
                                   local_dir=local_dir, endpoint=endpoint, etag_timeout=timeout)
    except GatedRepoError as exc:
        raise _hub_failure(repo, endpoint, "the dataset is gated: accept its terms on the hub and pass --token "
                           "(or log in with `hf auth login`)") from exc
    except Exception as exc:  # noqa: BLE001
        raise _hub_failure(repo, endpoint, f"the download failed ({type(exc).__name__}: {exc})") from exc
    return Path(folder)
