"""Each method on a real synthetic scene under the synthetic-masked protocol, end to end on the CPU:
train-view PSNR climbs well above its start, and on the test-view pixels some train patch saw, the renders
beat the mean-color image.

Over whole test frames they do not (yet): what no patch saw renders black, and the mean color is closer to it
on average (published synthetic-masked, tabletop: mean color 17.8 dB, 3dgs 15.3 dB whole frame, 23.3 dB on covered
pixels). That is why the suites report covered and uncovered scores apart.
"""

import numpy as np
import pytest

from gfbench import metrics, specs
from gfbench.methods import load_method_class, load_preset
from gfbench.protocols import make_split
from gfbench.synthetic import build_scene

STEPS = 300  # the quick preset's full schedule (densification, one opacity reset)


@pytest.fixture(scope="module")
def split():
    options = {**specs.load_dataset("synthetic").options, "frames": 16, "supersample": 1}
    scene = build_scene("tabletop", options, 128, 72)
    return make_split(scene, specs.load_suite("synthetic-masked").protocol, seed=0)


def mean_score(renders, views, name):
    scores = metrics.score_batch(renders, [v.image for v in views], ["psnr"], coverages=[v.coverage for v in views])
    return float(np.nanmean([s[name] for s in scores]))


@pytest.mark.parametrize("method_name", ["3dgs", "2dgs"])
def test_method_learns_the_masked_synthetic_scene(method_name, split, tmp_path):
    def fitted(steps):
        config = {**load_preset(method_name, "quick"), "steps": steps}
        method = load_method_class(method_name)(device="cpu")
        method.fit(split.train, points=split.points, config=config, seed=0, workdir=tmp_path)
        return method

    train_cameras = [v.camera for v in split.train]
    start_psnr = mean_score([r.rgb for r in fitted(1).render(train_cameras)], split.train, "psnr")
    method = fitted(STEPS)
    train_psnr = mean_score([r.rgb for r in method.render(train_cameras)], split.train, "psnr")
    assert train_psnr > start_psnr + 3, (start_psnr, train_psnr)

    test_renders = method.render([v.camera for v in split.test])
    assert all(r.rgb.shape == v.image.shape and r.depth.shape == v.image.shape[:2] for r, v in zip(test_renders, split.test))
    assert all(v.coverage is not None and v.coverage.any() for v in split.test)
    mean_color = np.mean([v.image.reshape(-1, 3).mean(0) for v in split.train], axis=0) / 255
    flat = [np.broadcast_to(mean_color, v.image.shape).astype(np.float32) for v in split.test]
    covered = mean_score([r.rgb for r in test_renders], split.test, "psnr_covered")
    assert covered > mean_score(flat, split.test, "psnr_covered") + 2
