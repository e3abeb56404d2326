"""``gfbench train-prior`` (issue 15): the loss falls on a fixed batch, a resumed run reaches exactly the state of an
uninterrupted one, and the output folder loads as a prior."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from gfbench.clips import Clip
from gfbench.priors.training import PriorTrainer, TrainSettings, TrainingError, clip_tensors, split_by_scene
from gfbench.priors.video import DiffusionVideoPrior, build_video_prior


def synthetic_clips(count: int, scenes: int = 2, frames: int = 16, height: int = 40, width: int = 64) -> list[Clip]:
    """Smooth random RGB-D clips (a blurred copy as the artifact video)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        base = rng.random((frames, height // 8, width // 8, 3))
        target = np.kron(base, np.ones((1, 8, 8, 1)))
        depth = 1.0 + np.kron(rng.random((frames, height // 8, width // 8)), np.ones((1, 8, 8)))
        artifact = 0.5 * target + 0.25
        out.append(Clip(artifact_rgb=(artifact * 255).astype(np.uint8), artifact_depth=depth.astype(np.float32) * 1.1,
                        target_rgb=(target * 255).astype(np.uint8), target_depth=depth.astype(np.float32),
                        reference=(target[0] * 255).astype(np.uint8), info={"scene": f"s{i % scenes}"}))
    return out


def settings(**overrides) -> TrainSettings:
    return TrainSettings.defaults().with_overrides(**{"steps": 4, "batch_size": 1, "checkpoint_every": 2,
                                                      "validate_every": 2, **overrides})


def test_defaults_are_the_papers():
    defaults = TrainSettings.defaults()
    assert defaults.learning_rate == 1e-5 and defaults.batch_size == 2
    with pytest.raises(TrainingError, match="val_fraction must be in"):
        defaults.with_overrides(val_fraction=1.5)


def test_train_prior_help_quotes_the_defaults_of_training_json():
    """The command's help takes its default numbers from video_presets/training.json, so editing the file
    cannot leave the help stale."""
    from click.testing import CliRunner

    from gfbench.cli import main
    from gfbench.priors import training_defaults

    defaults = training_defaults()
    help_text = " ".join(CliRunner().invoke(main, ["train-prior", "--help"]).output.split())
    for key in ("steps", "checkpoint_every", "validate_every", "autoencoder_steps"):
        assert f"(default {defaults[key]}" in help_text
    for key in ("learning_rate", "autoencoder_learning_rate", "autoencoder_kl_weight", "zero_depth_fraction"):
        assert f"(default {defaults[key]:g}" in help_text


def test_loss_falls_on_a_fixed_batch(tmp_path):
    prior = build_video_prior("tiny", seed=0)
    data = clip_tensors(synthetic_clips(1, scenes=1), prior)
    trainer = PriorTrainer(prior, data, None, settings(learning_rate=2e-3, steps=25), tmp_path, device="cpu")

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(prior.training_loss(data.batch(torch.tensor([0]), torch.device("cpu")),
                                             torch.Generator().manual_seed(7)))

    before = fixed_loss()
    trainer.settings = settings(learning_rate=2e-3, steps=25, checkpoint_every=1000, validate_every=1000)
    trainer.run()
    after = fixed_loss()
    assert after < 0.7 * before, (before, after)


def _parameters(prior: DiffusionVideoPrior) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value.detach().clone() for name, module in prior.trainable_modules().items()
            for key, value in module.state_dict().items()}


def test_a_resumed_run_reaches_the_state_of_an_uninterrupted_one(tmp_path):
    clips = synthetic_clips(3)
    train, val = split_by_scene(clips, 0.5)
    assert {c.info["scene"] for c in val} == {"s1"} and {c.info["scene"] for c in train} == {"s0"}

    def trainer(out, steps):
        prior = build_video_prior("tiny", seed=0)
        return PriorTrainer(prior, clip_tensors(train, prior), clip_tensors(val, prior),
                            settings(steps=steps, learning_rate=1e-3), out, device="cpu")

    whole = trainer(tmp_path / "whole", 4)
    whole.run()
    first = trainer(tmp_path / "split", 2)
    first.run()
    second = trainer(tmp_path / "split", 4)
    assert second.resume() and second.step == 2
    folder = second.run()
    expected, got = _parameters(whole.prior), _parameters(second.prior)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert whole.history == second.history and len(whole.history["val"]) == 2
    initial = _parameters(build_video_prior("tiny", seed=0))
    assert any(not torch.equal(initial[key], got[key]) for key in got)  # training moved the weights
    loaded = DiffusionVideoPrior.from_pretrained(folder)
    for key, value in _parameters(loaded).items():
        assert torch.equal(value, got[key]), key
    assert (tmp_path / "split" / "loss_curve.png").stat().st_size > 0


# ---------------------------------------------------------------- the autoencoder stage


def test_the_autoencoder_stage_trains_the_vae_alone_and_calibrates_the_latent_scale(tmp_path):
    from gfbench.priors.training import AUTOENCODER, load_trained_autoencoder

    prior = build_video_prior("tiny", seed=0)
    data = clip_tensors(synthetic_clips(1, scenes=1), prior)
    frozen = _parameters(prior)
    vae_before = {k: v.clone() for k, v in prior.vae.state_dict().items()}
    stage = PriorTrainer(prior, data, None, settings(autoencoder_steps=30, autoencoder_learning_rate=3e-3, autoencoder_frames=32,
                                                     checkpoint_every=1000, validate_every=1000),
                         tmp_path, device="cpu", stage=AUTOENCODER)

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(prior.autoencoder_loss(data.batch(torch.tensor([0]), torch.device("cpu")),
                                                torch.Generator().manual_seed(7), 1e-4))

    before = fixed_loss()
    folder = stage.run()
    assert fixed_loss() < 0.7 * before
    assert folder == tmp_path / AUTOENCODER / "vae"
    for key, value in _parameters(prior).items():  # the UNet and resampler are untouched
        assert torch.equal(value, frozen[key]), key
    assert any(not torch.equal(v, vae_before[k]) for k, v in prior.vae.state_dict().items())
    assert not any(p.requires_grad for p in prior.vae.parameters())
    # 1 / std of the latents of the clip's target video, computed independently:
    video = prior.model_inputs(data.batch(torch.tensor([0]), torch.device("cpu")))[0].flatten(0, 1)
    with torch.no_grad():
        std = float(prior.vae.encode(video).latent_dist.mean.std())
    assert prior.settings.latent_scale == pytest.approx(1.0 / std, rel=0.1)

    fresh = build_video_prior("tiny", seed=0)
    assert load_trained_autoencoder(fresh, tmp_path)
    assert fresh.settings.latent_scale == prior.settings.latent_scale
    for key, value in prior.vae.state_dict().items():
        assert torch.equal(value, fresh.vae.state_dict()[key]), key
    assert not load_trained_autoencoder(build_video_prior("tiny", seed=0), tmp_path / "elsewhere")


def _clip_folder(folder, clips: list[Clip]) -> None:
    from gfbench.clips import write_scene_clips

    for scene in sorted({c.info["scene"] for c in clips}):
        mine = [c for c in clips if c.info["scene"] == scene]
        write_scene_clips(folder, scene, [
            {"key": f"s0_c{i:05d}", "artifact_rgb": c.artifact_rgb, "artifact_depth": c.artifact_depth,
             "target_rgb": c.target_rgb, "target_depth": c.target_depth, "reference": c.reference,
             "info": c.info} for i, c in enumerate(mine)], {"method": "test"})


def test_train_prior_command_trains_the_vae_then_the_diffusion_and_resumes(tmp_path):
    from click.testing import CliRunner

    from gfbench.cli import main

    clips_dir = tmp_path / "clips"
    _clip_folder(clips_dir, synthetic_clips(3, height=80, width=128))  # another size and aspect than the prior's
    out = tmp_path / "trained"
    args = ["train-prior", "--clips", str(clips_dir), "--out", str(out), "--init", "tiny", "--batch-size", "1",
            "--autoencoder-steps", "2", "--checkpoint-every", "1", "--validate-every", "1", "--device", "cpu"]
    first = CliRunner().invoke(main, [*args, "--steps", "1"])
    assert first.exit_code == 0, first.output
    assert "2 training clips, 1 validation clips" in first.output
    scale = json.loads((out / "autoencoder" / "vae" / "latent_scale.json").read_text())["latent_scale"]
    second = CliRunner().invoke(main, [*args, "--steps", "2"])
    assert second.exit_code == 0, second.output
    assert "diffusion: resumed at step 1" in second.output and "autoencoder: resumed" not in second.output
    prior = DiffusionVideoPrior.from_pretrained(out / "prior")
    assert prior.settings.latent_scale == scale and (prior.settings.width, prior.settings.height) == (64, 40)
    trained_vae = AutoencoderKL.from_pretrained(out / "autoencoder" / "vae")
    for key, value in trained_vae.state_dict().items():
        assert torch.equal(value, prior.vae.state_dict()[key]), key
    history = json.loads((out / "losses.json").read_text())
    assert [step for step, _ in history["train"]] == [1, 2]
    assert (out / "autoencoder" / "loss_curve.png").stat().st_size > 0
    assert Image.open(out / "repairs.png").size[1] == 18 + 3 * 80  # one held-out clip: artifact, repaired, target (x2)


def test_zeroed_depth_clips_see_the_depth_estimate_input():
    prior = build_video_prior("tiny", seed=0)
    clip = synthetic_clips(1, scenes=1)[0]
    flat = dataclasses.replace(clip, artifact_depth=np.full_like(clip.artifact_depth, 2.0))  # disparity 0
    batch, flat_batch = (clip_tensors([c], prior).batch(torch.tensor([0]), torch.device("cpu")) for c in (clip, flat))

    def loss(data, fraction: float) -> float:
        with torch.no_grad():
            return float(prior.training_loss(data, torch.Generator().manual_seed(3), fraction))

    assert loss(batch, 1.0) == loss(flat_batch, 1.0)  # every clip zeroed: the depth input no longer matters
    assert loss(batch, 0.0) != loss(flat_batch, 0.0)  # without zeroing it does
    with pytest.raises(TrainingError, match="zero_depth_fraction"):
        TrainSettings.defaults().with_overrides(zero_depth_fraction=1.5)


def test_the_diffusion_stage_s_cached_posteriors_give_the_loss_of_encoding_each_step():
    from gfbench.priors.training import clip_posteriors

    prior = build_video_prior("tiny", seed=0)
    data = clip_tensors(synthetic_clips(3, scenes=1), prior)
    cached = clip_posteriors(prior, data, chunk=2)  # chunked differently from the batch below
    indices = torch.tensor([2, 0])
    chosen = cached.batch(indices)
    with torch.no_grad():
        direct = prior.training_loss(data.batch(indices, torch.device("cpu")), torch.Generator().manual_seed(5), 0.5)
        from_cache = prior.posterior_training_loss(chosen["target"], chosen["artifact"], chosen["zero_depth"],
                                                   chosen["references"], torch.Generator().manual_seed(5), 0.5)
    assert float(from_cache) == pytest.approx(float(direct), rel=1e-5)
