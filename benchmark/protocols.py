"""Evaluation protocols: a pure function from a scene and a suite's ``protocol`` block to train and test views.

Three protocol types, every number coming from the block (see ``datasets/suites/*.yaml``):

- ``masked``: train frames ``k in indices[::downsample]``, each cropped to a ``W // d x H // d`` patch whose
  top-left corner bounces along the declared ``trajectory`` (computed at the ``reference`` size, then scaled
  to the frame and rounded); test frames are all the others, whole.
- ``corner``: one corner (drawn from the seed and the scene) for the whole reconstruction; train frames
  ``indices[::downsample]`` cropped to that corner's patch; test frames are all frames, whole.
- ``sparse``: test frames ``k % test_every == 0``; ``n_views`` train frames from the remaining pool, by the
  block's ``train_views`` rule: ``split-file`` takes the ``train_ids`` of the scene's
  ``train_test_split_{n}.json`` (ReconFusion's files, stored in the shard at build time: what the official
  GenFusion code reads), ``fsgs-rule`` spaces them evenly with Python's ``round`` (FSGS's rule).

Initial points (``points``): ``all``, or those ``observed`` in at least ``min_views`` train views (inside the
patch, for crops). The masked protocol's ``pairing: official-code`` reproduces GenFusion's
``filter_points`` as written (see ``PointRule``).

A patch that does not lie inside its frame is an error, never clamped: clamping would silently move the
visible region away from the published protocol (with the paper's trajectory it never happens at any size).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from gfbench.scene import Frame, PointCloud, Scene
from gfbench.views import View

PROTOCOL_TYPES = ("masked", "corner", "sparse")
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
POINT_RULES = ("all", "observed")
POINT_PAIRINGS = ("frame", "official-code")
TRAIN_VIEW_RULES = ("split-file", "fsgs-rule")
SPLIT_FILES_META = "train_test_splits"  # scene meta key: {"<n>": {"train_ids": [...], "test_ids": [...], ...}}

Box = tuple[int, int, int, int]  # (x, y, width, height) in the source frame


# ---------------------------------------------------------------- the parsed protocol block


@dataclass(frozen=True)
class Bounce:
    """One axis of the patch trajectory: ``offset + step * (half_period - |((phase + k) mod 2 half_period)
    - half_period|)``, a point bouncing between ``offset`` and ``offset + step * half_period``."""

    offset: int
    step: int
    half_period: int
    phase: int

    def at(self, k: int) -> int:
        period = 2 * self.half_period
        return self.offset + self.step * (self.half_period - abs((self.phase + k) % period - self.half_period))

    @property
    def highest(self) -> int:
        return self.offset + self.step * self.half_period


@dataclass(frozen=True)
class PointRule:
    """Which initial points a method gets: ``all``, or those ``observed`` inside at least ``min_views``
    train views (their patch, for crops).

    ``pairing`` (masked protocol): ``frame`` tests each train frame's observations against its own patch
    (what the official code evidently intends); ``official-code`` reproduces GenFusion's ``filter_points``
    as written: the j-th train frame ``indices[::f][j]`` is tested with the patch of trajectory entry ``j``
    (not of its own index), and a point observed in that frame is kept when its projection (not its
    keypoint) lies inside that patch, in front of the camera."""

    keep: str = "all"
    min_views: int = 1
    pairing: str = "frame"


@dataclass(frozen=True)
class Protocol:
    type: str
    points: PointRule
    coverage: bool
    depth_rtol: float | None
    block: dict = field(compare=False, repr=False)


@dataclass(frozen=True)
class MaskedProtocol(Protocol):
    downsample: int = 2
    reference: tuple[int, int] = (960, 540)
    patch_divisor: int = 2
    x: Bounce = Bounce(0, 0, 1, 0)
    y: Bounce = Bounce(0, 0, 1, 0)


@dataclass(frozen=True)
class CornerProtocol(Protocol):
    downsample: int = 1
    patch_divisor: int = 2
    corners: tuple[str, ...] = CORNERS
    clip: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SparseProtocol(Protocol):
    test_every: int = 8
    n_views: int = 3
    train_views: str = "split-file"


class _Block:
    """Typed reads of a protocol block; every problem is a ValueError naming the field."""

    def __init__(self, data: Any, prefix: str = ""):
        if not isinstance(data, dict):
            raise ValueError(f"protocol field '{prefix or 'protocol'}': expected a mapping, got {data!r}")
        self.data, self.prefix = data, prefix

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str, problem: str):
        raise ValueError(f"protocol field '{self.name(key)}': {problem}")

    def only(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.data) - allowed)
        if unknown:
            self.fail(unknown[0], f"unknown field (allowed: {', '.join(sorted(allowed))})")

    def integer(self, key: str, minimum: int | None = None, default: Any = ...) -> int:
        if key not in self.data:
            if default is ...:
                self.fail(key, "missing")
            return default
        value = self.data[key]
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(key, f"expected an integer, got {value!r}")
        if minimum is not None and value < minimum:
            self.fail(key, f"expected an integer >= {minimum}, got {value}")
        return value

    def number(self, key: str, default: Any = ...) -> float | None:
        if key not in self.data:
            if default is ...:
                self.fail(key, "missing")
            return default
        value = self.data[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            self.fail(key, f"expected a positive number, got {value!r}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {value!r}")
        return value

    def text(self, key: str, choices: tuple[str, ...] | None = None, default: Any = ...) -> str | None:
        if key not in self.data:
            if default is ...:
                self.fail(key, "missing")
            return default
        value = self.data[key]
        if not isinstance(value, str) or not value:
            self.fail(key, f"expected a non-empty string, got {value!r}")
        if choices is not None and value not in choices:
            self.fail(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def sub(self, key: str, default: Any = ...) -> "_Block | None":
        if key not in self.data:
            if default is ...:
                self.fail(key, "missing")
            return default
        return _Block(self.data[key], self.name(key))


_COMMON_FIELDS = {"type", "points", "coverage", "depth_rtol"}


def _point_rule(block: _Block) -> PointRule:
    sub = block.sub("points", None)
    if sub is None:
        return PointRule()
    sub.only({"keep", "min_views", "pairing"})
    rule = PointRule(keep=sub.text("keep", POINT_RULES), min_views=sub.integer("min_views", 1, default=1),
                     pairing=sub.text("pairing", POINT_PAIRINGS, default="frame"))
    if rule.pairing == "official-code":
        kind = block.data.get("type")
        if kind != "masked" or rule.keep != "observed" or rule.min_views != 1:
            sub.fail("pairing", f"'official-code' reproduces the masked protocol's filter (keep: observed, "
                                f"min_views: 1); this block has type {kind!r}, keep {rule.keep!r}, "
                                f"min_views {rule.min_views}")
    return rule


def _common(block: _Block, kind: str) -> dict:
    coverage = block.flag("coverage", False)
    depth_rtol = block.number("depth_rtol", None)
    if coverage and depth_rtol is None:
        block.fail("depth_rtol", "missing (coverage: true needs the relative depth tolerance of its occlusion test)")
    return {"type": kind, "points": _point_rule(block), "coverage": coverage, "depth_rtol": depth_rtol,
            "block": dict(block.data)}


def _bounce(block: _Block, axis: str) -> Bounce:
    sub = block.sub(axis)
    sub.only({"offset", "step", "half_period", "phase"})
    return Bounce(offset=sub.integer("offset", 0), step=sub.integer("step", 0), half_period=sub.integer("half_period", 1),
                  phase=sub.integer("phase"))


def _parse_masked(block: _Block) -> MaskedProtocol:
    block.only(_COMMON_FIELDS | {"downsample", "reference", "patch_divisor", "trajectory"})
    reference = block.sub("reference")
    reference.only({"width", "height"})
    ref_w, ref_h = reference.integer("width", 1), reference.integer("height", 1)
    divisor = block.integer("patch_divisor", 1)
    trajectory = block.sub("trajectory")
    trajectory.only({"x", "y"})
    x, y = _bounce(trajectory, "x"), _bounce(trajectory, "y")
    for axis, bounce, size in (("x", x, ref_w), ("y", y, ref_h)):
        if bounce.highest + size // divisor > size:
            trajectory.fail(axis, f"the patch reaches {bounce.highest} + {size // divisor} > {size}, outside the "
                                  f"reference frame")
    return MaskedProtocol(downsample=block.integer("downsample", 2), reference=(ref_w, ref_h), patch_divisor=divisor,
                          x=x, y=y, **_common(block, "masked"))


def _parse_corner(block: _Block) -> CornerProtocol:
    block.only(_COMMON_FIELDS | {"downsample", "patch_divisor", "corners", "clip"})
    corners = block.data.get("corners")
    if (not isinstance(corners, list) or not corners or len(set(corners)) != len(corners)
            or not all(c in CORNERS for c in corners)):
        block.fail("corners", f"expected a non-empty list of distinct corners from {', '.join(CORNERS)}, "
                              f"got {corners!r}")
    clip = block.sub("clip", None)
    if clip is not None:
        clip.only({"frames", "width", "height", "stride"})
        stride = clip.integer("stride", 1, None)  # frames between the starts of two clips (default: frames)
        clip = {key: clip.integer(key, 1) for key in ("frames", "width", "height")}
        if stride is not None:
            clip["stride"] = stride
    return CornerProtocol(downsample=block.integer("downsample", 1), patch_divisor=block.integer("patch_divisor", 1),
                          corners=tuple(corners), clip=clip or {}, **_common(block, "corner"))


def _parse_sparse(block: _Block) -> SparseProtocol:
    block.only(_COMMON_FIELDS | {"test_every", "n_views", "train_views"})
    return SparseProtocol(test_every=block.integer("test_every", 2), n_views=block.integer("n_views", 1),
                          train_views=block.text("train_views", TRAIN_VIEW_RULES), **_common(block, "sparse"))


_PARSERS = {"masked": _parse_masked, "corner": _parse_corner, "sparse": _parse_sparse}


def parse_protocol(block: dict) -> Protocol:
    """The typed protocol of a suite's ``protocol`` block; ValueError naming the field when it is wrong."""
    fields = _Block(block)
    kind = fields.text("type", PROTOCOL_TYPES)
    return _PARSERS[kind](fields)


