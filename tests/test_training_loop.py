"""The open training loop's seams, in process: view sources with weights per step, step callbacks, regularizers
that see the view, densification strategies chosen by config (a method's own class, gsplat's MCMC), growing
Gaussians, and the full-frame camera of cropped views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gfbench import specs
from gfbench.camera import Camera
from gfbench.methods import ConfigError, load_preset
from gfbench.methods.core.densify import append_gaussians
from gfbench.methods.core.strategies import MCMC, OpacityResettingStrategy, make_strategy
from gfbench.methods.core.training import TrainView, ViewSource
from gfbench.methods.gs2d import GaussianSurfels2D
from gfbench.methods.gs3d import GaussianSplatting3D
from gfbench.protocols import make_split
from helpers import orbit_camera, orbit_views, random_points, tiny_scene

STEPS = 12


def camera(i: int) -> Camera:
    return orbit_camera(i, 0.3)


@pytest.fixture(scope="module")
def views():
    return orbit_views(0.3)


@pytest.fixture(scope="module")
def points():
    return random_points()


def config(name="3dgs", **overrides):
    schedule = dict(steps=STEPS, log_every=1, refine_start_iter=2, refine_every=4, refine_stop_iter=11, reset_every=100)
    return {**load_preset(name, "quick"), **schedule, **overrides}


class SpyStrategy(OpacityResettingStrategy):
    """The default strategy, recording the size of every render whose statistics it receives."""

    calls: list = []

    def step_post_backward(self, params, optimizers, state, step, info, packed=False):
        SpyStrategy.calls.append((step, info["width"], info["height"]))
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)


class CountingSource(ViewSource):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def loss(self, trainer, rendered, view, step):
        self.seen.append((step, self.weight_at(step), rendered.rgb.shape[:2]))
        return super().loss(trainer, rendered, view, step)


class Hooked(GaussianSplatting3D):
    """3DGS with its own strategy, a callback and a second view source whose weight depends on the step."""

    name = "hooked"
    strategies = {"spy": SpyStrategy}

    def setup(self, trainer):
        self.callback_steps, self.sources_at = [], {}
        big = trainer.train_views[0].camera
        wide = Camera(big.K * np.array([[2, 1, 2], [1, 2, 2], [1, 1, 1]]), big.c2w, 32, 24)
        image = torch.rand(24, 32, 3, generator=torch.Generator().manual_seed(0))
        self.extra = CountingSource("wide", [TrainView.from_camera(wide, trainer.device, name="wide", image=image)],
                                    weight=lambda step: 0.0 if step < 3 else 0.1 * step)
        trainer.add_source(self.extra)
        trainer.add_callback(lambda t, step: self.callback_steps.append(step), start=2, every=3, until=8)
        trainer.add_callback(lambda t, step: self.sources_at.setdefault(step, list(t.sources)), start=0)


def test_sources_weights_callbacks_and_an_own_strategy(views, points, tmp_path):
    SpyStrategy.calls = []
    method = Hooked()
    method.fit(views, points=points, config=config(strategy="spy"), seed=0, workdir=tmp_path)
    assert method.callback_steps == [2, 5, 8]
    assert all(sources == ["train", "wide"] for sources in method.sources_at.values())
    # the extra source renders (full 32x24 frame) only where its weight is non-zero, with that weight
    assert [(s, w) for s, w, _ in method.extra.seen] == [(s, pytest.approx(0.1 * s)) for s in range(3, STEPS)]
    assert all(shape == (24, 32) for _, _, shape in method.extra.seen)
    # densification statistics come from the train view only (16x12), once per step
    assert SpyStrategy.calls == [(step, 16, 12) for step in range(STEPS)]
    for entry in method.history:
        step = int(entry["step"]) - 1
        assert ("wide/weight" in entry) == (step >= 3)


class Pseudo(ViewSource):
    """Views without an image: only a term of the source's own (the mean rendered depth) applies."""

    def loss(self, trainer, rendered, view, step):
        terms = super().loss(trainer, rendered, view, step)
        assert "rgb" not in terms  # no image, no photometric term
        return {"depth": rendered.depth.mean(), **terms}


