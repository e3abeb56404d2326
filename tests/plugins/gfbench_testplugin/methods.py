"""Two third-party methods built on gfbench's public contract only.

- ``addview``: 3DGS that adds an extra view source at step ``extra_start`` with weight ``extra_weight`` and
  removes it at step ``extra_stop``, through a step callback; it writes its training history to the job folder.
- ``depthprobe``: needs a depth prior; writes what ``priors["depth"].predict`` returned for its train views.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gfbench.methods import Capabilities, Render
from gfbench.methods.core.training import Trainer, TrainView, ViewSource
from gfbench.methods.gs3d import GaussianSplatting3D

HERE = Path(__file__).parent


class AddView(GaussianSplatting3D):
    name = "addview"
    presets_file = HERE / "addview.yaml"

    def setup(self, trainer: Trainer) -> None:
        config = self.config
        first = trainer.train_views[0]
        extra = TrainView.from_camera(first.camera, trainer.device, name="extra", image=first.image, mask=first.mask)

        def add(trainer: Trainer, step: int) -> None:
            trainer.add_source(ViewSource("extra", [extra], weight=config["extra_weight"]))

        def remove(trainer: Trainer, step: int) -> None:
            trainer.remove_source("extra")

        trainer.add_callback(add, start=config["extra_start"], until=config["extra_start"])
        trainer.add_callback(remove, start=config["extra_stop"], until=config["extra_stop"])

    def fit(self, train_views, *, points, config, seed, workdir, progress=None, priors=None):
        super().fit(train_views, points=points, config=config, seed=seed, workdir=workdir, progress=progress,
                    priors=priors)
        Path(workdir).mkdir(parents=True, exist_ok=True)
        (Path(workdir) / "history.json").write_text(json.dumps(self.history))


class DepthProbe:
    name = "depthprobe"
    capabilities = Capabilities(priors=("depth",))

    def __init__(self, device: str = "cpu"):
        self.color = None

    def fit(self, train_views, *, points, config, seed, workdir, progress=None, priors):
        depth = priors["depth"]
        maps = depth.predict([view.image for view in train_views])
        Path(workdir).mkdir(parents=True, exist_ok=True)
        np.savez(Path(workdir) / "depth.npz", **{view.name: m for view, m in zip(train_views, maps)})
        (Path(workdir) / "prior.json").write_text(json.dumps({"name": depth.source.name,
                                                              "novel_images": depth.novel_images}))
        self.color = np.mean([v.image.reshape(-1, 3).mean(0) for v in train_views], axis=0) / 255.0

    def render(self, cameras):
        return [Render(np.broadcast_to(self.color, (c.height, c.width, 3)).astype(np.float32)) for c in cameras]