def validate_protocol(block: dict) -> None:
    parse_protocol(block)


def is_seeded(block: dict) -> bool:
    """Whether the split depends on the seed (only the corner draw does)."""
    return parse_protocol(block).type == "corner"


# ---------------------------------------------------------------- frame selection and patches


def patch_size(width: int, height: int, divisor: int) -> tuple[int, int]:
    return width // divisor, height // divisor


def masked_box(protocol: MaskedProtocol, k: int, width: int, height: int) -> Box:
    """The patch of absolute frame index ``k`` in a ``width x height`` frame (may lie outside: see
    ``crop_frame``)."""
    ref_w, ref_h = protocol.reference
    x = round(protocol.x.at(k) * width / ref_w)
    y = round(protocol.y.at(k) * height / ref_h)
    return (x, y, *patch_size(width, height, protocol.patch_divisor))


def corner_box(corner: str, width: int, height: int, divisor: int) -> Box:
    pw, ph = patch_size(width, height, divisor)
    x = 0 if corner.endswith("left") else width - pw
    y = 0 if corner.startswith("top") else height - ph
    return (x, y, pw, ph)


def draw_corner(protocol: CornerProtocol, seed: int, scene_key: str) -> str:
    """The corner of one reconstruction. The scene key joins the seed so that the scenes of one suite run
    get different corners; the draw is the same on every machine (crc32 is stable, unlike ``hash``)."""
    rng = np.random.default_rng([seed, zlib.crc32(scene_key.encode())])
    return protocol.corners[int(rng.integers(len(protocol.corners)))]


