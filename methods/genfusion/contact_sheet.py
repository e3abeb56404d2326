"""A picture of one repair round, so a person can see what the video prior did: one row per picked frame,
rendered RGB | repaired RGB | rendered depth | repaired depth.

Depth tiles use :func:`gfbench.viz.colorize_depth` (inverse depth between its 2nd and 98th percentiles, per
tile): the prior's depth is relative (recovered from a min-max normalised disparity), so rendered and repaired
depth share no scale and each tile is normalised on its own. Repaired tiles are resized to the rendered size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from gfbench.viz import colorize_depth, evenly_spaced

COLUMNS = ("rendered", "repaired", "rendered depth", "repaired depth")
HEADER = 30  # pixels: the title line and the column names


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """An RGB image as uint8: float images are read as [0, 1] and clipped."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        return rgb
    return (np.clip(np.nan_to_num(rgb.astype(np.float64)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _tile(image: np.ndarray, size: tuple[int, int]) -> Image.Image:
    tile = Image.fromarray(image)
    return tile if tile.size == size else tile.resize(size, Image.BILINEAR)


def repair_contact_sheet(
    rendered_rgb: np.ndarray,
    rendered_depth: np.ndarray,
    repaired_rgb: np.ndarray,
    repaired_depth: np.ndarray,
    *,
    title: str = "",
    pick: int = 8,
    frame_labels: list[str] | None = None,
) -> Image.Image:
    """The sheet for ``T`` frames: ``*_rgb [T, H, W, 3]`` (float in [0, 1] or uint8), ``*_depth [T, H, W]``
    (depth; 0 or less = nothing rendered). ``pick`` evenly spaced frames are shown, labelled by
    ``frame_labels`` (default: the frame's index)."""
    rendered_rgb, repaired_rgb = np.asarray(rendered_rgb), np.asarray(repaired_rgb)
    rendered_depth, repaired_depth = np.asarray(rendered_depth), np.asarray(repaired_depth)
    count = len(rendered_rgb)
    if not count or any(len(x) != count for x in (rendered_depth, repaired_rgb, repaired_depth)):
        raise ValueError(
            "repair contact sheet: rendered RGB, rendered depth, repaired RGB and repaired depth must hold the "
            f"same number of frames (at least one), got {[len(x) for x in (rendered_rgb, rendered_depth, repaired_rgb, repaired_depth)]}"
        )
    if rendered_rgb.ndim != 4 or repaired_rgb.ndim != 4 or rendered_depth.ndim != 3 or repaired_depth.ndim != 3:
        raise ValueError("repair contact sheet: RGB must be [T, H, W, 3] and depth [T, H, W]")
    labels = frame_labels if frame_labels is not None else [str(i) for i in range(count)]
    height, width = rendered_rgb.shape[1:3]
    rows = evenly_spaced(count, pick)
    sheet = Image.new("RGB", (len(COLUMNS) * width, HEADER + len(rows) * height), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), title, fill=(255, 255, 255))
    for column, name in enumerate(COLUMNS):
        draw.text((column * width + 4, 16), name, fill=(200, 200, 200))
    for row, index in enumerate(rows):
        tiles = (
            to_uint8(rendered_rgb[index]),
            to_uint8(repaired_rgb[index]),
            colorize_depth(rendered_depth[index]),
            colorize_depth(repaired_depth[index]),
        )
        top = HEADER + row * height
        for column, tile in enumerate(tiles):
            sheet.paste(_tile(tile, (width, height)), (column * width, top))
        draw.text((4, top + 2), labels[index], fill=(255, 255, 0))
    return sheet


def save_repair_contact_sheet(path: str | Path, *args, **kwargs) -> Path:
    """:func:`repair_contact_sheet` written as a PNG at ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_contact_sheet(*args, **kwargs).save(path, format="PNG")
    return path


__all__ = ["COLUMNS", "repair_contact_sheet", "save_repair_contact_sheet"]
