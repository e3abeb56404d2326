"""Monocular depth priors: ``predict(images) -> relative inverse depth maps``.

- :class:`TransformersDepthPrior`: a Hugging Face transformers depth model saved in a local folder
  (``AutoModelForDepthEstimation`` + ``AutoImageProcessor``): Depth Anything (V1 and V2, model type
  ``depth_anything``) and DPT (``dpt``), the two FSGS and its successors use. Their outputs are relative
  inverse depth (larger is nearer); a Depth Anything checkpoint trained for metric depth is inverted.
- :class:`OracleDepthPrior`: the dataset's own stored depth of the scene's train images, inverted. It is the
  prior named ``oracle``, allowed only where the suite says ``allow_oracle_depth: true``; records and
  leaderboards label it. It knows only those images (``novel_images`` is False): a render of a new camera has
  no stored depth.
- :class:`SceneDepthPrior`: what a method gets, a prior bound to one scene whose predictions are cached on disk
  per scene, keyed by the prior's hash and the image's bytes.

The folder is named by ``--depth-prior PATH`` or ``$GFBENCH_DEPTH_PRIOR`` (``oracle`` names the oracle; write
``./oracle`` for a folder called so), else by the suite's ``default_priors`` (a shipped prior). Resolution checks
the folder before any training: the files ``save_pretrained`` writes, a supported model type; the runner loads it
once before the first job.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gfbench.priors import (ORACLE, PriorError, PriorKind, PriorSource, folder_fingerprint, register_kind,
                            resolve_prior_folder)

ENV_VAR = "GFBENCH_DEPTH_PRIOR"
FLAG = "--depth-prior"
WHAT = "depth prior"
KIND = "depth"
REQUIRED_FILES = ("config.json", "preprocessor_config.json")
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)
MODEL_TYPES = ("depth_anything", "dpt")

Image = Any  # HxWx3: numpy uint8, or numpy / torch float in [0, 1]


class DepthPrior:
    """The interface: ``predict(images)`` returns one HxW float32 relative inverse depth map per image (larger =
    nearer, defined up to scale and shift), at the image's size. ``source`` names the prior for records;
    ``novel_images`` says whether it can predict images it has not been built with (renders of new cameras)."""

    source: PriorSource
    novel_images: bool = True

    def predict(self, images: Sequence[Image]) -> list[np.ndarray]:
        raise NotImplementedError


def as_uint8_or_float(image: Image) -> np.ndarray:
    """A numpy HxWx3 copy of ``image``: uint8 stays uint8, floats (numpy or torch, in [0, 1]) become float32."""
    if hasattr(image, "detach"):
        image = image.detach().float().cpu().numpy()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"depth prior: expected an HxWx3 image, got shape {array.shape}")
    return array if array.dtype == np.uint8 else array.astype(np.float32)


def image_key(image: Image) -> str:
    """sha256 of an image's dtype, shape and pixels: the cache key of its prediction."""
    array = np.ascontiguousarray(as_uint8_or_float(image))
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- resolution (planning time)


def requested(value: str | None) -> str | None:
    """What a run names as its depth prior: the flag's value, else ``$GFBENCH_DEPTH_PRIOR``, else None."""
    return value or os.environ.get(ENV_VAR) or None


def resolve_source(value: str | None, *, suite_id: str, allow_oracle: bool) -> PriorSource:
    """The depth prior a run names (``value`` or the environment variable), checked without loading weights:
    ``oracle`` only where the suite allows it; a folder must hold what ``save_pretrained`` writes for a
    supported model type. A :class:`PriorError` says what is wrong and how to fix it."""
    named = requested(value)
    if named == ORACLE:
        if not allow_oracle:
            raise PriorError(f"{WHAT}: suite {suite_id!r} does not allow the 'oracle' depth prior (the dataset's "
                             f"own depth): a suite opts in with 'allow_oracle_depth: true'; name a depth model "
                             f"folder instead ({FLAG} PATH)")
        return PriorSource(kind=KIND, name=ORACLE)
    folder = resolve_prior_folder(value, env_var=ENV_VAR, what=WHAT, flag=FLAG, required_files=REQUIRED_FILES)
    if not any((folder / name).exists() for name in WEIGHT_FILES):
        raise PriorError(f"{WHAT}: {folder} has no weights ({' or '.join(WEIGHT_FILES[::2])}); expected a folder "
                         f"saved with save_pretrained()")
    model_type = _model_type(folder)
    if model_type not in MODEL_TYPES:
        raise PriorError(f"{WHAT}: {folder / 'config.json'} has model_type {model_type!r}; supported depth models: "
                         f"{', '.join(MODEL_TYPES)} (Depth Anything V1/V2, DPT)")
    return PriorSource(kind=KIND, name=folder.name, path=str(folder.resolve()), files_sha256=folder_fingerprint(folder))