def sparse_pool_choice(pool_size: int, n: int) -> list[int]:
    """Positions in the train pool: ``round(i)`` for ``i`` in ``linspace(0, pool_size - 1, n)`` (FSGS's rule,
    Python's round: halves go to the even neighbour)."""
    if n > pool_size:
        raise ValueError(f"n_views = {n} is larger than the train pool ({pool_size} frames)")
    return [round(float(i)) for i in np.linspace(0, pool_size - 1, n)]


def split_file_name(n_views: int) -> str:
    """ReconFusion's (and the official GenFusion code's) name of the n-view split file."""
    return f"train_test_split_{n_views}.json"


class SplitFileMissing(ValueError):
    """A ``train_views: split-file`` protocol meets a scene built without the file it needs."""


def stored_split(scene_meta: dict, n_views: int, scene_key: str) -> dict:
    """The stored content of ``train_test_split_{n}.json`` of a scene (from its meta)."""
    stored = scene_meta.get(SPLIT_FILES_META) or {}
    if str(n_views) not in stored:
        have = ", ".join(split_file_name(int(n)) for n in sorted(stored, key=int)) or "none"
        raise SplitFileMissing(f"scene {scene_key} was built without {split_file_name(n_views)} (it has: {have}); "
                               "put the file in the scene folder (or pass --splits DIR) and build the scene again")
    return stored[str(n_views)]


