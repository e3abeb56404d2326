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
    only, when known) marks pixels that some train view observed. A crop keeps its ``box`` (x, y, width,
    height) in the source frame and the whole frame's camera, ``frame_camera``, so the full frame can be
    rendered exactly even when its size is odd.

    ``depth`` is the stored depth of a test view (the runner's coverage masks use it); train views never
    carry it: depth reaches a method only as a prior (``gfbench.priors``), which every record lists.
    """

    name: str
    frame_index: int
    image: np.ndarray
    camera: Camera
    depth: np.ndarray | None = None
    mask: np.ndarray | None = None
    coverage: np.ndarray | None = None
    box: tuple[int, int, int, int] | None = None  # (x, y, width, height) in the source frame, for crops
    frame_camera: Camera | None = None  # the whole source frame's camera, for crops

    @property
    def full_frame_camera(self) -> Camera:
        """The camera of the whole source frame (``camera`` itself for a view that is not a crop)."""
        return self.frame_camera if self.frame_camera is not None else self.camera
