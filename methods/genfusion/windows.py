"""How a repair round cuts its trajectory into clips for the video prior, and which input frame conditions
each clip.

Windows (official ``OutpaintBase.generate_overlapping_indices`` and the ``run`` loops of ``crop.py`` and
``sparse.py``): ``n = count // length + 2`` clips of ``length`` frames, the first at frame 0 and the last
ending at the last frame; their ``n * length - count`` overlapping frames are spread evenly (``overlap //
(n - 1)`` between neighbours, the remainder before the last clip). Every clip is repaired whole; its frames
already repaired by an earlier clip are dropped (the earlier clip wins).

When the overlap count is smaller than the number of clips, the code adds ``n`` to it so that neighbours
overlap by at least one frame, but keeps the clip count, so the last clip ends ``n`` frames early and the
trajectory's last frames are never repaired (with 16-frame clips: for some counts from 271 frames on, for
every count from 481 on). The ``covering`` rule (the default) adds clips instead until the overlap allows
one frame between neighbours, which leaves the code's windows unchanged wherever the code covers every
frame; ``official`` keeps the code's. Clips that keep no frame (the code repairs some twice, e.g. 16 frames give three clips
at 0) are left out: their repair would be thrown away.

Reference image: the paper (supplement A) takes "the nearest input frame to the target trajectory"; the code
does so in the sparse protocol (``OutpaintSparse.get_ref_views``: the train camera minimising the distance
to the clip's mean position plus 0.5 x (1 - cos) of the angle between its viewing direction and the clip's
mean one) and takes a random train frame in the masked protocol (``OutpaintCrop.get_ref_views``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gfbench.camera import Camera

WINDOW_RULES = ("covering", "official")
REFERENCE_RULES = ("nearest", "random")


@dataclass(frozen=True)
class Window:
    """Trajectory frames ``[start, stop)`` form one clip; frames ``[keep_from, stop)`` of its repair are kept."""

    start: int
    stop: int
    keep_from: int

    @property
    def frames(self) -> range:
        return range(self.start, self.stop)

    @property
    def kept(self) -> range:
        return range(self.keep_from, self.stop)


def official_starts(count: int, length: int) -> list[int]:
    """The code's clip starts for ``count`` frames (``generate_overlapping_indices``)."""
    clips = count // length + 2
    overlap = clips * length - count
    if overlap < clips:
        overlap += clips
    return _spread(clips, overlap, length)


def covering_starts(count: int, length: int) -> list[int]:
    """The code's clip starts, with clips added (not overlap) when neighbours would not overlap."""
    clips = count // length + 2
    while clips * length - count < clips - 1:
        clips += 1
    return _spread(clips, clips * length - count, length)


def _spread(clips: int, overlap: int, length: int) -> list[int]:
    step = length - overlap // (clips - 1)
    starts = [i * step for i in range(clips - 1)]
    last_overlap = overlap - (clips - 2) * (overlap // (clips - 1))
    return starts + [starts[-1] + length - last_overlap]


def overlapping_windows(count: int, length: int = 16, *, rule: str = "covering") -> list[Window]:
    """The clips of a ``count``-frame trajectory, in order, each with the frames it keeps."""
    if rule not in WINDOW_RULES:
        raise ValueError(f"window rule {rule!r} is not one of {', '.join(WINDOW_RULES)}")
    if length < 2:
        raise ValueError(f"a clip needs at least 2 frames, got window length {length}")
    if count < length:
        raise ValueError(f"a repair round needs at least {length} trajectory frames (one clip), got {count}")
    starts = covering_starts(count, length) if rule == "covering" else official_starts(count, length)
    windows, repaired = [], 0
    for start in starts:
        stop = min(start + length, count)
        keep_from = max(start, repaired)
        if keep_from < stop:
            windows.append(Window(start=start, stop=stop, keep_from=keep_from))
            repaired = stop
    return windows


def nearest_reference(
    clip: list[Camera], inputs: list[Camera], *, position_weight: float = 1.0, direction_weight: float = 0.5
) -> int:
    """Index of the input camera nearest the clip: lowest ``position_weight * |center - mean clip center| +
    direction_weight * (1 - forward . mean clip forward)`` (the first on ties)."""
    if not clip or not inputs:
        raise ValueError("nearest reference: need at least one clip camera and one input camera")
    clip_center = np.mean([c.center for c in clip], axis=0)
    clip_forward = np.mean([c.c2w[:3, 2] for c in clip], axis=0)
    clip_forward /= np.linalg.norm(clip_forward)
    centers = np.stack([c.center for c in inputs])
    forwards = np.stack([c.c2w[:3, 2] for c in inputs])
    score = position_weight * np.linalg.norm(centers - clip_center, axis=1)
    score += direction_weight * (1.0 - forwards @ clip_forward)
    return int(np.argmin(score))


def reference_index(rule: str, clip: list[Camera], inputs: list[Camera], rng: np.random.Generator) -> int:
    """The input frame conditioning ``clip``: ``nearest`` (paper; code, sparse) or ``random`` (code, masked)."""
    if rule == "nearest":
        return nearest_reference(clip, inputs)
    if rule == "random":
        return int(rng.integers(len(inputs)))
    raise ValueError(f"reference rule {rule!r} is not one of {', '.join(REFERENCE_RULES)}")


__all__ = [
    "REFERENCE_RULES",
    "WINDOW_RULES",
    "Window",
    "covering_starts",
    "nearest_reference",
    "official_starts",
    "overlapping_windows",
    "reference_index",
]