def read_split_ids(stored: dict, protocol: SparseProtocol, num_frames: int, test: list[int],
                   where: str) -> list[int]:
    """``train_ids`` of a ReconFusion-style split, checked against the scene and the protocol."""
    train_ids = stored.get("train_ids")
    if (not isinstance(train_ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in train_ids)
            or len(set(train_ids)) != len(train_ids)):
        raise ValueError(f"{where}: train_ids must be distinct integers, got {train_ids!r}")
    if len(train_ids) != protocol.n_views:
        raise ValueError(f"{where}: {len(train_ids)} train_ids, the protocol asks for n_views = {protocol.n_views}")
    outside = [i for i in train_ids if not 0 <= i < num_frames]
    if outside:
        raise ValueError(f"{where}: train id {outside[0]} names a frame the scene lacks (it has {num_frames} frames)")
    if stored.get("test_ids") is not None and sorted(stored["test_ids"]) != test:
        raise ValueError(f"{where}: test_ids differ from the protocol's test frames (k % {protocol.test_every} == 0): "
                         f"{sorted(stored['test_ids'])[:6]}... vs {test[:6]}...")
    in_test = sorted(set(train_ids) & set(test))
    if in_test:
        raise ValueError(f"{where}: train id {in_test[0]} is a test frame")
    return sorted(train_ids)


# ---------------------------------------------------------------- views


@dataclass
class Split:
    """What a protocol hands out: train views (crops or whole frames), test views (whole frames), the
    initial points a method may use, and a record of the choices made (``info``)."""

    train: list[View]
    test: list[View]
    points: PointCloud | None
    info: dict


def crop_frame(frame: Frame, index: int, box: Box) -> View:
    """The train view of ``frame`` restricted to ``box``; ValueError when the box leaves the frame."""
    x, y, w, h = box
    width, height = frame.camera.width, frame.camera.height
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"frame {frame.name!r} ({width}x{height}) is too small for its patch: {w}x{h} at "
                         f"({x}, {y}) does not lie inside it")
    rows, cols = slice(y, y + h), slice(x, x + w)
    return View(
        name=frame.name,
        frame_index=index,
        image=frame.image[rows, cols].copy(),
        camera=frame.camera.crop(x, y, w, h),
        depth=None if frame.depth is None else frame.depth[rows, cols].copy(),
        mask=None if frame.mask is None else frame.mask[rows, cols].copy(),
        box=(x, y, w, h),
        frame_camera=frame.camera,
    )


def whole_view(frame: Frame, index: int) -> View:
    return View(name=frame.name, frame_index=index, image=frame.image, camera=frame.camera, depth=frame.depth,
                mask=frame.mask)


def _views(scene: Scene, boxes: dict[int, Box | None]) -> list[View]:
    return [whole_view(scene.frames[k], k) if box is None else crop_frame(scene.frames[k], k, box)
            for k, box in sorted(boxes.items())]


def _choose(protocol: Protocol, scene: Scene, seed: int) -> tuple[dict[int, Box | None], list[int], dict]:
    """Train frames with their boxes (None = whole frame), test frame indices, and notes for ``info``."""
    n = len(scene.frames)
    sizes = [(f.camera.width, f.camera.height) for f in scene.frames]
    if isinstance(protocol, MaskedProtocol):
        train = range(0, n, protocol.downsample)
        boxes = {k: masked_box(protocol, k, *sizes[k]) for k in train}
        return boxes, [k for k in range(n) if k not in boxes], {}
    if isinstance(protocol, CornerProtocol):
        corner = draw_corner(protocol, seed, scene.key)
        boxes = {k: corner_box(corner, *sizes[k], protocol.patch_divisor) for k in range(0, n, protocol.downsample)}
        return boxes, list(range(n)), {"seed": seed, "corner": corner, "clip": protocol.clip}
    test = [k for k in range(n) if k % protocol.test_every == 0]
    pool = [k for k in range(n) if k % protocol.test_every != 0]
    if protocol.train_views == "split-file":
        stored = stored_split(scene.meta, protocol.n_views, scene.key)
        where = f"scene {scene.key}: {stored.get('file', split_file_name(protocol.n_views))}"
        train = read_split_ids(stored, protocol, n, test, where)
        notes = {"split_file": stored.get("file", split_file_name(protocol.n_views)),
                 "split_file_sha256": stored.get("sha256")}
    else:
        if protocol.n_views > len(pool):
            raise ValueError(f"scene {scene.key}: n_views = {protocol.n_views} is larger than the train pool "
                             f"({len(pool)} of {n} frames after taking every {protocol.test_every}th for test)")
        train = [pool[i] for i in sparse_pool_choice(len(pool), protocol.n_views)]
        notes = {}
    return {k: None for k in train}, test, notes