class WithPseudo(GaussianSurfels2D):
    name = "with-pseudo"

    def setup(self, trainer):
        self.regularized_views = []
        pseudo = [TrainView.from_camera(camera(7), trainer.device, name="pseudo7")]
        trainer.add_source(Pseudo("pseudo", pseudo, weight=0.5))
        trainer.add_source(ViewSource("copy", trainer.train_views[:1], weight=0.5, regularized=True))

    def regularization(self, rendered, view, step):
        self.regularized_views.append(view.name)
        return super().regularization(rendered, view, step)


def test_pseudo_views_and_regularizers_that_see_the_view(views, points, tmp_path):
    method = WithPseudo()
    method.fit(views, points=points, config=config("2dgs", dist_start_iter=0), seed=0, workdir=tmp_path)
    last = method.history[-1]
    assert "pseudo/depth" in last and "pseudo/rgb" not in last and "copy/rgb" in last and "copy/dist" in last
    assert last["loss"] == pytest.approx(last["rgb"] + last["dist"] + 0.5 * last["pseudo/loss"]
                                         + 0.5 * last["copy/loss"], rel=1e-5)
    # the train views and the regularized copy, never the pseudo view
    assert set(method.regularized_views) == {v.name for v in views}
    assert method.regularized_views.count("v0") > STEPS  # train draws of v0 plus the copy every step


class TwoFeeders(GaussianSplatting3D):
    name = "two-feeders"

    def setup(self, trainer):
        trainer.add_source(ViewSource("also", trainer.train_views[:1], feeds_densification=True))


def test_at_most_one_render_feeds_the_statistics_per_step(views, points, tmp_path):
    with pytest.raises(RuntimeError, match="2 renders feed the densification statistics.*train, also"):
        TwoFeeders().fit(views, points=points, config=config(), seed=0, workdir=tmp_path)


def test_source_names_and_removal_are_checked(views, points, tmp_path):
    class Twice(GaussianSplatting3D):
        def setup(self, trainer):
            with pytest.raises(ValueError, match="already training"):
                trainer.add_source(ViewSource("train", []))
            with pytest.raises(KeyError, match="no view source named 'nope'"):
                trainer.remove_source("nope")
            with pytest.raises(ValueError, match="without '/'"):
                ViewSource("a/b", [])
            self.checked = True

    method = Twice()
    method.fit(views, points=points, config=config(steps=1), seed=0, workdir=tmp_path)
    assert method.checked


def test_default_strategy_comes_from_the_config():
    strategy = make_strategy(load_preset("2dgs", "paper"), gradient_key="gradient_2dgs")
    assert type(strategy) is OpacityResettingStrategy and strategy.key_for_gradient == "gradient_2dgs"
    assert (strategy.prune_opa, strategy.reset_every, strategy.grow_grad2d) == (0.05, 3000, 2e-4)


def test_mcmc_is_built_from_the_config_and_refused_on_the_cpu():
    mcmc = {**load_preset("3dgs", "paper"), "strategy": "mcmc", "mcmc_cap_max": 5000, "mcmc_noise_lr": 5e5,
            "mcmc_min_opacity": 0.005, "mcmc_opacity_reg": 0.01, "mcmc_scale_reg": 0.02}
    strategy = make_strategy(mcmc, gradient_key="means2d")
    assert isinstance(strategy, MCMC)
    assert (strategy.cap_max, strategy.scale_reg, strategy.refine_every) == (5000, 0.02, 100)
    params = {"opacities": torch.zeros(4), "scales": torch.log(torch.full((4, 3), 2.0))}
    terms = strategy.loss_terms(params, 0)
    assert float(terms["opacity_reg"]) == pytest.approx(0.01 * 0.5) and float(terms["scale_reg"]) == pytest.approx(0.04)
    with pytest.raises(ConfigError, match="strategy 'mcmc' runs on cuda only, not cpu"):
        GaussianSplatting3D.check_config(mcmc, device="cpu")
    GaussianSplatting3D.check_config(mcmc, device="cuda")
    with pytest.raises(ConfigError, match="needs setting 'mcmc_cap_max'"):
        make_strategy({**mcmc, "mcmc_cap_max": None}, gradient_key="means2d")
    with pytest.raises(ConfigError, match="'strategy' = 'nope'.*expected one of default, mcmc"):
        GaussianSplatting3D.check_config({**mcmc, "strategy": "nope"}, device="cpu")


