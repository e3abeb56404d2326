"""The video prior: a tiny prior saved and loaded back, the official conversions, schedule, sampler step and
guidance against independent computations, clear errors for broken folders, and a loss that learns."""

import copy
import hashlib
import json

import numpy as np
import pytest
import torch

from gfbench.priors import PriorError
from gfbench.priors.video import (
    ENV_VAR, ClipBatch, RGBDVideo, build_video_prior, depth_from_model, depth_to_model, guide, load_video_prior,
    video_prior_spec,
)
from gfbench.priors.video_models import SpatioTemporalUNet, VideoUNet, resolve_video_unet

FRAMES, HEIGHT, WIDTH = 16, 40, 64


def tiny_spec(steps=2, **prior_settings):
    spec = copy.deepcopy(video_prior_spec("tiny"))
    spec["prior"]["sampling"]["steps"] = steps
    spec["prior"].update(prior_settings)
    return spec


def random_video(seed, frames=FRAMES):
    generator = torch.Generator().manual_seed(seed)
    depth = 0.5 + 10 * torch.rand(frames, HEIGHT, WIDTH, generator=generator)
    depth[:, :4, :4] = 0.0  # a corner with nothing rendered
    return RGBDVideo(rgb=torch.rand(frames, HEIGHT, WIDTH, 3, generator=generator), depth=depth)


@pytest.fixture(scope="module")
def saved_prior(tmp_path_factory):
    prior = build_video_prior(tiny_spec(), seed=0)
    folder = prior.save_pretrained(tmp_path_factory.mktemp("prior") / "tiny-video")
    return prior, folder


def test_tiny_prior_round_trip_repairs_identically(saved_prior, monkeypatch):
    built, folder = saved_prior
    video, reference = random_video(1), torch.rand(HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(2))
    monkeypatch.setenv(ENV_VAR, str(folder))
    loaded = load_video_prior()  # through the environment variable, as `--prior` is absent
    first = built.repair(video, reference, seed=7)
    again = loaded.repair(video, reference, seed=7)
    other_seed = loaded.repair(video, reference, seed=8)
    assert first.rgb.shape == (FRAMES, HEIGHT, WIDTH, 3) and first.depth.shape == (FRAMES, HEIGHT, WIDTH)
    assert torch.equal(first.rgb, again.rgb) and torch.equal(first.depth, again.depth)
    assert not torch.equal(first.rgb, other_seed.rgb)
    assert first.rgb.min() >= 0 and first.rgb.max() <= 1
    assert first.depth.min() >= 1 / (1 + 1e-6) - 1e-6 and first.depth.max() <= 1 / 1e-6 * (1 + 1e-6)
    record = loaded.source.as_record()
    assert record["kind"] == "video" and record["path"] == str(folder.resolve())
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert record["files_sha256"]["unet/diffusion_pytorch_model.safetensors"] == hashlib.sha256(
        weights.read_bytes()).hexdigest()
    assert {"prior.json", "scheduler/scheduler_config.json", "image_encoder/model.safetensors",
            "vae/diffusion_pytorch_model.safetensors", "image_proj/diffusion_pytorch_model.safetensors"} <= set(
        record["files_sha256"])
    assert type(loaded.unet) is VideoUNet
    assert {type(p).__name__ for p in loaded.unet.attn_processors.values()} == {"AttnProcessor2_0"}  # SDPA
    assert loaded.image_encoder.config._attn_implementation == "sdpa"


def test_depth_from_frames_uses_short_windows_and_is_deterministic(saved_prior):
    prior, _ = saved_prior
    frames = random_video(3, frames=5).rgb
    depth = prior.estimate_depth(frames, seed=4)
    assert depth.shape == (5, HEIGHT, WIDTH)
    assert torch.equal(depth, prior.estimate_depth(frames, seed=4))
    assert torch.equal(depth, prior.estimate_depth(frames, generator=torch.Generator().manual_seed(4)))
    with pytest.raises(ValueError, match="1 to 16 frames"):
        prior.estimate_depth(random_video(3, frames=17).rgb, seed=0)
    with pytest.raises(ValueError, match="seed or a generator"):
        prior.estimate_depth(frames, seed=1, generator=torch.Generator())