def make_split(scene: Scene, block: dict, *, seed: int = 0) -> Split:
    """Train and test views of ``scene`` under the protocol ``block`` (a suite's ``protocol`` mapping)."""
    protocol = parse_protocol(block)
    if not scene.frames:
        raise ValueError(f"scene {scene.key} has no frames")
    boxes, test_indices, notes = _choose(protocol, scene, seed)
    train = _views(scene, boxes)
    test = [whole_view(scene.frames[k], k) for k in test_indices]
    has_depth = all(f.depth is not None for f in scene.frames)
    if protocol.coverage and has_depth:
        for view, mask in zip(test, coverage_masks(test, train, protocol.depth_rtol)):
            view.coverage = mask
    points, point_notes = select_points(scene, train, protocol)
    train = [replace(view, depth=None) for view in train]  # coverage and points used it; a method never sees it
    info = {
        "type": protocol.type,
        "frame_names": scene.frame_names,
        "train_indices": [v.frame_index for v in train],
        "test_indices": test_indices,
        "coverage": bool(protocol.coverage and has_depth),
        **notes,
        **point_notes,
    }
    return Split(train=train, test=test, points=points, info=info)


# ---------------------------------------------------------------- coverage and points


def unproject(view: View) -> tuple[np.ndarray, np.ndarray]:
    """World points at the pixel centers of ``view`` from its depth, as (3, H*W) float32 columns, and
    which pixels have a depth."""
    h, w = view.depth.shape
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    z = view.depth.reshape(-1).astype(np.float64)
    pixels = np.stack([cols.reshape(-1), rows.reshape(-1), np.ones(h * w)])
    camera_points = (np.linalg.inv(view.camera.K) @ pixels) * z
    world = view.camera.c2w[:3, :3] @ camera_points + view.camera.c2w[:3, 3:]
    return world.astype(np.float32), np.isfinite(z) & (z > 0)