def test_append_gaussians_grows_parameters_moments_and_statistics():
    params = torch.nn.ParameterDict({"means": torch.nn.Parameter(torch.randn(5, 3)),
                                     "opacities": torch.nn.Parameter(torch.zeros(5))})
    optimizers = {k: torch.optim.Adam([{"params": [p], "lr": 0.1, "name": k}]) for k, p in params.items()}
    sum(p.sum() for p in params.values()).backward()
    for optimizer in optimizers.values():
        optimizer.step()
    old_means = params["means"].detach().clone()
    old_moment = optimizers["means"].state[params["means"]]["exp_avg"].clone()
    state = {"grad2d": torch.ones(5), "count": torch.full((5,), 3.0), "scene_scale": 1.0}
    added = append_gaussians(params, optimizers, state, {"means": torch.full((2, 3), 7.0), "opacities": torch.ones(2)})
    assert added == 2 and params["means"].shape == (7, 3) and params["opacities"].shape == (7,)
    assert torch.equal(params["means"][:5], old_means) and torch.equal(params["means"][5:], torch.full((2, 3), 7.0))
    moments = optimizers["means"].state[params["means"]]
    assert torch.equal(moments["exp_avg"][:5], old_moment) and moments["exp_avg"][5:].abs().max() == 0
    assert optimizers["means"].param_groups[0]["params"][0] is params["means"]
    assert state["grad2d"].tolist() == [1] * 5 + [0, 0] and state["count"].tolist() == [3] * 5 + [0, 0]
    params["means"].sum().backward()  # the grown parameters keep training
    optimizers["means"].step()
    with pytest.raises(ValueError, match="exactly the parameters"):
        append_gaussians(params, optimizers, state, {"means": torch.zeros(1, 3)})


def test_cropped_train_views_keep_the_full_frame_camera_and_no_depth():
    scene = tiny_scene(frames=6, width=25, height=17, depth=True)  # odd sizes: the box alone cannot say 25x17
    split = make_split(scene, specs.load_suite("synthetic-masked").protocol)
    for view in split.train:
        frame = scene.frames[view.frame_index]
        assert view.box is not None and view.camera.width == 12 and view.full_frame_camera is frame.camera
        assert view.depth is None
        full = TrainView.from_view(view, "cpu").full_camera
        assert (full.width, full.height) == (25, 17) and np.array_equal(full.K, frame.camera.K)
    assert all(v.depth is not None and v.full_frame_camera is v.camera for v in split.test)


class ConstantDepth:
    """A depth prior stand-in: each image's mean brightness as a constant map."""

    def __init__(self):
        from gfbench.priors import PriorSource

        self.source, self.seen = PriorSource(kind="depth", name="constant"), []

    def predict(self, images):
        self.seen.extend(np.asarray(image).dtype for image in images)
        return [np.full(np.asarray(image).shape[:2], np.asarray(image).mean(), np.float32) for image in images]


class DepthRegularized(GaussianSplatting3D):
    """Depth estimates of the train views attached in ``setup``, read back by a regularizer (FSGS's pattern)."""

    name = "depth-regularized"

    def setup(self, trainer):
        self.workdir = trainer.workdir
        maps = trainer.priors["depth"].predict([view.image for view in trainer.views])
        for view, depth in zip(trainer.train_views, maps):
            view.data["depth_prior"] = torch.as_tensor(depth, device=trainer.device)
        self.terms = []

    def regularization(self, rendered, view, step):
        prior = view.data["depth_prior"]
        assert prior.shape == rendered.depth.shape
        term = 0.01 * ((rendered.depth - rendered.depth.mean()) * (prior - prior.mean())).mean().abs()
        self.terms.append((view.name, float(prior[0, 0])))
        return {"depth_corr": term}


def test_priors_reach_the_train_views_and_regularizers_through_setup(views, points, tmp_path):
    from gfbench.priors import Priors

    prior = ConstantDepth()
    method = DepthRegularized()
    method.fit(views, points=points, config=config(steps=4), seed=0, workdir=tmp_path, priors=Priors({"depth": prior}))
    assert prior.seen == [np.dtype(np.uint8)] * len(views)  # the views as given, uint8 images
    assert method.workdir == tmp_path
    means = {view.name: view.image.mean() for view in views}
    assert len(method.terms) == 4 and all(value == pytest.approx(means[name]) for name, value in method.terms)
    assert all("depth_corr" in entry for entry in method.history)
    with pytest.raises(Exception, match="this job was given no depth prior"):
        DepthRegularized().fit(views, points=points, config=config(steps=1), seed=0, workdir=tmp_path)
