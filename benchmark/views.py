"""What a protocol hands to a method (train views) and scores against (test views)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gfbench.camera import Camera


@dataclass
class View:
    """One image with its camera, as a method sees it.

    Train views may be crops of their frame (smaller size, shifted principal point); test views are
    whole frames. ``frame_index`` is the absolute index of the source frame in the sorted scene.
    ``mask`` marks pixels that count (True) where a protocol restricts a view; ``coverage`` (test views
    only, when known) marks pixels that some train view observed.
    """

    name: str
    frame_index: int
    image: np.ndarray
    camera: Camera
    depth: np.ndarray | None = None
    mask: np.ndarray | None = None
    coverage: np.ndarray | None = None
    box: tuple[int, int, int, int] | None = None  # (x, y, width, height) in the source frame, for crops
