"""The converter: a tiny checkpoint in the official key layout -> a folder of the project's models, which then
reproduce the official modules' outputs; one-line errors for wrong, foreign or truncated inputs."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler
from safetensors.torch import load_file

from gfbench.priors import PriorError
from gfbench.priors.official import (ConversionError, GenFusionUNet3D, ImageProjector, KeyMap,
                                     OfficialArchitecture, OpenCLIPImageEncoder, convert_checkpoint, load_converted)
from gfbench.priors.official.synthetic import hashed_uniform, synthetic_weight, write_official_layout_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "official"


@pytest.fixture(scope="module")
def architecture():
    return OfficialArchitecture.from_json(FIXTURES / "tiny_architecture.json")


@pytest.fixture(scope="module")
def sources(tmp_path_factory, architecture):
    """A tiny official-layout checkpoint (with its copy of the VAE and the text-tower leftovers the converter
    drops) and the matching VAE folder."""
    root = tmp_path_factory.mktemp("official")
    extra = {"cond_stage_model.model.token_embedding.weight": torch.zeros(8, 4),
             "embedder.model.visual.proj": torch.zeros(32, 16), "scale_arr": torch.ones(1000)}
    checkpoint = write_official_layout_checkpoint(root / "epoch=0-step=0.ckpt", architecture, extra=extra)
    vae = architecture.build("vae")
    vae.load_state_dict({key: synthetic_weight("first_stage_model." + key, tuple(t.shape))
                         for key, t in vae.state_dict().items()})
    vae.save_pretrained(root / "ldm3d-4c" / "vae")
    return checkpoint, root / "ldm3d-4c"


@pytest.fixture(scope="module")
def converted(tmp_path_factory, architecture, sources):
    checkpoint, vae_dir = sources
    out = tmp_path_factory.mktemp("converted") / "genfusion"
    messages = []
    convert_checkpoint(checkpoint, vae_dir, out, architecture=architecture, dtype="float32",
                       progress=messages.append)
    assert any("writing unet" in message for message in messages)
    return out


def test_folder_layout_and_source_hashes(converted, sources):
    checkpoint, vae_dir = sources
    for folder in ("unet", "image_proj", "image_encoder", "vae"):
        assert (converted / folder / "config.json").is_file()
        assert (converted / folder / "diffusion_pytorch_model.safetensors").is_file()
    assert (converted / "scheduler" / "scheduler_config.json").is_file()
    assert not converted.with_name(converted.name + ".partial").exists()
    source = json.loads((converted / "source.json").read_text())
    assert source["checkpoint"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert source["checkpoint"]["name"] == "epoch=0-step=0.ckpt"
    vae_files = source["vae"]["files_sha256"]
    assert vae_files["config.json"] == hashlib.sha256((vae_dir / "vae" / "config.json").read_bytes()).hexdigest()
    # the text token embedding, the vision projection and three schedule buffers
    assert source["keys"]["dropped"] == 5
    assert source["keys"]["unet"] == len(GenFusionUNet3D.from_pretrained(converted / "unet").state_dict())
    architecture = json.loads((converted / "architecture.json").read_text())
    assert architecture["diffusion"]["latent_scale_factor"] == 0.18215


def test_converted_weights_are_the_checkpoint_tensors(converted, architecture):
    key_map = KeyMap(architecture.unet)
    for component, folder in (("unet", "unet"), ("image_projector", "image_proj"), ("image_encoder", "image_encoder")):
        weights = load_file(converted / folder / "diffusion_pytorch_model.safetensors")
        for key, tensor in weights.items():
            expected = synthetic_weight(key_map.to_official(component, key), tuple(tensor.shape))
            assert torch.equal(tensor, expected), key


def test_converted_models_reproduce_the_official_outputs(converted):
    """from_pretrained on the converted folder, then the official tiny modules' reference outputs."""
    meta = json.loads((FIXTURES / "parity_tiny.json").read_text())
    reference = load_file(FIXTURES / "parity_tiny.safetensors")
    inputs = {name: hashed_uniform(f"input.{name}", tuple(spec["shape"])) for name, spec in meta["inputs"].items()}
    models = load_converted(converted)
    unet, projector, encoder = models.unet, models.image_projector, models.image_encoder
    assert isinstance(unet, GenFusionUNet3D) and isinstance(projector, ImageProjector)
    assert isinstance(encoder, OpenCLIPImageEncoder) and isinstance(models.vae, AutoencoderKL)
    assert models.architecture.name == "genfusion-tiny-test" and models.source["dtype"] == "float32"
    with torch.no_grad():
        out = unet(inputs["sample"], torch.tensor(meta["timesteps"]), inputs["context_per_frame"],
                   fps=torch.tensor(meta["fps"]))
        tokens = encoder(inputs["image_large"])
        projected = projector(inputs["image_features"])
    torch.testing.assert_close(out, reference["unet_per_frame"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tokens, reference["encoder_large"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(projected, reference["projector"], rtol=1e-4, atol=1e-4)
    assert models.vae.config.in_channels == 4
    for model in (unet, projector, encoder, models.vae):
        assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    with torch.no_grad():
        assert torch.isfinite(models.vae.decode(torch.zeros(1, 4, 4, 4)).sample).all()
    assert isinstance(models.scheduler, DDIMScheduler)
    assert models.scheduler.config.prediction_type == "v_prediction" and models.scheduler.config.rescale_betas_zero_snr


def test_load_converted_casts_and_checks_weights(tmp_path, converted):
    import shutil

    half = load_converted(converted, torch_dtype=torch.float16)
    assert {p.dtype for p in half.unet.parameters()} == {torch.float16}
    mismatched = tmp_path / "mismatched"
    shutil.copytree(converted, mismatched)
    shutil.copy(converted / "image_proj" / "diffusion_pytorch_model.safetensors",
                mismatched / "unet" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(PriorError, match="unet/diffusion_pytorch_model.safetensors: does not fit"):
        load_converted(mismatched)


def test_load_converted_names_what_is_missing(tmp_path, converted):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(converted, partial)
    shutil.rmtree(partial / "image_proj")
    with pytest.raises(PriorError, match="no image_proj/config.json; expected a folder written by"):
        load_converted(partial)


def test_default_dtype_is_float16(tmp_path, architecture, sources):
    checkpoint, vae_dir = sources
    out = convert_checkpoint(checkpoint, vae_dir, tmp_path / "fp16", architecture=architecture)
    weights = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.float16}
    assert json.loads((out / "source.json").read_text())["dtype"] == "float16"


def _rewrite(path, source, edit):
    checkpoint = torch.load(source, weights_only=True)
    edit(checkpoint["state_dict"])
    torch.save(checkpoint, path)
    return path


def _conversion_error(architecture, checkpoint, vae_dir, out, **kwargs) -> str:
    with pytest.raises(ConversionError) as info:
        convert_checkpoint(checkpoint, vae_dir, out, architecture=architecture, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert not out.exists()
    return message


def test_truncated_checkpoint(tmp_path, architecture, sources):
    checkpoint, vae_dir = sources
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    message = _conversion_error(architecture, truncated, vae_dir, tmp_path / "out")
    assert message.startswith(f"{truncated}: not a readable PyTorch checkpoint, truncated or corrupt")


def test_missing_key_is_named(tmp_path, architecture, sources):
    checkpoint, vae_dir = sources
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip.weight"
    broken = _rewrite(tmp_path / "missing.ckpt", checkpoint, lambda state: state.pop(key))
    message = _conversion_error(architecture, broken, vae_dir, tmp_path / "out")
    assert f"missing key {key!r}" in message and "(1 missing, 0 mis-shaped, 0 unexpected keys)" in message


def test_misshaped_key_is_named(tmp_path, architecture, sources):
    checkpoint, vae_dir = sources
    key = "image_proj_model.latents"
    broken = _rewrite(tmp_path / "shape.ckpt", checkpoint, lambda state: state.update({key: torch.zeros(1, 4, 32)}))
    message = _conversion_error(architecture, broken, vae_dir, tmp_path / "out")
    assert f"key {key!r} has shape [1, 4, 32], the genfusion-tiny-test architecture expects [1, 6, 32]" in message


def test_foreign_checkpoint_is_refused(tmp_path, architecture, sources):
    """DynamiCrafter's own checkpoints carry the lvdm VAE layout: the same UNet names, a foreign VAE."""
    checkpoint, vae_dir = sources
    foreign_key = "first_stage_model.encoder.down.0.block.0.norm1.weight"
    foreign = _rewrite(tmp_path / "dynamicrafter.ckpt", checkpoint,
                       lambda state: state.update({foreign_key: torch.ones(32)}))
    message = _conversion_error(architecture, foreign, vae_dir, tmp_path / "out")
    assert f"unexpected key {foreign_key!r}" in message

    unrelated = tmp_path / "unrelated.ckpt"
    torch.save({"state_dict": {"encoder.layer.0.weight": torch.zeros(2, 2)}}, unrelated)
    message = _conversion_error(architecture, unrelated, vae_dir, tmp_path / "out")
    assert "missing key 'model.diffusion_model." in message and "1 unexpected keys" in message


def test_other_schedule_is_refused(tmp_path, architecture, sources):
    checkpoint, vae_dir = sources
    broken = _rewrite(tmp_path / "eps.ckpt", checkpoint,
                      lambda state: state.update({"alphas_cumprod": state["alphas_cumprod"] * 0.99}))
    assert "noise schedule (alphas_cumprod) differs" in _conversion_error(architecture, broken, vae_dir,
                                                                         tmp_path / "out")


def test_pickled_objects_need_consent(tmp_path, architecture, sources):
    checkpoint, vae_dir = sources
    state = torch.load(checkpoint, weights_only=True)
    state["hyper_parameters"] = Path("not/a/tensor")  # an arbitrary Python object, as Lightning may store
    pickled = tmp_path / "pickled.ckpt"
    torch.save(state, pickled)
    message = _conversion_error(architecture, pickled, vae_dir, tmp_path / "out")
    assert "weights-only load refuses it" in message and "--allow-pickle" in message
    out = convert_checkpoint(pickled, vae_dir, tmp_path / "trusted", architecture=architecture, allow_pickle=True)
    assert (out / "unet" / "config.json").is_file()


def test_wrong_vae_is_refused(tmp_path, architecture, sources):
    checkpoint, _ = sources
    rgb_vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32),
                            layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2)
    rgb_vae.save_pretrained(tmp_path / "sd-vae")
    message = _conversion_error(architecture, checkpoint, tmp_path / "sd-vae", tmp_path / "out")
    assert "config.json: in_channels is 3" in message

    other = architecture.build("vae")  # right layout, other weights than the checkpoint's copy
    other.save_pretrained(tmp_path / "other-vae")
    message = _conversion_error(architecture, checkpoint, tmp_path / "other-vae", tmp_path / "out")
    assert "differs from the VAE inside" in message and "first_stage_model." in message

    message = _conversion_error(architecture, checkpoint, tmp_path / "nowhere", tmp_path / "out")
    assert "no config.json" in message


def test_existing_output_is_not_overwritten(tmp_path, architecture, sources):
    checkpoint, vae_dir = sources
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="exists and is not empty"):
        convert_checkpoint(checkpoint, vae_dir, out, architecture=architecture)
    assert (out / "keep.txt").read_text() == "mine"


def test_cli_convert(tmp_path, sources):
    from click.testing import CliRunner

    from gfbench.cli.prior import prior_group

    checkpoint, vae_dir = sources
    runner = CliRunner()
    args = ["convert", "--checkpoint", str(checkpoint), "--vae", str(vae_dir), "--out", str(tmp_path / "out"),
            "--architecture", str(FIXTURES / "tiny_architecture.json"), "--dtype", "float32"]
    result = runner.invoke(prior_group, args)
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'out'}" in result.output
    assert (tmp_path / "out" / "source.json").is_file()

    again = runner.invoke(prior_group, args)
    assert again.exit_code == 1 and "exists and is not empty" in again.output
    assert runner.invoke(prior_group, args + ["--overwrite"]).exit_code == 0

    default = runner.invoke(prior_group, args[:6] + ["--overwrite"])  # released architecture: shapes differ
    assert default.exit_code == 1
    assert "architecture expects" in default.output and len(default.output.strip().splitlines()) <= 2

    help_text = runner.invoke(prior_group, ["convert", "--help"]).output
    for option in ("--checkpoint", "--vae", "--out", "--dtype", "--architecture", "--allow-pickle", "--overwrite"):
        assert option in help_text
