"""Wall time of one GenFusion job (quick preset) on one synthetic-masked scene with a tiny, untrained video prior,
and the wall time of each repair round on the device.

A plumbing check of cost, not a result: an untrained prior returns noise, so the job's scores mean nothing.
Not a pytest module. Run:

    OMP_NUM_THREADS=2 .venv/bin/python tests/perf/bench_genfusion_job.py [--scene tabletop] [--ddim-steps 25]
        [--device cpu] [--data DIR]

The tiny prior keeps its preset's sampling (25 DDIM steps) unless ``--ddim-steps`` says otherwise. The scene is
built into ``--data`` (default: a temporary folder) first and not timed.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

from click.testing import CliRunner

from gfbench import results
from gfbench.cli import main
from gfbench.priors.video import build_video_prior, video_prior_spec


def main_(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", default="tabletop")
    parser.add_argument("--ddim-steps", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = copy.deepcopy(video_prior_spec("tiny"))
        if args.ddim_steps is not None:
            spec["prior"]["sampling"]["steps"] = args.ddim_steps
        prior = build_video_prior(spec, seed=0).save_pretrained(tmp / "tiny-video")
        data = args.data or tmp / "data"
        common = ["run", "--suite", "synthetic-masked", "--method", "genfusion", "--scenes", args.scene,
                  "--prior", str(prior), "--data", str(data), "--device", args.device]
        warm = CliRunner().invoke(main, [*common, "--results", str(tmp / "warm"), "--set", "steps=1"])
        assert warm.exit_code == 0, warm.output  # builds the scene, untimed
        started = time.perf_counter()
        result = CliRunner().invoke(main, [*common, "--results", str(tmp / "results")])
        wall = time.perf_counter() - started
        assert result.exit_code == 0, result.output
        (path,) = list((tmp / "results").rglob("seed0-*.json"))
        record = results.read_record(path)
        rounds = json.loads((path.with_suffix("") / "genfusion" / "rounds.json").read_text())
        print(f"genfusion quick, synthetic-masked/{args.scene}, tiny untrained prior "
              f"({spec['prior']['sampling']['steps']} DDIM steps), {args.device}")
        print(f"job wall time {wall:.1f} s, fit {record['fit_seconds']:.1f} s, {record['config']['steps']} steps")
        for entry in rounds:
            print(f"  round {entry['round']} after {entry['step']} steps: {entry['views']} views, "
                  f"{entry['seconds']:.1f} s")


if __name__ == "__main__":
    main_()
