"""Pictures for people: contact sheets of frames and depth."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from gfbench.scene import Scene


def colorize_depth(depth: np.ndarray) -> np.ndarray:
    """HxW depth -> HxWx3 uint8 (near bright, far dark, unknown black), scaled by robust percentiles."""
    import matplotlib

    valid = depth > 0
    if not valid.any():
        return np.zeros((*depth.shape, 3), np.uint8)
    inv = np.zeros_like(depth, dtype=np.float64)
    inv[valid] = 1.0 / depth[valid]
    lo, hi = np.percentile(inv[valid], [2, 98])
    norm = np.clip((inv - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = matplotlib.colormaps["magma"](norm)[..., :3]
    rgb[~valid] = 0
    return (rgb * 255).astype(np.uint8)


def evenly_spaced(count: int, pick: int) -> list[int]:
    if count <= pick:
        return list(range(count))
    return sorted({round(i * (count - 1) / (pick - 1)) for i in range(pick)})


def contact_sheet(scene: Scene, pick: int = 8, columns: int = 4) -> Image.Image:
    """A grid of ``pick`` evenly spaced frames, each with its depth beside it when the scene has depth."""
    tiles = []
    for index in evenly_spaced(len(scene.frames), pick):
        frame = scene.frames[index]
        tile = frame.image if frame.depth is None else np.concatenate([frame.image, colorize_depth(frame.depth)], 1)
        image = Image.fromarray(tile)
        ImageDraw.Draw(image).text((4, 2), f"{index}: {frame.name}", fill=(255, 255, 0))
        tiles.append(image)
    tile_w, tile_h = max(t.width for t in tiles), max(t.height for t in tiles)
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (min(columns, len(tiles)) * tile_w, rows * tile_h + 18), (20, 20, 20))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * tile_w, 18 + (i // columns) * tile_h))
    title = f"{scene.key}: {len(scene.frames)} frames, {len(scene.points) if scene.points else 0} points"
    ImageDraw.Draw(sheet).text((4, 3), title, fill=(255, 255, 255))
    return sheet


def labelled_grid(rows: list[tuple[str, list[np.ndarray]]], title: str, label_width: int = 150) -> Image.Image:
    """Rows of equally sized uint8 images, each row with its label at the left and a title above."""
    tile_h, tile_w = rows[0][1][0].shape[:2]
    columns = max(len(images) for _, images in rows)
    sheet = Image.new("RGB", (label_width + columns * tile_w, 18 + len(rows) * tile_h), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 3), title, fill=(255, 255, 255))
    for r, (label, images) in enumerate(rows):
        top = 18 + r * tile_h
        draw.text((4, top + tile_h // 2 - 6), label, fill=(255, 255, 0))
        for c, image in enumerate(images):
            sheet.paste(Image.fromarray(image), (label_width + c * tile_w, top))
    return sheet
