"""How CPU training splits the threads (``rasterize_cpu.split_threads``): PyTorch on one thread while the compiled
kernels keep the process's threads, a depth or video model inside the loop back on all of them, everything
restored afterwards (also after an error), and the same trained Gaussians, bit for bit, as without the split."""

from __future__ import annotations

import copy

import pytest
import torch

from gfbench import specs
from gfbench.methods import load_preset
from gfbench.methods.core import rasterize_cpu as rc
from gfbench.methods.fsgs import FSGS
from gfbench.methods.genfusion import GenFusion, resolve_preset
from gfbench.methods.gs2d import GaussianSurfels2D
from gfbench.methods.gs3d import GaussianSplatting3D
from gfbench.priors import Priors
from gfbench.priors.video import build_video_prior, load_video_prior, video_prior_spec
from gfbench.protocols import make_split
from helpers import BrightnessDepth, orbit_views, random_points, tiny_scene

PROCESS_THREADS = 2


@pytest.fixture(autouse=True)
def two_torch_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(PROCESS_THREADS)
    yield
    torch.set_num_threads(saved)


def kernel_shares() -> list[tuple[int, int]]:
    """The (worker, n_workers) pairs a kernel is called with."""
    calls = []
    rc.run_workers(lambda out, worker, n_workers: out.append((worker, n_workers)), calls)
    return sorted(calls)


def threads_now() -> tuple[int, int]:
    return torch.get_num_threads(), rc.worker_count()


def test_split_threads_keeps_the_kernels_on_the_process_threads():
    assert kernel_shares() == [(0, 2), (1, 2)]
    with rc.split_threads(1):
        assert threads_now() == (1, PROCESS_THREADS)
        assert kernel_shares() == [(0, 2), (1, 2)]
        with rc.full_threads():
            assert threads_now() == (PROCESS_THREADS, PROCESS_THREADS)
        assert threads_now() == (1, PROCESS_THREADS)
    assert threads_now() == (PROCESS_THREADS, PROCESS_THREADS)


def test_split_threads_restores_everything_after_an_error():
    with pytest.raises(RuntimeError, match="in the loop"):
        with rc.split_threads(1):
            raise RuntimeError("in the loop")
    assert threads_now() == (PROCESS_THREADS, PROCESS_THREADS)
    torch.set_num_threads(1)
    assert rc.worker_count() == 1  # the kernels follow PyTorch again: nothing of the split is left


def test_full_threads_outside_a_split_changes_nothing():
    torch.set_num_threads(1)
    with rc.full_threads():
        assert threads_now() == (1, 1)


# --- training ------------------------------------------------------------------------------------------------


def recording(base: type) -> type:
    """``base`` noting (PyTorch threads, kernel threads) at every training step, through its regularization."""

    class Recording(base):
        def regularization(self, rendered, view, step):
            self.seen.add(threads_now())
            return super().regularization(rendered, view, step)

    return Recording


def fit(method_class: type, split: bool, **overrides):
    cls = recording(method_class)
    method = cls(device="cpu")
    method.seen = set()
    method.cpu_training_torch_threads = 1 if split else None
    config = {**load_preset(method_class.name, "quick"), "steps": 14, "log_every": 1, "save_checkpoint": False,
              **overrides}
    method.fit(orbit_views(0.4), points=random_points(), config=config, seed=0, workdir=None)
    return method


@pytest.mark.parametrize("method_class", [GaussianSplatting3D, GaussianSurfels2D])
def test_training_with_the_split_gives_the_same_gaussians_bit_for_bit(method_class):
    config = {"refine_start_iter": 3, "refine_every": 4, "refine_stop_iter": 13, "reset_every": 10,
              "normal_start_iter": 5, "dist_start_iter": 5}
    config = {k: v for k, v in config.items() if k in load_preset(method_class.name, "quick")}
    split, plain = fit(method_class, True, **config), fit(method_class, False, **config)
    assert split.seen == {(1, PROCESS_THREADS)}
    assert plain.seen == {(PROCESS_THREADS, PROCESS_THREADS)}
    assert split.num_gaussians != len(random_points()), "the run should have densified"
    for key in plain.params:
        assert torch.equal(split.params[key], plain.params[key]), key
    assert torch.get_num_threads() == PROCESS_THREADS


def test_fsgs_runs_its_depth_prior_on_every_thread():
    prior = BrightnessDepth()
    config = {**load_preset("fsgs", "quick"), "steps": 6, "log_every": 1, "pseudo_start_iter": 0,
              "pseudo_stop_iter": 6, "pseudo_every": 1, "save_checkpoint": False}
    FSGS().fit(orbit_views(0.4), points=random_points(), config=config, seed=0, workdir=None,
               priors=Priors({"depth": prior}))
    assert len(prior.threads) > 3  # the train images once, then the pseudo views inside the loop
    assert set(prior.threads) == {PROCESS_THREADS}


class ThreadNotingPrior:
    """A video prior that notes PyTorch's threads whenever the diffusion runs."""

    def __init__(self, prior):
        self.prior, self.threads = prior, []

    def __getattr__(self, name):
        return getattr(self.prior, name)

    def repair(self, *args, **kwargs):
        self.threads.append(torch.get_num_threads())
        return self.prior.repair(*args, **kwargs)

    def estimate_depth(self, *args, **kwargs):
        self.threads.append(torch.get_num_threads())
        return self.prior.estimate_depth(*args, **kwargs)


def test_genfusion_runs_its_video_prior_on_every_thread(tmp_path):
    spec = copy.deepcopy(video_prior_spec("tiny"))
    spec["prior"]["sampling"]["steps"] = 1
    prior = ThreadNotingPrior(load_video_prior(build_video_prior(spec, seed=0).save_pretrained(tmp_path / "p")))
    split = make_split(tiny_scene(frames=6, width=24, height=16, seed=0),
                       specs.load_suite("synthetic-masked").protocol, seed=0)
    config = {**resolve_preset("quick", "masked"), "steps": 5, "log_every": 1, "repair_start": 2,
              "repair_every": 4, "repair_until": 5, "save_checkpoint": False}
    method = recording(GenFusion)(device="cpu")
    method.seen = set()
    method.fit(split.train, points=split.points, config=config, seed=0, workdir=tmp_path / "job",
               priors=Priors({"video": prior}))
    assert method.seen == {(1, PROCESS_THREADS)}
    assert len(prior.threads) >= 2  # the train views' depth, then one repair round
    assert set(prior.threads) == {PROCESS_THREADS}
