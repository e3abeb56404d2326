"""The architecture data: the released model's numbers, validation errors, and save/load round trips."""

import json
from pathlib import Path

import pytest
import torch

from gfbench.priors.official import (ArchitectureError, GenFusionUNet3D, ImageProjector, OfficialArchitecture,
                                     OpenCLIPImageEncoder)

FIXTURES = Path(__file__).parent / "fixtures" / "official"


def test_released_model_numbers():
    """The numbers of Reconstruction/generation_infer.yaml (and issue 16)."""
    architecture = OfficialArchitecture.official()
    unet = architecture.unet
    assert (unet["in_channels"], unet["out_channels"], unet["model_channels"]) == (8, 4, 320)
    assert unet["channel_mult"] == [1, 2, 4, 4] and unet["num_res_blocks"] == 2
    assert unet["attention_resolutions"] == [4, 2, 1] and unet["num_head_channels"] == 64
    assert unet["temporal_length"] == 16 and unet["context_dim"] == 1024 and unet["default_fps"] == 30
    projector = architecture.image_projector
    assert (projector["embedding_dim"], projector["output_dim"], projector["num_queries"]) == (1280, 1024, 16)
    assert architecture.image_encoder["width"] == 1280 and architecture.image_encoder["layers"] == 32
    assert architecture.scheduler_config() == {
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "leading",
        "steps_offset": 1, "set_alpha_to_one": False}
    assert architecture.diffusion["latent_scale_factor"] == 0.18215


def _edited(**changes):
    data = json.loads((FIXTURES / "tiny_architecture.json").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        if value is None:
            data[section].pop(key)
        else:
            data[section][key] = value
    return data


@pytest.mark.parametrize("changes, message", [
    ({"unet__attention_heads": 4}, "unet.attention_heads is not an argument of GenFusionUNet3D"),
    ({"diffusion__prediction_type": None}, "diffusion.prediction_type is missing"),
    ({"image_projector__embedding_dim": 40}, "image_projector.embedding_dim is 40 but image_encoder.width is 32"),
    ({"unet__context_dim": 32}, "unet.context_dim is 32 but image_projector.output_dim is 24"),
    ({"unet__in_channels": 4}, "unet.in_channels is 4 but 2 x vae.latent_channels is 8"),
])
def test_invalid_architecture_is_a_clear_error(changes, message):
    with pytest.raises(ArchitectureError, match=message.replace(".", r"\.")):
        OfficialArchitecture.from_dict(_edited(**changes), origin="tiny.json")


def test_missing_section_and_unreadable_file(tmp_path):
    data = json.loads((FIXTURES / "tiny_architecture.json").read_text())
    del data["vae"]
    with pytest.raises(ArchitectureError, match="no 'vae' section"):
        OfficialArchitecture.from_dict(data)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ArchitectureError, match="broken.json: cannot read the architecture"):
        OfficialArchitecture.from_json(broken)


@pytest.mark.parametrize("model_class, component", [(GenFusionUNet3D, "unet"), (ImageProjector, "image_projector"),
                                                    (OpenCLIPImageEncoder, "image_encoder")])
def test_save_and_load_pretrained_round_trip(tmp_path, model_class, component):
    architecture = OfficialArchitecture.from_json(FIXTURES / "tiny_architecture.json")
    torch.manual_seed(0)
    model = architecture.build(component).eval()
    model.save_pretrained(tmp_path / component)
    loaded = model_class.from_pretrained(tmp_path / component).eval()
    public = lambda config: {k: list(v) if isinstance(v, tuple) else v  # noqa: E731
                             for k, v in config.items() if not k.startswith("_")}
    assert public(loaded.config) == public(model.config) == {**public(model.config), **getattr(architecture,
                                                                                               component)}
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_unet_takes_other_clip_lengths_and_scalar_timesteps():
    architecture = OfficialArchitecture.from_json(FIXTURES / "tiny_architecture.json")
    unet = architecture.build("unet").eval()
    sample = torch.randn(1, 8, 5, 8, 8)
    with torch.no_grad():
        out = unet(sample, 10, torch.randn(1, 6, 24))
        batched = unet(sample, torch.tensor([10]), torch.randn(1, 6, 24), fps=30)
    assert out.shape == batched.shape == (1, 4, 5, 8, 8)
    assert torch.isfinite(out).all()