def _model_type(folder: Path) -> str | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PriorError(f"{WHAT}: {folder / 'config.json'} is not readable JSON: {exc}") from exc
    return config.get("model_type") if isinstance(config, dict) else None


# ---------------------------------------------------------------- the transformers backend


class TransformersDepthPrior(DepthPrior):
    """A transformers depth model (Depth Anything, DPT) loaded from its local folder, run in float32 on
    ``device``; each image goes through the folder's image processor and the prediction is resized back to
    the image's size (bicubic, the processor's ``post_process_depth_estimation``)."""

    def __init__(self, source: PriorSource, device: str = "cpu"):
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.source, self.device = source, device
        try:
            self.processor = AutoImageProcessor.from_pretrained(source.path, local_files_only=True)
            self.model = AutoModelForDepthEstimation.from_pretrained(source.path, local_files_only=True).eval()
        except Exception as exc:  # transformers raises many kinds for a broken folder
            raise PriorError(f"{WHAT}: {source.path} cannot be loaded by transformers: {type(exc).__name__}: "
                             f"{exc}") from exc
        self.model.to(device)
        self.metric = getattr(self.model.config, "depth_estimation_type", "relative") == "metric"

    def to(self, device: str) -> "TransformersDepthPrior":
        if device != self.device:
            self.model.to(device)
            self.device = device
        return self

    def predict(self, images: Sequence[Image]) -> list[np.ndarray]:
        import torch

        maps = []
        with torch.no_grad():
            for image in images:
                array = as_uint8_or_float(image)
                pixels = array if array.dtype == np.uint8 else array * 255.0
                inputs = self.processor(images=pixels, return_tensors="pt", input_data_format="channels_last")
                outputs = self.model(pixel_values=inputs["pixel_values"].to(self.device))
                (result,) = self.processor.post_process_depth_estimation(outputs, target_sizes=[array.shape[:2]])
                depth = result["predicted_depth"].reshape(array.shape[:2]).float()
                if self.metric:
                    depth = 1.0 / depth.clamp_min(1e-6)
                maps.append(depth.cpu().numpy().astype(np.float32))
        return maps


_LOADED: dict[tuple[str, str], TransformersDepthPrior] = {}


def load_model(source: PriorSource, device: str = "cpu") -> TransformersDepthPrior:
    """The model of ``source``, loaded once per process (keyed by folder and content hash), on ``device``."""
    key = (str(source.path), source.digest)
    if key not in _LOADED:
        _LOADED[key] = TransformersDepthPrior(source, device)
    return _LOADED[key].to(device)


# ---------------------------------------------------------------- the oracle