def test_depth_to_normalized_disparity_and_back_is_exact_up_to_the_window_affine_map():
    generator = torch.Generator().manual_seed(0)
    depth = 0.3 + 40 * torch.rand(3, 8, 9, generator=generator, dtype=torch.float64)
    depth[0, 0, :3] = torch.tensor([0.0, -1.0, float("nan")], dtype=torch.float64)
    normalized = depth_to_model(depth)
    valid = np.isfinite(depth.numpy()) & (depth.numpy() > 0)
    disparity = 1.0 / depth.numpy()[valid]
    expected = (disparity - disparity.min()) / (disparity.max() - disparity.min()) * 2 - 1
    np.testing.assert_allclose(normalized.numpy()[valid], expected, atol=1e-6)
    assert (normalized.numpy()[~valid] == -1).all()
    epsilon = 1e-6
    recovered = depth_from_model(normalized.double(), epsilon).numpy()
    # 1 / depth_out - eps is the [0, 1] normalised disparity: the input disparity up to this affine map
    back = (1.0 / recovered[valid] - epsilon) * (disparity.max() - disparity.min()) + disparity.min()
    np.testing.assert_allclose(back, disparity, rtol=1e-5)
    np.testing.assert_allclose(recovered[~valid], 1.0 / epsilon, rtol=1e-9)
    assert recovered[valid].min() == pytest.approx(1 / (1 + epsilon), abs=1e-5)  # the nearest surface
    assert torch.equal(depth_to_model(torch.full((2, 2), 3.0)), torch.zeros(2, 2))  # one plane: no division by 0


