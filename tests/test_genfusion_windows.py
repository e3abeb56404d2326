"""GenFusion's clips of a repair trajectory (coverage, the earlier-wins rule, the official stride and its gap)
and the reference frame of a clip."""

from __future__ import annotations

import numpy as np
import pytest

from gfbench.camera import Camera, intrinsics, look_at
from gfbench.methods.genfusion.windows import Window, nearest_reference, overlapping_windows, reference_index


@pytest.mark.parametrize("length", [16, 8])
def test_covering_windows_cover_every_frame_exactly_once_with_full_clips(length):
    for count in range(length, 700):
        windows = overlapping_windows(count, length)
        kept = [frame for w in windows for frame in w.kept]
        assert kept == list(range(count)), count
        assert all(w.stop - w.start == length for w in windows), count  # the prior always gets a whole clip
        assert windows[0].keep_from == 0
        for earlier, later in zip(windows, windows[1:]):
            assert later.start <= earlier.stop and later.keep_from == earlier.stop  # overlap, earlier wins


# starts of the official stride, worked out by hand from generate_overlapping_indices
OFFICIAL = {
    16: [0],
    17: [0, 1],
    50: [0, 9, 18, 27, 34],
    85: [0, 12, 24, 36, 48, 60, 69],  # the sparse protocol's ellipse
    150: [0, 14, 28, 42, 56, 70, 84, 98, 112, 126, 134],
}


@pytest.mark.parametrize("count", sorted(OFFICIAL))
def test_the_official_stride_where_it_covers(count):
    for rule in ("official", "covering"):
        assert [w.start for w in overlapping_windows(count, 16, rule=rule)] == OFFICIAL[count]
    assert overlapping_windows(85)[1] == Window(start=12, stop=28, keep_from=16)


def test_the_official_stride_leaves_the_last_frames_of_long_trajectories_unrepaired():
    kept = [f for w in overlapping_windows(271, 16, rule="official") for f in w.kept]
    assert kept == list(range(253))  # its last clip ends 18 frames early
    assert [f for w in overlapping_windows(271, 16) for f in w.kept] == list(range(271))


def test_too_short_trajectories_and_bad_rules_are_clear_errors():
    with pytest.raises(ValueError, match="at least 16 trajectory frames"):
        overlapping_windows(15, 16)
    with pytest.raises(ValueError, match="window rule 'spread'"):
        overlapping_windows(40, 16, rule="spread")


def camera(eye, target) -> Camera:
    return Camera(intrinsics(50, 50, 32, 24), look_at(np.array(eye, float), np.array(target, float)), 64, 48)


def test_nearest_reference_weighs_distance_against_direction():
    # a clip at x in [-0.1, 0.1] looking along +y
    clip = [camera([x, 0, 0], [x, 10, 0]) for x in (-0.1, 0.0, 0.1)]
    behind = camera([0.1, 0, 0], [0.1, -10, 0])  # distance 0.1, opposite direction: 0.1 + 0.5 * 2 = 1.1
    sideways = camera([0, 0.3, 0], [10, 0.3, 0])  # distance 0.3, at 90 degrees: 0.3 + 0.5 * 1 = 0.8
    aligned = camera([0, 0, 0.5], [0, 10, 0.5])  # distance 0.5, same direction: 0.5
    assert nearest_reference(clip, [behind, sideways, aligned]) == 2
    farther = camera([0, 0, 0.9], [0, 10, 0.9])  # 0.9: now the sideways camera wins
    assert nearest_reference(clip, [behind, sideways, farther]) == 1
    assert nearest_reference(clip, [behind, sideways, farther], direction_weight=0.0) == 0
    assert nearest_reference(clip, [aligned, aligned]) == 0  # ties: the first


def test_reference_rules():
    clip = [camera([0, 0, 0], [0, 10, 0])]
    inputs = [camera([5, 0, 0], [5, 10, 0]), camera([0, 0, 0.1], [0, 10, 0.1])]
    assert reference_index("nearest", clip, inputs, np.random.default_rng(0)) == 1
    drawn = {reference_index("random", clip, inputs, np.random.default_rng(seed)) for seed in range(20)}
    assert drawn == {0, 1}
    with pytest.raises(ValueError, match="reference rule 'closest'"):
        reference_index("closest", clip, inputs, np.random.default_rng(0))