class OracleDepthPrior(DepthPrior):
    """The dataset's stored depth of the scene's train images, as inverse depth (1 / z; 0 where the depth is
    missing or not positive). It answers only for those images."""

    novel_images = False

    def __init__(self, table: dict[str, np.ndarray]):
        self.source = PriorSource(kind=KIND, name=ORACLE)
        self.table = table

    @classmethod
    def from_scene(cls, scene, train_views) -> "OracleDepthPrior":
        """The oracle for ``train_views`` of ``scene``: each view's stored depth (its box, for crops)."""
        table = {}
        for view in train_views:
            frame = scene.frames[view.frame_index]
            if frame.depth is None:
                raise PriorError(f"{WHAT} 'oracle': scene {scene.key} has no stored depth for frame {frame.name!r}")
            x, y, w, h = view.box or (0, 0, frame.camera.width, frame.camera.height)
            z = frame.depth[y:y + h, x:x + w].astype(np.float64)
            valid = np.isfinite(z) & (z > 0)
            inverse = np.zeros(z.shape, np.float32)
            inverse[valid] = 1.0 / z[valid]
            table[image_key(view.image)] = inverse
        return cls(table)

    def predict(self, images: Sequence[Image], *, cache: bool = True) -> list[np.ndarray]:
        """``cache`` as :class:`SceneDepthPrior`'s (the ``priors["depth"]`` contract); a table needs none."""
        maps = []
        for image in images:
            key = image_key(image)
            if key not in self.table:
                raise PriorError(f"{WHAT} 'oracle' knows the stored depth of the scene's train images only; this "
                                 f"{np.asarray(as_uint8_or_float(image)).shape} image is not one of them (a render "
                                 f"of a new camera has no stored depth: use a depth model there)")
            maps.append(self.table[key].copy())
        return maps


# ---------------------------------------------------------------- per scene, cached


class SceneDepthPrior(DepthPrior):
    """``prior`` for one scene, its predictions cached as ``<cache_dir>/<image sha256>.npy`` (no cache when
    ``cache_dir`` is None). ``predict(images, cache=False)`` skips the cache, for images that will not recur
    (renders during training)."""

    def __init__(self, prior: DepthPrior, cache_dir: Path | None):
        self.prior, self.cache_dir = prior, None if cache_dir is None else Path(cache_dir)
        self.source, self.novel_images = prior.source, prior.novel_images

    def predict(self, images: Sequence[Image], *, cache: bool = True) -> list[np.ndarray]:
        if not cache or self.cache_dir is None:
            return self.prior.predict(images)
        keys = [image_key(image) for image in images]
        maps: list[np.ndarray | None] = [self._read(key) for key in keys]
        missing = [i for i, m in enumerate(maps) if m is None]
        if missing:
            for i, depth in zip(missing, self.prior.predict([images[i] for i in missing])):
                self._write(keys[i], depth)
                maps[i] = depth
        return maps

    def _read(self, key: str) -> np.ndarray | None:
        path = self.cache_dir / f"{key}.npy"
        if not path.exists():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # a damaged entry is recomputed and rewritten
            return None

    def _write(self, key: str, depth: np.ndarray) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{key}.", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, np.asarray(depth, np.float32))
            os.replace(tmp, self.cache_dir / f"{key}.npy")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def cache_dir_for(cache_root: Path | None, source: PriorSource, dataset: str, scene: str) -> Path | None:
    """Where one scene's predictions of ``source`` are cached: ``<root>/depth/<prior hash[:16]>/<dataset>/<scene>``."""
    if cache_root is None:
        return None
    return Path(cache_root) / KIND / source.digest[:16] / dataset / scene


def prior_for_scene(source: PriorSource, scene, train_views, *, device: str, cache_root: Path | None) -> DepthPrior:
    """The depth prior a method gets for ``scene``: the oracle built from its stored depth, or the model with
    its per-scene prediction cache."""
    if source.is_oracle:
        prior = OracleDepthPrior.from_scene(scene, train_views)
    else:
        prior = SceneDepthPrior(load_model(source, device),
                                cache_dir_for(cache_root, source, scene.dataset, scene.scene_id))
    prior.source = source  # the planned source, with its origin (a model loaded earlier may carry another)
    return prior


def _load(source: PriorSource) -> None:
    if not source.is_oracle:
        load_model(source)


register_kind(PriorKind(kind=KIND, flag=f"{FLAG} PATH|oracle", env_var=ENV_VAR,
                        resolve=lambda value, suite: resolve_source(value, suite_id=suite.id,
                                                                    allow_oracle=suite.allow_oracle_depth),
                        load=_load, for_scene=prior_for_scene, required_files=REQUIRED_FILES))


__all__ = ["DepthPrior", "ENV_VAR", "OracleDepthPrior", "SceneDepthPrior", "TransformersDepthPrior", "cache_dir_for",
           "image_key", "load_model", "prior_for_scene", "requested", "resolve_source"]
