"""The built-in synthetic dataset: ray-cast scenes of textured rectangles, boxes and spheres.

Scenes are declared in ``datasets/synthetic.yaml`` (``options.scenes``): primitives with a texture (one of
scikit-image's bundled photographs, optionally tinted and tiled) and a smooth camera path. Rendering is exact
ray casting: color is supersampled, depth is the camera-space z of the ray through each pixel center, and
surface points carry the frames and pixels where they are visible (a depth test against those frames).
Everything is deterministic from the dataset seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from gfbench.camera import Camera, intrinsics, look_at
from gfbench.scene import Frame, PointCloud, Scene

# ---------------------------------------------------------------- textures


def load_texture(spec: dict[str, Any]) -> np.ndarray:
    """A float32 HxWx3 texture in [0, 1] from a scikit-image sample image, tinted when it is grayscale."""
    import skimage.data

    image = getattr(skimage.data, spec["image"])()
    image = np.asarray(image, dtype=np.float32)
    if image.max() > 1.0:
        image = image / 255.0
    if image.ndim == 2:
        image = image[..., None] * np.asarray(spec.get("tint", [1.0, 1.0, 1.0]), np.float32)
    return np.ascontiguousarray(image[..., :3])


def sample_texture(texture: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup with wrap-around; (u, v) in texture periods, v pointing down the image."""
    h, w = texture.shape[:2]
    x = (u % 1.0) * w - 0.5
    y = (v % 1.0) * h - 0.5
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, x1 = x0 % w, (x0 + 1) % w
    y0, y1 = (y0 % h) * w, ((y0 + 1) % h) * w  # row offsets into the flattened texture
    texels = texture.reshape(-1, texture.shape[2])
    gx = 1 - fx
    top = texels[y0 + x0] * gx + texels[y0 + x1] * fx
    bottom = texels[y1 + x0] * gx + texels[y1 + x1] * fx
    return top * (1 - fy) + bottom * fy


# ---------------------------------------------------------------- primitives


@dataclass
class Hit:
    """Where rays meet one shape: ``t`` for every ray (inf where missed); ``u``, ``v`` and ``normal`` only for
    the rays listed in ``rays`` (ascending indices; every ray with a finite ``t`` among them)."""

    t: np.ndarray  # ray parameter, inf where missed
    rays: np.ndarray
    u: np.ndarray
    v: np.ndarray
    normal: np.ndarray


