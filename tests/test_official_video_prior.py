"""The converted released model as a video prior: a tiny official-layout checkpoint, converted, loads through
``load_video_prior`` (the ``--prior`` path) and repairs an RGB-D video end to end on the CPU."""

import copy
import json
from pathlib import Path

import pytest
import torch

from gfbench.priors import PriorError
from gfbench.priors.official import (GenFusionUNet3D, ImageProjector, OfficialArchitecture, OpenCLIPImageEncoder,
                                     convert_checkpoint, load_converted)
from gfbench.priors.official.convert import official_prior_settings
from gfbench.priors.official.synthetic import write_official_layout_sources
from gfbench.priors.video import RGBDVideo, build_video_prior, load_video_prior, video_prior_spec

FIXTURES = Path(__file__).parent / "fixtures" / "official"
SMALL = {"height": 16, "width": 24, "sampling": {"steps": 2, "eta": 1.0, "guidance_scale": 3.2,
                                                 "guidance_rescale": 0.7}}


def tiny_architecture(text_context_len: int) -> OfficialArchitecture:
    data = json.loads((FIXTURES / "tiny_architecture.json").read_text())
    data = copy.deepcopy(data)
    data["unet"]["text_context_len"] = text_context_len
    return OfficialArchitecture.from_dict(data, origin="tiny")


def convert_tiny(root: Path, architecture: OfficialArchitecture, dtype: str = "float32") -> Path:
    checkpoint, vae_dir = write_official_layout_sources(root, architecture)
    return convert_checkpoint(checkpoint, vae_dir, root / "genfusion", architecture=architecture, dtype=dtype,
                              prior_overrides=SMALL)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The tiny model's 6 image tokens: 2 take the "text" projections, 4 the image ones (the released model:
    77 and 179 of 256)."""
    return convert_tiny(tmp_path_factory.mktemp("official-prior"), tiny_architecture(text_context_len=2))


def small_video(frames=3, height=20, width=28):
    generator = torch.Generator().manual_seed(1)
    rgb = torch.rand(frames, height, width, 3, generator=generator)
    depth = 1.0 + 4.0 * torch.rand(frames, height, width, generator=generator)
    depth[:, :3, :5] = 0.0  # holes
    return RGBDVideo(rgb=rgb, depth=depth)


def test_prior_json_holds_the_official_inference_settings():
    settings = official_prior_settings(OfficialArchitecture.official(), "float16")
    assert settings["sampling"] == {"steps": 25, "eta": 1.0, "guidance_scale": 3.2, "guidance_rescale": 0.7}
    assert settings["dynamic_rescale"] == {"base_scale": 0.7, "turning_step": 400}
    assert (settings["num_frames"], settings["height"], settings["width"], settings["fps"]) == (16, 320, 512, 30)
    assert settings["latent_scale"] == 0.18215 and settings["reference"]["size"] == 224
    assert settings["reference"]["mean"] == [0.48145466, 0.4578275, 0.40821073]
    assert settings["unet_class"] == "gfbench.priors.official:GenFusionUNet3D"
    assert settings["gpu_dtype"] == "float16"


def test_a_build_spec_cannot_claim_the_official_image_classes():
    spec = copy.deepcopy(video_prior_spec("tiny"))
    spec["prior"]["image_encoder_class"] = "gfbench.priors.official:OpenCLIPImageEncoder"
    with pytest.raises(PriorError, match="a build spec makes a CLIPVisionModel and an ImageResampler"):
        build_video_prior(spec)


def test_converted_folder_loads_as_a_video_prior(converted):
    prior = load_video_prior(converted)
    assert isinstance(prior.unet, GenFusionUNet3D) and isinstance(prior.image_encoder, OpenCLIPImageEncoder)
    assert isinstance(prior.image_proj, ImageProjector)
    assert (prior.settings.num_frames, prior.settings.height, prior.settings.width) == (3, 16, 24)
    assert prior.source.files_sha256["unet/diffusion_pytorch_model.safetensors"]
    assert prior.source.files_sha256["prior.json"]


def test_image_tokens_go_through_the_official_encoder_and_projector(converted):
    """Oracle: the converted models called directly (antialiased bicubic to 224 px, CLIP normalisation)."""
    prior = load_video_prior(converted)
    models = load_converted(converted)
    references = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected = models.image_projector(models.image_encoder(references))
        tokens = prior.image_tokens(references)
    assert tokens.shape == (2, 6, 24)
    torch.testing.assert_close(tokens, expected)


def test_tiny_official_prior_repairs_an_rgbd_video_deterministically(converted):
    prior = load_video_prior(converted)
    video = small_video()
    reference = video.rgb[1]
    first = prior.repair(video, reference, seed=3)
    again = load_video_prior(converted).repair(video, reference, seed=3)
    other = prior.repair(video, reference, seed=4)
    assert first.rgb.shape == video.rgb.shape and first.depth.shape == video.depth.shape
    assert torch.isfinite(first.rgb).all() and torch.isfinite(first.depth).all()
    assert 0.0 <= first.rgb.min() and first.rgb.max() <= 1.0 and (first.depth > 0).all()
    assert torch.equal(first.rgb, again.rgb) and torch.equal(first.depth, again.depth)
    assert not torch.equal(first.rgb, other.rgb)
    depth = prior.estimate_depth(video.rgb[:2], reference_index=0, seed=0)
    assert depth.shape == (2, 20, 28) and torch.isfinite(depth).all()


def test_the_reference_image_reaches_the_unet(converted):
    """Without guidance the output still depends on the reference image: its tokens feed both attention paths."""
    prior = load_video_prior(converted)
    video = small_video()
    plain = prior.repair(video, video.rgb[0], seed=5, guidance_scale=1.0)
    changed = prior.repair(video, 1.0 - video.rgb[0], seed=5, guidance_scale=1.0)
    assert not torch.allclose(plain.rgb, changed.rgb)


def test_float16_folder_runs_in_float32_on_the_cpu_and_too_few_image_tokens_are_refused(tmp_path):
    """The default (float16) conversion loads in float32 on the CPU and keeps float16 for the GPU. The tiny
    fixture keeps the official 77 "text" slots but its projector makes 6 tokens: nothing would reach the image
    projections, so denoise refuses rather than silently dropping the image path."""
    folder = convert_tiny(tmp_path, tiny_architecture(text_context_len=77), dtype="float16")
    prior = load_video_prior(folder)
    assert prior.settings.gpu_dtype == "float16"
    assert {p.dtype for module in prior.modules().values() for p in module.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="6 image tokens leave none for the image cross-attention"):
        prior.repair(small_video(), small_video().rgb[0], seed=0)


def test_truncated_converted_weights_are_one_line_prior_errors(converted, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(converted, broken)
    weights = broken / "image_proj" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(PriorError) as info:
        load_video_prior(broken)
    assert "image_proj" in str(info.value) and "\n" not in str(info.value).strip()