def test_scheduler_is_v_prediction_with_zero_terminal_snr_and_official_uniform_steps(saved_prior):
    scheduler = saved_prior[0].scheduler
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.alphas_cumprod[-1].item() == 0.0
    # Independent: scaled-linear betas, then Lin et al. 2023 Algorithm 1, in float64.
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    root = np.sqrt(np.cumprod(1 - betas))
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    alphas_cumprod = root ** 2
    expected_betas = 1 - np.concatenate([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    np.testing.assert_allclose(scheduler.betas.numpy(), expected_betas, rtol=5e-4)  # float32 cancellation
    np.testing.assert_allclose(scheduler.alphas_cumprod.numpy(), alphas_cumprod, atol=1e-6)
    scheduler.set_timesteps(25)
    # GenFusion's DDIM "uniform": range(0, 1000, 1000 // 25) + 1, from the largest.
    assert scheduler.timesteps.tolist() == [t + 1 for t in range(0, 1000, 40)][::-1]


@pytest.mark.parametrize("timestep", [201, 1])
def test_ddim_step_matches_the_official_sampler_with_dynamic_rescale(saved_prior, timestep):
    prior = saved_prior[0]
    prior.scheduler.set_timesteps(25)
    shape = (1, 4, 3, 5, 6)
    latents, velocity = torch.randn(shape), torch.randn(shape)
    stepped = prior._ddim_step(velocity, torch.tensor(timestep), latents, torch.Generator().manual_seed(5))
    # The official p_sample_ddim (eta 1, use_dynamic_rescale, base_scale 0.7, turning_step 400), written out.
    alphas = prior.scheduler.alphas_cumprod.double()
    scale = np.concatenate([np.linspace(1.0, 0.7, 400), np.full(1000, 0.7)])
    previous = timestep - 40
    a_t, a_prev = alphas[timestep], alphas[max(previous, 0)]
    scale_prev = scale[previous] if previous >= 0 else scale[timestep]
    sigma = torch.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    x, v = latents.double(), velocity.double()
    clean = (a_t.sqrt() * x - (1 - a_t).sqrt() * v) * scale_prev / scale[timestep]
    noise_estimate = a_t.sqrt() * v + (1 - a_t).sqrt() * x
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(5)).double()
    expected = a_prev.sqrt() * clean + (1 - a_prev - sigma ** 2).sqrt() * noise_estimate + sigma * noise
    if timestep == 201:
        assert scale_prev / scale[timestep] > 1.01  # the rescale is active at this step
    torch.testing.assert_close(stepped.double(), expected, rtol=1e-4, atol=1e-5)


def test_guidance_with_rescale_matches_the_formula():
    generator = torch.Generator().manual_seed(0)
    conditional = torch.randn(2, 4, 3, 5, 6, generator=generator)
    unconditional = 0.5 * torch.randn(2, 4, 3, 5, 6, generator=generator)
    c, u = conditional.double().numpy(), unconditional.double().numpy()
    guided = u + 3.2 * (c - u)
    axes = (1, 2, 3, 4)
    ratio = c.std(axis=axes, ddof=1, keepdims=True) / guided.std(axis=axes, ddof=1, keepdims=True)
    expected = 0.7 * guided * ratio + 0.3 * guided
    np.testing.assert_allclose(guide(conditional, unconditional, 3.2, 0.7).numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(guide(conditional, unconditional, 3.2, 0.0).numpy(), guided, rtol=1e-5, atol=1e-5)


def test_missing_prior_folder_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(PriorError, match=f"--prior PATH or set {ENV_VAR}"):
        load_video_prior()
    with pytest.raises(PriorError, match="is not a folder"):
        load_video_prior(tmp_path / "nowhere")


@pytest.mark.parametrize("missing", ["prior.json", "unet/diffusion_pytorch_model.safetensors",
                                     "image_encoder/model.safetensors", "scheduler/scheduler_config.json"])
def test_missing_file_is_named(saved_prior, tmp_path, missing):
    folder = tmp_path / "broken"
    saved_prior[0].save_pretrained(folder)
    (folder / missing).unlink()
    with pytest.raises(PriorError, match=missing.split("/")[-1]) as info:
        load_video_prior(folder)
    assert str(info.value).startswith("video prior:") and missing.split("/")[0] in str(info.value)


def test_truncated_weights_are_a_prior_error(saved_prior, tmp_path):
    folder = saved_prior[0].save_pretrained(tmp_path / "truncated")
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(PriorError, match="cannot load .*vae"):
        load_video_prior(folder)


@pytest.mark.parametrize("edit, message", [
    (lambda data: data.pop("latent_scale"), "missing setting 'latent_scale'"),
    (lambda data: data.update(guidance=3.0), "unknown setting 'guidance'"),
    (lambda data: data["sampling"].update(steps="25"), "sampling.steps: expected int"),
    (lambda data: data.update(unet_class="NoSuchUNet"), "unknown unet_class 'NoSuchUNet'"),
    (lambda data: data.update(unet_class="SpatioTemporalUNet"), "saved from 'VideoUNet'"),
])
def test_bad_settings_are_named(saved_prior, tmp_path, edit, message):
    folder = saved_prior[0].save_pretrained(tmp_path / "edited")
    data = json.loads((folder / "prior.json").read_text())
    edit(data)
    (folder / "prior.json").write_text(json.dumps(data))
    with pytest.raises(PriorError, match=message):
        load_video_prior(folder)


def test_another_unet_class_plugs_in_through_the_folder(tmp_path):
    spec = tiny_spec(steps=2, unet_class="SpatioTemporalUNet")
    spec["unet"] = {"in_channels": 8, "out_channels": 4, "block_out_channels": [32, 64], "layers_per_block": 1,
                    "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
                    "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
                    "num_attention_heads": [2, 4], "cross_attention_dim": 32, "addition_time_embed_dim": 32,
                    "projection_class_embeddings_input_dim": 32, "num_frames": 16}
    folder = build_video_prior(spec).save_pretrained(tmp_path / "svd-layout")
    prior = load_video_prior(folder)
    assert type(prior.unet) is SpatioTemporalUNet and json.loads(
        (folder / "unet" / "config.json").read_text())["_class_name"] == "SpatioTemporalUNet"
    video = random_video(5, frames=3)
    repaired = prior.repair(video, video.rgb[0], seed=0)
    assert repaired.rgb.shape == video.rgb.shape and torch.isfinite(repaired.depth).all()


def test_inconsistent_components_and_unet_import_paths():
    spec = tiny_spec()
    spec["image_proj"]["embed_dims"] = 48
    with pytest.raises(PriorError, match="image_proj.embed_dims 48 != image_encoder hidden_size 32"):
        build_video_prior(spec)
    assert resolve_video_unet("gfbench.priors.video_models:SpatioTemporalUNet") is SpatioTemporalUNet
    with pytest.raises(PriorError, match="cannot be imported"):
        resolve_video_unet("gfbench.priors.video_models:Nothing")


def clip_batch(seed):
    target, artifact = random_video(seed), random_video(seed + 1)
    return ClipBatch(target_rgb=target.rgb[None], target_depth=target.depth[None], artifact_rgb=artifact.rgb[None],
                     artifact_depth=artifact.depth[None], reference=target.rgb[:1])


def test_condition_dropout_zeroes_the_reference_image():
    batch = clip_batch(10)
    grey = ClipBatch(**{**batch.__dict__, "reference": torch.full_like(batch.reference, 0.5)})

    def loss(dropout, clips):
        prior = build_video_prior(tiny_spec(condition_dropout=dropout), seed=0)
        return prior.training_loss(clips, torch.Generator().manual_seed(3)).item()

    kept, dropped = loss(0.0, batch), loss(0.999, batch)
    assert kept != dropped
    assert dropped == loss(0.0, grey)  # a dropped reference is the zero (mid-grey) image, nothing else changes


def test_training_loss_falls_on_a_fixed_batch():
    prior = build_video_prior(tiny_spec(), seed=0)
    batch = clip_batch(20)
    parameters = [p for module in prior.trainable_modules().values() for p in module.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=2e-3)
    for module in prior.trainable_modules().values():
        module.train()
    losses = []
    for _ in range(6):
        loss = prior.training_loss(batch, torch.Generator().manual_seed(0))  # same timestep and noise each time
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is None for p in prior.vae.parameters())
    assert losses[-1] < 0.7 * losses[0], losses