@dataclass
class Rays:
    """A bundle of rays. When they share one origin (a camera's rays), ``eye`` is it and consecutive runs
    of ``CHUNK`` rays carry a bounding cone (unit axis, chord radius over their unit directions), so that
    culling tests whole runs first and single rays only where a run straddles a shape's outline."""

    origins: np.ndarray
    dirs: np.ndarray
    eye: np.ndarray | None = None
    units: np.ndarray | None = None  # unit directions
    unit_length: bool = False  # whether the directions are unit vectors already (as the sphere test assumes)
    chunk_axes: np.ndarray | None = None
    chunk_radii: np.ndarray | None = None

    CHUNK = 32

    @classmethod
    def of(cls, origins: np.ndarray, dirs: np.ndarray) -> "Rays":
        if not (origins.ndim == 2 and len(origins) > 1 and origins.strides[0] == 0):
            return cls(origins, dirs)
        lengths = np.linalg.norm(dirs, axis=1, keepdims=True)
        units = dirs / lengths
        padded = np.concatenate([units, np.repeat(units[-1:], -len(units) % cls.CHUNK, axis=0)])
        runs = padded.reshape(-1, cls.CHUNK, 3)
        axes = runs.mean(axis=1)
        axes /= np.linalg.norm(axes, axis=1, keepdims=True)
        radii = np.linalg.norm(runs - axes[:, None], axis=2).max(axis=1)
        unit_length = bool(np.abs(lengths - 1).max() < 1e-9)
        return cls(origins, dirs, origins[0], units, unit_length, axes, radii)

    def select(self, chunk_out: np.ndarray, chunk_in: np.ndarray,
               ray_test: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Ascending indices of the rays in chunks not ruled out: all rays of chunks wholly in, and those
        of straddling chunks that ``ray_test`` (unit directions -> bool) keeps."""
        chunks = np.flatnonzero(~chunk_out)
        ids = (chunks[:, None] * self.CHUNK + np.arange(self.CHUNK)).ravel()
        straddling = np.repeat(~chunk_in[chunks], self.CHUNK)
        valid = ids < len(self.dirs)
        ids, straddling = ids[valid], straddling[valid]
        keep = np.ones(len(ids), bool)
        keep[straddling] = ray_test(self.units[ids[straddling]])
        return ids[keep]


# Culling (below) only decides which rays to compute; every value is then computed with the arithmetic of
# the plain formulas, applied to the candidate rays only. Element-wise numpy operations give the same bits
# on a subset; so does a matrix @ 3-vector product, which numpy hands to BLAS gemv for two or more rows (each
# row's arithmetic independent of where it sits) but computes as a plain dot for a single row, which can
# differ in the last bit: a lone candidate is therefore computed as a pair (see ``_dot_rows``). The
# tolerances are far above rounding (1e-7 relative against ~1e-16), so a culled ray could never have hit.
CULL_TOLERANCE = 1e-7


def _dot_rows(rows: np.ndarray, vector: np.ndarray, total: int) -> np.ndarray:
    """``rows @ vector`` with the bits each row would get inside the full ``total``-row product."""
    if len(rows) == 1 and total > 1:
        return (np.concatenate([rows, rows]) @ vector)[:1]
    return rows @ vector


def _candidate_rays(shape, rays: Rays) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(number of rays, the indices of the shape's candidate rays, their origins, their directions)."""
    total = len(rays.dirs)
    ids = shape.candidates(rays)
    if ids is None:
        ids = np.arange(total)
    return total, ids, rays.origins[ids], rays.dirs[ids]


def _on_all_rays(total: int, ids: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The candidates' ray parameters ``t`` spread over all ``total`` rays (inf for the culled ones)."""
    all_t = np.full(total, np.inf)
    all_t[ids] = t
    return all_t


class Rectangle:
    """The parallelogram ``origin + a * edge_u + b * edge_v`` for a, b in [0, 1]."""

    def __init__(self, origin, edge_u, edge_v, repeat=(1.0, 1.0)):
        self.origin = np.asarray(origin, np.float64)
        self.edge_u, self.edge_v = np.asarray(edge_u, np.float64), np.asarray(edge_v, np.float64)
        self.normal = np.cross(self.edge_u, self.edge_v)
        self.normal /= np.linalg.norm(self.normal)
        self.repeat = repeat

    @property
    def area(self) -> float:
        return float(np.linalg.norm(np.cross(self.edge_u, self.edge_v)))

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> Hit:
        return self.hit(Rays.of(origins, dirs))

    def candidates(self, rays: Rays) -> np.ndarray | None:
        """Indices of the rays from a shared eye that may meet the parallelogram (a superset: the rays
        inside the cone from the eye through its corners, with a margin), or None to test them all."""
        if rays.eye is None:
            return None
        unit_square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float64)
        corners = self.origin + unit_square @ np.stack([self.edge_u, self.edge_v])
        to_corners = corners - rays.eye
        size = np.linalg.norm(self.edge_u) + np.linalg.norm(self.edge_v)
        if abs(to_corners[0] @ self.normal) < 1e-3 * size:  # the eye (nearly) in the plane: no cone to speak of
            return None
        sides = np.cross(to_corners, np.roll(to_corners, -1, axis=0))  # normals of the cone's four faces
        sides *= np.sign(sides @ to_corners.mean(0))[:, None]  # pointing into the cone
        sides /= np.maximum(np.linalg.norm(sides, axis=1, keepdims=True), 1e-300)
        along, spread = rays.chunk_axes @ sides.T, rays.chunk_radii[:, None]
        chunk_out = (along + spread < -CULL_TOLERANCE).any(axis=1)
        chunk_in = (along - spread >= CULL_TOLERANCE).all(axis=1)

        def in_cone(units: np.ndarray) -> np.ndarray:
            keep = np.ones(len(units), bool)
            for side in sides:
                keep &= units @ side >= -CULL_TOLERANCE
            return keep

        return rays.select(chunk_out, chunk_in, in_cone)

    def hit(self, rays: Rays) -> Hit:
        total, ids, origins, dirs = _candidate_rays(self, rays)
        denom = _dot_rows(dirs, self.normal, total)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = _dot_rows(self.origin - origins, self.normal, total) / denom
        p = origins + t[:, None] * dirs - self.origin
        a = _dot_rows(p, self.edge_u, total) / (self.edge_u @ self.edge_u)
        b = _dot_rows(p, self.edge_v, total) / (self.edge_v @ self.edge_v)
        inside = (np.abs(denom) > 1e-12) & (t > 1e-6) & (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1)
        normal = np.where((denom < 0)[:, None], self.normal, -self.normal)
        return Hit(_on_all_rays(total, ids, np.where(inside, t, np.inf)), ids, a * self.repeat[0],
                   b * self.repeat[1], normal)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        a, b = rng.random(n), rng.random(n)
        xyz = self.origin + a[:, None] * self.edge_u + b[:, None] * self.edge_v
        return xyz, a * self.repeat[0], b * self.repeat[1], np.broadcast_to(self.normal, (n, 3))


class Sphere:
    def __init__(self, center, radius, repeat=(1.0, 1.0)):
        self.center, self.radius, self.repeat = np.asarray(center, np.float64), float(radius), repeat

    @property
    def area(self) -> float:
        return 4 * np.pi * self.radius**2

    def _uv(self, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = (np.arctan2(normal[:, 1], normal[:, 0]) / (2 * np.pi) + 0.5) * self.repeat[0]
        v = (np.arccos(np.clip(normal[:, 2], -1, 1)) / np.pi) * self.repeat[1]
        return u, v

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> Hit:
        return self.hit(Rays.of(origins, dirs))

    def candidates(self, rays: Rays) -> np.ndarray | None:
        """Indices of the rays from a shared eye that may meet the sphere (those passing within the radius
        of its center, with a margin), or None to test them all (also when the eye is inside)."""
        if rays.eye is None or not rays.unit_length:
            return None
        to_center = self.center - rays.eye
        distance2 = to_center @ to_center
        if distance2 <= self.radius**2 * (1 + 1e-3):
            return None
        # a unit direction passes within the radius where cos >= cos_limit (the cone's half-angle)
        cos_limit = np.sqrt(distance2 - self.radius**2) / np.sqrt(distance2)
        axis = to_center / np.sqrt(distance2)
        along = rays.chunk_axes @ axis
        chunk_out = along + rays.chunk_radii < cos_limit - CULL_TOLERANCE
        chunk_in = along - rays.chunk_radii >= cos_limit + CULL_TOLERANCE
        return rays.select(chunk_out, chunk_in, lambda units: units @ axis >= cos_limit - CULL_TOLERANCE)

    def hit(self, rays: Rays) -> Hit:
        total, ids, origins, dirs = _candidate_rays(self, rays)
        oc = origins - self.center
        b = np.einsum("ij,ij->i", oc, dirs)
        c = np.einsum("ij,ij->i", oc, oc) - self.radius**2
        disc = b * b - c
        sqrt_disc = np.sqrt(np.maximum(disc, 0))
        t_near, t_far = -b - sqrt_disc, -b + sqrt_disc
        t = np.where(t_near > 1e-6, t_near, t_far)
        t = np.where((disc >= 0) & (t > 1e-6), t, np.inf)
        normal = (origins + np.where(np.isfinite(t), t, 0)[:, None] * dirs - self.center) / self.radius
        u, v = self._uv(normal)
        return Hit(_on_all_rays(total, ids, t), ids, u, v, normal)

    def sample(self, rng: np.random.Generator, n: int):
        normal = rng.normal(size=(n, 3))
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        u, v = self._uv(normal)
        return self.center + self.radius * normal, u, v, normal


def box_faces(center, size, repeat=(1.0, 1.0)) -> list[Rectangle]:
    """The six outward-facing rectangles of an axis-aligned box."""
    c, (sx, sy, sz) = np.asarray(center, np.float64), size
    lo = c - np.array([sx, sy, sz]) / 2
    ex, ey, ez = np.array([sx, 0, 0]), np.array([0, sy, 0]), np.array([0, 0, sz])
    return [
        Rectangle(lo, ey, ex, repeat), Rectangle(lo + ez, ex, ey, repeat),  # bottom, top
        Rectangle(lo, ex, ez, repeat), Rectangle(lo + ey, ez, ex, repeat),  # front (-y), back (+y)
        Rectangle(lo, ez, ey, repeat), Rectangle(lo + ex, ey, ez, repeat),  # left (-x), right (+x)
    ]


@dataclass
class Surface:
    shape: Rectangle | Sphere
    texture: np.ndarray
    has_points: bool = True  # False for backdrops (a sky dome) that an SfM cloud would not sample


def build_surfaces(primitives: list[dict[str, Any]]) -> list[Surface]:
    surfaces = []
    for spec in primitives:
        texture = load_texture(spec["texture"])
        repeat = tuple(spec["texture"].get("repeat", (1.0, 1.0)))
        kind = spec["type"]
        if kind == "rectangle":
            shapes = [Rectangle(spec["origin"], spec["edge_u"], spec["edge_v"], repeat)]
        elif kind == "box":
            shapes = box_faces(spec["center"], spec["size"], repeat)
        elif kind == "sphere":
            shapes = [Sphere(spec["center"], spec["radius"], repeat)]
        else:
            raise ValueError(f"synthetic primitive type {kind!r} is not one of rectangle, box, sphere")
        surfaces += [Surface(shape, texture, spec.get("points", True)) for shape in shapes]
    return surfaces


# ---------------------------------------------------------------- rendering


def shade(albedo: np.ndarray, normal: np.ndarray, lighting: dict[str, Any]) -> np.ndarray:
    light = np.asarray(lighting["direction"], np.float64)
    light /= np.linalg.norm(light)
    diffuse = np.clip(np.abs(normal @ light), 0, 1)[:, None]
    return np.clip(albedo * (lighting["ambient"] + lighting["diffuse"] * diffuse), 0, 1)


def cast(surfaces: list[Surface], origins: np.ndarray, dirs: np.ndarray, lighting: dict,
         colors: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """Nearest hit per ray: shaded color (N, 3) and ray parameter t (N,), background black at t=inf.
    With ``colors=False`` only t is computed (color is None)."""
    rays = Rays.of(origins, dirs)
    best_t = np.full(len(dirs), np.inf)
    color = np.zeros((len(dirs), 3)) if colors else None
    for surface in surfaces:
        hit = surface.shape.hit(rays)
        closer = np.flatnonzero(hit.t[hit.rays] < best_t[hit.rays])  # positions within the hit's rays
        if len(closer) == 0:
            continue
        ids = hit.rays[closer]
        best_t[ids] = hit.t[ids]
        if colors:
            albedo = sample_texture(surface.texture, hit.u[closer], hit.v[closer])
            color[ids] = shade(albedo, hit.normal[closer], lighting)
    return color, best_t


def pixel_rays(camera: Camera, offsets: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World-space ray origins and unit directions for each pixel and sub-pixel offset, plus each
    direction's camera-space z (to turn ray length into depth)."""
    ys, xs = np.mgrid[0 : camera.height, 0 : camera.width].astype(np.float64)
    K_inv = np.linalg.inv(camera.K)
    dirs_cam = []
    for ox, oy in offsets:
        pix = np.stack([xs + ox, ys + oy, np.ones_like(xs)], -1).reshape(-1, 3)
        dirs_cam.append(pix @ K_inv.T)
    dirs_cam = np.concatenate(dirs_cam)
    dirs_cam /= np.linalg.norm(dirs_cam, axis=1, keepdims=True)
    dirs = dirs_cam @ camera.c2w[:3, :3].T
    origins = np.broadcast_to(camera.c2w[:3, 3], dirs.shape)
    return origins, dirs, dirs_cam[:, 2]


def render_frame(surfaces: list[Surface], camera: Camera, supersample: int, lighting: dict) -> tuple[np.ndarray, np.ndarray]:
    """uint8 HxWx3 image (mean of supersample^2 rays per pixel) and float32 HxW depth at pixel centers."""
    h, w = camera.height, camera.width
    grid = [(i + 0.5) / supersample for i in range(supersample)]
    origins, dirs, _ = pixel_rays(camera, [(ox, oy) for oy in grid for ox in grid])
    color, _ = cast(surfaces, origins, dirs, lighting)
    color = color.reshape(supersample * supersample, h, w, 3).mean(0)
    origins, dirs, z = pixel_rays(camera, [(0.5, 0.5)])
    _, t = cast(surfaces, origins, dirs, lighting, colors=False)
    depth = np.where(np.isfinite(t), t * z, 0.0).reshape(h, w)
    return (color * 255.0 + 0.5).astype(np.uint8), depth.astype(np.float32)


# ---------------------------------------------------------------- camera paths


def camera_path(spec: dict[str, Any], frames: int) -> list[np.ndarray]:
    """c2w poses along a smooth path: ``orbit`` (an arc around a center) or ``dolly`` (a line with a
    moving look-at target); both may bob up and down."""
    s = np.linspace(0.0, 1.0, frames)
    bob = spec.get("bob", 0.0) * np.sin(2 * np.pi * s * spec.get("bob_cycles", 1.0))
    if spec["type"] == "orbit":
        angles = np.radians(spec["start_deg"] + (spec["end_deg"] - spec["start_deg"]) * s)
        center = np.asarray(spec["center"], np.float64)
        eyes = center + np.stack(
            [spec["radius"] * np.cos(angles), spec["radius"] * np.sin(angles), spec["height"] + bob], -1
        )
        targets = np.broadcast_to(np.asarray(spec["target"], np.float64), eyes.shape)
    elif spec["type"] == "dolly":
        start, end = np.asarray(spec["start"], np.float64), np.asarray(spec["end"], np.float64)
        eyes = start + s[:, None] * (end - start) + np.outer(bob, [0, 0, 1])
        t0, t1 = np.asarray(spec["target_start"], np.float64), np.asarray(spec["target_end"], np.float64)
        targets = t0 + s[:, None] * (t1 - t0)
    else:
        raise ValueError(f"synthetic camera path type {spec['type']!r} is not one of orbit, dolly")
    return [look_at(eye, target) for eye, target in zip(eyes, targets)]


# ---------------------------------------------------------------- points


def surface_points(surfaces: list[Surface], count: int, rng: np.random.Generator, lighting: dict):
    """``count`` points spread over the surfaces by area, with their shaded texture colors."""
    surfaces = [s for s in surfaces if s.has_points]
    areas = np.array([s.shape.area for s in surfaces])
    per_surface = rng.multinomial(count, areas / areas.sum())
    xyz, rgb = [], []
    for surface, n in zip(surfaces, per_surface):
        if n == 0:
            continue
        points, u, v, normal = surface.shape.sample(rng, n)
        xyz.append(points)
        rgb.append(shade(sample_texture(surface.texture, u, v), np.asarray(normal), lighting))
    return np.concatenate(xyz), (np.concatenate(rgb) * 255.0 + 0.5).astype(np.uint8)


def observations(xyz: np.ndarray, frames: list[Frame], depth_rtol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, frame, uv) for every point that a frame sees: inside the image and within ``depth_rtol``
    (relative) of the depth that frame's depth map shows at the pixel."""
    obs_point, obs_frame, obs_uv = [], [], []
    for index, frame in enumerate(frames):
        uv, z = frame.camera.project(xyz)
        px, py = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        inside = (z > 0) & (px >= 0) & (py >= 0) & (px < frame.camera.width) & (py < frame.camera.height)
        ids = np.flatnonzero(inside)
        surface_z = frame.depth[py[ids], px[ids]]
        seen = ids[np.abs(surface_z - z[ids]) <= depth_rtol * z[ids]]
        obs_point.append(seen)
        obs_frame.append(np.full(len(seen), index))
        obs_uv.append(uv[seen])
    return np.concatenate(obs_point), np.concatenate(obs_frame), np.concatenate(obs_uv)


# ---------------------------------------------------------------- scenes


def scene_spec_of(scene_id: str, options: dict[str, Any]) -> dict[str, Any]:
    """A scene's declaration: written out in ``options.scenes``, or drawn by :func:`procedural_scene`
    when the dataset declares ``options.procedural`` instead."""
    if scene_id in options.get("scenes", {}):
        return options["scenes"][scene_id]
    if "procedural" in options:
        return procedural_scene(scene_id, options)
    raise ValueError(f"synthetic scene {scene_id!r} is neither declared in options.scenes nor procedural")


def build_scene(scene_id: str, options: dict[str, Any], width: int, height: int,
                progress: Callable[[], None] | None = None, dataset: str = "synthetic") -> Scene:
    """Render one synthetic scene as declared (or drawn procedurally) by the dataset spec's ``options``."""
    scene_spec = scene_spec_of(scene_id, options)
    seed = int(np.random.SeedSequence([options["seed"], *scene_id.encode()]).generate_state(1)[0])
    rng = np.random.default_rng(seed)
    lighting = scene_spec.get("lighting", options["lighting"])
    surfaces = build_surfaces(scene_spec["primitives"])
    focal = 0.5 * width / np.tan(np.radians(options["fov_x_degrees"]) / 2)
    K = intrinsics(focal, focal, width / 2, height / 2)
    frames = []
    for index, c2w in enumerate(camera_path(scene_spec["path"], options["frames"])):
        camera = Camera(K, c2w, width, height)
        image, depth = render_frame(surfaces, camera, options["supersample"], lighting)
        frames.append(Frame(name=f"frame_{index:05d}.png", image=image, camera=camera, depth=depth))
        if progress:
            progress()
    xyz, rgb = surface_points(surfaces, options["points_per_scene"], rng, lighting)
    obs_point, obs_frame, obs_uv = observations(xyz, frames, options["observation_depth_rtol"])
    centers = np.stack([f.camera.center for f in frames])
    meta = {
        "provenance": {"generator": "gfbench.synthetic", "seed": options["seed"], "scene_seed": seed,
                       "procedural": scene_id not in options.get("scenes", {})},
        "normalization": {
            "center": centers.mean(0).tolist(),
            "radius": float(np.linalg.norm(centers - centers.mean(0), axis=1).max()),
        },
        "description": scene_spec.get("description", ""),
    }
    return Scene(dataset, scene_id, frames, PointCloud(xyz, rgb, obs_point, obs_frame, obs_uv), meta)


# ---------------------------------------------------------------- procedural scenes (diffusion training data)


def _uniform(rng: np.random.Generator, bounds: list[float]) -> float:
    low, high = bounds
    return float(rng.uniform(low, high))


def _texture(rng: np.random.Generator, rules: dict[str, Any]) -> dict[str, Any]:
    tint = [round(_uniform(rng, rules["tint"]), 3) for _ in range(3)]
    repeat = [float(rng.integers(rules["repeat"][0], rules["repeat"][1] + 1)) for _ in range(2)]
    return {"image": str(rng.choice(rules["images"])), "tint": tint, "repeat": repeat}


def _walls(rng: np.random.Generator, rules: dict[str, Any], half: float) -> list[dict[str, Any]]:
    """Between one and ``walls.max`` of the four sides of the floor, each at its own height."""
    sides = rng.permutation(4)[: int(rng.integers(rules["walls"]["min"], rules["walls"]["max"] + 1))]
    walls = []
    for side in sorted(sides.tolist()):
        height = _uniform(rng, rules["walls"]["height"])
        origin, edge = {0: ([-half, half, 0], [2 * half, 0, 0]), 1: ([-half, -half, 0], [2 * half, 0, 0]),
                        2: ([-half, -half, 0], [0, 2 * half, 0]), 3: ([half, -half, 0], [0, 2 * half, 0])}[side]
        walls.append({"type": "rectangle", "origin": origin, "edge_u": edge, "edge_v": [0, 0, height],
                      "texture": _texture(rng, rules["textures"])})
    return walls


def _objects(rng: np.random.Generator, rules: dict[str, Any]) -> list[dict[str, Any]]:
    """Boxes and spheres resting on the floor, scattered inside ``objects.spread`` of the center."""
    count = int(rng.integers(rules["objects"]["min"], rules["objects"]["max"] + 1))
    spread = rules["objects"]["spread"]
    objects = []
    for _ in range(count):
        x, y = (float(v) for v in rng.uniform(-spread, spread, 2))
        texture = _texture(rng, rules["textures"])
        if rng.random() < rules["objects"]["sphere_fraction"]:
            radius = _uniform(rng, rules["objects"]["radius"])
            objects.append({"type": "sphere", "center": [x, y, radius], "radius": radius, "texture": texture})
        else:
            size = [_uniform(rng, rules["objects"]["size"]) for _ in range(3)]
            objects.append({"type": "box", "center": [x, y, size[2] / 2], "size": size, "texture": texture})
    return objects


def _path(rng: np.random.Generator, rules: dict[str, Any]) -> dict[str, Any]:
    """An orbit around the center: radius, height, start angle and sweep drawn from ``path``."""
    start = _uniform(rng, [0.0, 360.0])
    sweep = _uniform(rng, rules["sweep_deg"]) * (1 if rng.random() < 0.5 else -1)
    return {"type": "orbit", "center": [0, 0, 0], "radius": _uniform(rng, rules["radius"]),
            "height": _uniform(rng, rules["height"]), "start_deg": start, "end_deg": start + sweep,
            "target": [0, 0, _uniform(rng, rules["target_height"])], "bob": _uniform(rng, rules["bob"]),
            "bob_cycles": _uniform(rng, rules["bob_cycles"])}


def procedural_scene(scene_id: str, options: dict[str, Any]) -> dict[str, Any]:
    """A scene declaration drawn from the dataset seed and the scene id (``options.procedural`` holds the
    ranges): a textured floor, some walls, objects on the floor, an orbit around them."""
    rules = options["procedural"]
    rng = np.random.default_rng(np.random.SeedSequence([options["seed"], 1, *scene_id.encode()]))
    half = _uniform(rng, rules["floor_half_size"])
    floor = {"type": "rectangle", "origin": [-half, -half, 0], "edge_u": [2 * half, 0, 0],
             "edge_v": [0, 2 * half, 0], "texture": _texture(rng, rules["textures"])}
    return {"description": f"procedural scene {scene_id} (seed {options['seed']})",
            "path": _path(rng, rules["path"]),
            "primitives": [floor, *_walls(rng, rules, half), *_objects(rng, rules)]}
