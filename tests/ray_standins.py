"""Stand-in methods for the Ray executor tests, importable by Ray's worker processes (the tests put this
folder on their PYTHONPATH and register these classes as entry points)."""

import os
import signal
import time
from pathlib import Path

import numpy as np

from gfbench.methods import Render


class MeanColor:
    """Renders the mean color of its train pixels everywhere (deterministic, instant)."""

    name = "mean-color"
    presets_file = str(Path(__file__).with_name("ray_standins.yaml"))

    def __init__(self, device="cpu"):
        self.color = None

    def fit(self, train_views, *, points, config, seed, workdir, progress=None, priors=None):
        self.color = np.mean([v.image.reshape(-1, 3).mean(0) for v in train_views], axis=0) / 255.0
        self.color = np.clip(self.color + 0.01 * seed, 0, 1)  # seeds give different numbers
        (Path(workdir) / "fit.txt").write_text(str(os.getpid()))

    def render(self, cameras):
        return [Render(np.broadcast_to(self.color, (c.height, c.width, 3)).astype(np.float32)) for c in cameras]


class Crashes(MeanColor):
    name = "crashes"

    def fit(self, *args, **kwargs):
        raise RuntimeError("injected crash")


class DiesOnce(MeanColor):
    """Kills its own worker process on the first attempt (the marker file tells the attempts apart)."""

    name = "dies-once"
    resources = {"cpus": 1}

    def fit(self, train_views, *, config, **kwargs):
        marker = Path(config["marker"])
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        super().fit(train_views, config=config, **kwargs)


class SlowOnce(MeanColor):
    """On the first attempt: says so with a marker file, then takes far longer than any test waits."""

    name = "slow-once"

    def fit(self, train_views, *, config, **kwargs):
        marker = Path(config["marker"])
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(120)
        super().fit(train_views, config=config, **kwargs)


class AlwaysDies(MeanColor):
    name = "always-dies"

    def fit(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)


ENTRY_POINTS = {"mean-color": "MeanColor", "crashes": "Crashes", "dies-once": "DiesOnce", "always-dies": "AlwaysDies",
                 "slow-once": "SlowOnce"}
