"""The repair-round contact sheet: layout, that each tile shows what it says, the PNG on disk, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gfbench.methods.genfusion.contact_sheet import HEADER, repair_contact_sheet, save_repair_contact_sheet
from gfbench.viz import colorize_depth

T, H, W = 20, 24, 40


def clip():
    rendered = np.zeros((T, H, W, 3), np.float32)
    rendered[..., 0] = 1.0  # red
    repaired = np.zeros((T, H // 2, W // 2, 3), np.uint8)  # smaller, as a prior at another resolution
    repaired[..., 2] = 255  # blue
    ramp = np.linspace(1.0, 4.0, W, dtype=np.float32)[None, None].repeat(H, 1).repeat(T, 0)
    rendered_depth = ramp.copy()
    rendered_depth[:, :, :5] = 0.0  # nothing rendered there
    repaired_depth = ramp[:, ::2, ::2][:, :, ::-1].copy()  # reversed: near on the right
    return rendered, rendered_depth, repaired, repaired_depth


def tile(sheet: np.ndarray, row: int, column: int) -> np.ndarray:
    top = HEADER + row * H
    return sheet[top:top + H, column * W:(column + 1) * W]


def test_the_sheet_shows_rendered_and_repaired_rgb_and_depth(tmp_path):
    rendered, rendered_depth, repaired, repaired_depth = clip()
    path = save_repair_contact_sheet(tmp_path / "round_2" / "clip_0.png", rendered, rendered_depth, repaired,
                                     repaired_depth, title="round 2, step 3000", pick=8)
    sheet = np.asarray(Image.open(path).convert("RGB"))
    assert sheet.shape == (HEADER + 8 * H, 4 * W, 3)
    for row in range(8):
        assert (tile(sheet, row, 0)[H // 2:, W // 2:] == [255, 0, 0]).all()  # right of and below the label
        assert (tile(sheet, row, 1)[H // 2:] == [0, 0, 255]).all()
        assert np.array_equal(tile(sheet, row, 2), colorize_depth(rendered_depth[0]))
        assert (tile(sheet, row, 2)[:, :5] == 0).all()  # unrendered pixels are black
        depth_tile = tile(sheet, row, 3).astype(int)  # near (bright) on the right in the repaired depth
        assert depth_tile[:, -4:].sum() > depth_tile[:, :4].sum() > 0


def test_few_frames_show_all_and_labels_default_to_indices():
    rendered, rendered_depth, repaired, repaired_depth = (x[:3] for x in clip())
    sheet = repair_contact_sheet(rendered, rendered_depth, repaired, repaired_depth, pick=8, frame_labels=["a", "b", "c"])
    assert sheet.size == (4 * W, HEADER + 3 * H)


def test_mismatched_clips_are_clear_errors():
    rendered, rendered_depth, repaired, repaired_depth = clip()
    with pytest.raises(ValueError, match=r"same number of frames .* \[20, 20, 19, 20\]"):
        repair_contact_sheet(rendered, rendered_depth, repaired[:19], repaired_depth)
    with pytest.raises(ValueError, match="depth \\[T, H, W\\]"):
        repair_contact_sheet(rendered, rendered_depth[..., None], repaired, repaired_depth)
