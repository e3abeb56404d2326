"""A ``gfbench run`` in a child process, for tests that kill it or run two at once.

    python run_worker.py SPECS DATA RESULTS [--kill-at render|commit] [--fit-log FILE] [--fit-seconds S]
                         [--barrier DIR --peers N]

Runs the suite ``test-masked`` of the specs folder SPECS (as ``tests/test_runner.py`` builds it) with the
stand-in method ``mean-color`` on every scene and seeds 0 and 1, then prints the run summary as JSON.
``--kill-at`` makes the process SIGKILL itself at a chosen point: ``render`` right after the first test render
is written, ``commit`` after the job's renders folder is renamed into place and before its record is.
``--fit-log`` appends one line per fit (scene, seed, pid); ``--barrier`` waits until N workers have started,
and then each worker's first fit waits until every worker is fitting something (so the runs overlap).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np


class SlowMeanColor:
    """Renders the mean train color; ``fit`` takes a while and logs itself, so tests can see who did what."""

    name = "mean-color"
    fit_log: Path | None = None
    fit_seconds = 0.0
    peers = 1

    def wait_until_every_peer_fits(self) -> None:
        """Hold the first fit until every worker is inside one, so that the runs overlap for sure."""
        deadline = time.monotonic() + 120
        while len({line.split()[2] for line in self.fit_log.read_text().splitlines()}) < self.peers:
            if time.monotonic() > deadline:
                return  # the others found nothing to do: the test's assertions will say so
            time.sleep(0.05)

    def __init__(self, device="cpu"):
        self.color = None

    def fit(self, train_views, *, points, config, seed, workdir, progress=None):
        if self.fit_log is not None:
            with open(self.fit_log, "a") as log:
                log.write(f"{Path(workdir).parent.parent.name} {seed} {os.getpid()}\n")
            if self.peers > 1:
                self.wait_until_every_peer_fits()
        time.sleep(self.fit_seconds)
        self.color = np.mean([v.image.reshape(-1, 3).mean(0) for v in train_views], axis=0) / 255.0

    def render(self, cameras):
        from gfbench.methods import Render

        return [Render(np.broadcast_to(self.color, (c.height, c.width, 3)).astype(np.float32)) for c in cameras]


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install_kill_point(point: str) -> None:
    from PIL import Image

    from gfbench import results

    if point == "render":
        original_save = Image.Image.save

        def save_then_die(self, fp, *args, **kwargs):
            original_save(self, fp, *args, **kwargs)
            if "renders" in str(fp):
                kill_self()

        Image.Image.save = save_then_die
    elif point == "commit":
        original_replace = results.os.replace

        def replace(src, dst):
            if str(src).endswith(".tmp") and str(dst).endswith(".json"):
                kill_self()  # the renders folder is in place; the record is not
            original_replace(src, dst)

        results.os.replace = replace
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def wait_for_peers(folder: Path, peers: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while len(list(folder.glob("ready-*"))) < peers:
        if time.monotonic() > deadline:
            raise SystemExit("the other workers never started")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("specs")
    parser.add_argument("data")
    parser.add_argument("results")
    parser.add_argument("--kill-at")
    parser.add_argument("--fit-log")
    parser.add_argument("--fit-seconds", type=float, default=0.0)
    parser.add_argument("--barrier")
    parser.add_argument("--peers", type=int, default=1)
    args = parser.parse_args()
    os.environ["GFBENCH_SPECS"] = args.specs

    from gfbench import methods, runner, specs

    SlowMeanColor.fit_log = Path(args.fit_log) if args.fit_log else None
    SlowMeanColor.fit_seconds = args.fit_seconds
    SlowMeanColor.peers = args.peers
    methods._entry_points = lambda: {"mean-color": "__main__:SlowMeanColor"}
    suite = specs.load_suite("test-masked")
    jobs = [runner.Job(suite, scene, "mean-color", seed, {"steps": 7}, "quick")
            for scene in suite.scenes for seed in (0, 1)]
    if args.kill_at:
        install_kill_point(args.kill_at)
    if args.barrier:
        wait_for_peers(Path(args.barrier), args.peers)
    summary = runner.run_suite(jobs, Path(args.results), Path(args.data), show_progress=False)
    print(json.dumps({name: [str(p) for p in getattr(summary, name)]
                      for name in ("done", "skipped", "failed", "shared")}))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