def seen_in(points: np.ndarray, view: View, depth_rtol: float | None) -> np.ndarray:
    """Which world points (x, y and z rows: (3, N) or three arrays) project inside ``view`` (its crop, for crops) in front of the
    camera and, when ``depth_rtol`` is given and the view has depth, within that relative tolerance of the
    view's depth (not hidden behind a nearer surface)."""
    # Row by row on float32 columns: several times faster than an (N, 3) @ (3, 3) matmul here.
    P = (view.camera.K @ view.camera.w2c[:3]).astype(np.float32)
    x, y, zw = points
    z = P[2, 0] * x + P[2, 1] * y + P[2, 2] * zw + P[2, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (P[0, 0] * x + P[0, 1] * y + P[0, 2] * zw + P[0, 3]) / z
        v = (P[1, 0] * x + P[1, 1] * y + P[1, 2] * zw + P[1, 3]) / z
        inside = (z > 0) & (u >= 0) & (v >= 0) & (u < view.camera.width) & (v < view.camera.height)
    if depth_rtol is None or view.depth is None:
        return inside
    ids = np.flatnonzero(inside)
    surface = view.depth[v[ids].astype(np.int64), u[ids].astype(np.int64)]
    inside[ids] = (surface > 0) & (np.abs(z[ids] - surface) <= depth_rtol * surface)
    return inside


def coverage_masks(test: list[View], train: list[View], depth_rtol: float) -> list[np.ndarray]:
    """Per test view, HxW bool: the pixel's surface point (from the test depth) is seen by some train view."""
    unprojected = [unproject(view) for view in test]
    valid = np.concatenate([ok for _, ok in unprojected])
    ids = np.flatnonzero(valid)
    points = [row[ids] for row in np.concatenate([p for p, _ in unprojected], axis=1)]
    covered = np.zeros(len(valid), bool)
    for view in train:
        seen = seen_in(points, view, depth_rtol)
        covered[ids[seen]] = True
        if seen.any():  # a point seen once needs no further test
            unseen = ~seen
            ids, points = ids[unseen], [row[unseen] for row in points]
    masks, start = [], 0
    for view in test:
        h, w = view.depth.shape
        masks.append(covered[start:start + h * w].reshape(h, w))
        start += h * w
    return masks


def _observed_views(points: PointCloud, train: list[View], num_frames: int) -> np.ndarray:
    """Per point, in how many distinct train views it is observed inside the view's box."""
    if len(points.obs_frame) and points.obs_frame.max() >= num_frames:
        raise ValueError(f"point observations name frame index {points.obs_frame.max()} but the scene has "
                         f"{num_frames} frames")
    bounds = np.full((num_frames, 4), -1.0)  # x0, y0, x1, y1; frames that are not train views stay empty
    for view in train:
        x, y, w, h = view.box or (0, 0, view.camera.width, view.camera.height)
        bounds[view.frame_index] = (x, y, x + w, y + h)
    b = bounds[points.obs_frame]
    u, v = points.obs_uv[:, 0], points.obs_uv[:, 1]
    inside = (u >= b[:, 0]) & (u < b[:, 2]) & (v >= b[:, 1]) & (v < b[:, 3])
    pairs = np.unique(points.obs_point[inside].astype(np.int64) * num_frames + points.obs_frame[inside])
    return np.bincount(pairs // num_frames, minlength=len(points))


def _projected_views(points: PointCloud, train: list[View], depth_rtol: float | None) -> np.ndarray:
    columns = np.ascontiguousarray(points.xyz.T)
    return np.sum([seen_in(columns, view, depth_rtol) for view in train], axis=0, dtype=np.int64)


def _official_code_filter(points: PointCloud, scene: Scene, train: list[View], protocol: Protocol) -> np.ndarray:
    """GenFusion's ``filter_points`` as written: the j-th train frame (``indices[::f][j]``) keeps the points
    it observes whose projection through its whole-frame camera lies in front of it and inside the patch of
    trajectory entry ``j``; a point is kept when some train frame keeps it."""
    if not isinstance(protocol, MaskedProtocol):
        raise ValueError("points pairing 'official-code' belongs to the masked protocol")
    if not points.has_observations:
        raise ValueError("points pairing 'official-code' needs the points' 2D observations (which frames see "
                         "which point); this scene's points have none")
    keep = np.zeros(len(points), bool)
    for j, view in enumerate(sorted(train, key=lambda v: v.frame_index)):
        camera = scene.frames[view.frame_index].camera
        x, y, w, h = masked_box(protocol, j, camera.width, camera.height)
        seen = np.unique(points.obs_point[points.obs_frame == view.frame_index])
        in_camera = camera.w2c[:3, :3] @ points.xyz[seen].T.astype(np.float64) + camera.w2c[:3, 3:]
        projected = camera.K @ in_camera
        with np.errstate(divide="ignore", invalid="ignore"):
            u, v = projected[0] / projected[2], projected[1] / projected[2]
        inside = (u >= x) & (u < x + w) & (v >= y) & (v < y + h) & (in_camera[2] > 0)
        keep[seen[inside]] = True
    return keep


def select_points(scene: Scene, train: list[View], protocol: Protocol) -> tuple[PointCloud | None, dict]:
    """The initial points under ``protocol.points``. ``observed`` uses the 2D observations; a cloud without
    any falls back to projecting the points into the train views (with the depth test where every train
    view has depth and ``depth_rtol`` is set), so that hidden regions never leak through the points."""
    points, rule = scene.points, protocol.points
    if points is None:
        return None, {"point_filter": "none (the scene has no points)"}
    if rule.keep == "all":
        return points, {"point_filter": "all", "points": len(points)}
    if rule.pairing == "official-code":
        kept = points.subset(_official_code_filter(points, scene, train, protocol)) if len(points) else points
        return kept, {"point_filter": "official code: train frame j observed, projected into trajectory box j",
                      "points_before": len(points), "points": len(kept)}
    if points.has_observations:
        counts, how = _observed_views(points, train, len(scene.frames)), "observations"
    else:
        with_depth = protocol.depth_rtol is not None and all(v.depth is not None for v in train)
        counts = _projected_views(points, train, protocol.depth_rtol if with_depth else None)
        how = "projection with depth test" if with_depth else "projection (no observations, no depth)"
    kept = points.subset(counts >= rule.min_views) if len(points) else points
    return kept, {"point_filter": f"observed in >= {rule.min_views} train views, by {how}",
                  "points_before": len(points), "points": len(kept)}
