"""Numerical parity with the official GenFusion modules on a tiny configuration.

``tests/fixtures/official/parity_tiny.*`` were produced by running the public GenFusion code (commit in the
JSON) with deterministic weights (:func:`synthetic_weight` of each official key) on deterministic inputs; here the
project's models get the same weights through the key map and must give the same outputs within float32
rounding. The official code is not needed to run this test.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gfbench.priors.official import KeyMap, OfficialArchitecture
from gfbench.priors.official.image_encoder import antialiased_resize
from gfbench.priors.official.synthetic import hashed_uniform, synthetic_weight

FIXTURES = Path(__file__).parent / "fixtures" / "official"
TOLERANCE = dict(rtol=1e-4, atol=1e-4)  # float32 rounding through ~100 layers stays below 1e-5 here


@pytest.fixture(scope="module")
def reference():
    meta = json.loads((FIXTURES / "parity_tiny.json").read_text())
    outputs = load_file(FIXTURES / "parity_tiny.safetensors")
    inputs = {name: hashed_uniform(f"input.{name}", tuple(spec["shape"])) for name, spec in meta["inputs"].items()}
    return meta, inputs, outputs


@pytest.fixture(scope="module")
def architecture():
    return OfficialArchitecture.from_json(FIXTURES / "tiny_architecture.json")


def loaded(architecture, component):
    """The project model with each parameter set to the synthetic weight of its official name."""
    key_map = KeyMap(architecture.unet)
    model = architecture.build(component)
    state = {key: synthetic_weight(key_map.to_official(component, key), tuple(t.shape))
             for key, t in model.state_dict().items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_fixture_keys_are_the_official_tiny_state_dicts(reference, architecture):
    meta, _, _ = reference
    key_map = KeyMap(architecture.unet)
    ours = {}
    for component in ("unet", "image_projector", "image_encoder"):
        for key, tensor in architecture.build(component, device="meta").state_dict().items():
            ours[key_map.to_official(component, key)] = list(tensor.shape)
    official = {key: shape for key, shape in meta["keys"].items() if key_map.to_project(key).dropped is None}
    assert ours == official


@pytest.mark.parametrize("context", ["context_shared", "context_per_frame", "default_fps"])
def test_unet_matches_official(reference, architecture, context):
    meta, inputs, outputs = reference
    unet = loaded(architecture, "unet")
    timesteps, fps = torch.tensor(meta["timesteps"]), torch.tensor(meta["fps"])
    with torch.no_grad():
        if context == "default_fps":
            out, expected = unet(inputs["sample"], timesteps, inputs["context_shared"]), outputs["unet_default_fps"]
        else:
            out = unet(inputs["sample"], timesteps, inputs[context], fps=fps)
            expected = outputs["unet_shared" if context == "context_shared" else "unet_per_frame"]
    assert out.shape == expected.shape == (2, 4, 3, 8, 12)
    torch.testing.assert_close(out, expected, **TOLERANCE)


def test_image_cross_attention_branch_matters(reference, architecture):
    """The parity above exercises the image ("ip") projections: zeroing one changes the output far beyond the
    tolerance, so a swapped or dropped ip weight could not pass."""
    meta, inputs, outputs = reference
    unet = loaded(architecture, "unet")
    attention = unet.down_blocks[0].stages[0].spatial_attention.transformer_blocks[0].attn2
    with torch.no_grad():
        attention.to_v_ip.weight.zero_()
        out = unet(inputs["sample"], torch.tensor(meta["timesteps"]), inputs["context_shared"],
                   fps=torch.tensor(meta["fps"]))
    assert (out - outputs["unet_shared"]).abs().max() > 1e-2


def test_image_projector_matches_official(reference, architecture):
    _, inputs, outputs = reference
    with torch.no_grad():
        out = loaded(architecture, "image_projector")(inputs["image_features"])
    assert out.shape == (2, 6, 24)  # num_queries x video_length tokens per image
    torch.testing.assert_close(out, outputs["projector"], **TOLERANCE)


@pytest.mark.parametrize("image", ["small", "large"])
def test_image_encoder_matches_official(reference, architecture, image):
    """``small`` is upsampled to 224 (no blur), ``large`` (320x512) downsampled with kornia's antialias blur."""
    _, inputs, outputs = reference
    with torch.no_grad():
        out = loaded(architecture, "image_encoder")(inputs[f"image_{image}"])
    torch.testing.assert_close(out, outputs[f"encoder_{image}"], **TOLERANCE)


def test_antialiased_resize_matches_kornia(reference):
    _, inputs, outputs = reference
    torch.testing.assert_close(antialiased_resize(inputs["image_resize"], (28, 28)), outputs["resize_28"],
                               **TOLERANCE)


def test_schedule_matches_official(reference, architecture):
    """The scheduler config (diffusers, scaled-linear 0.00085-0.012, zero terminal SNR) reproduces the official
    ``alphas_cumprod`` (float64 numpy in the official code)."""
    _, _, outputs = reference
    official = outputs["alphas_cumprod"]
    ours = architecture.alphas_cumprod()
    torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-6)
    assert official[-1] == 0 and ours[-1] == 0


@pytest.mark.parametrize("steps", [25, 50])
def test_scheduler_steps_are_the_official_ddim_uniform_steps(architecture, steps):
    """The official sampler's "uniform" discretisation: ``range(0, 1000, 1000 // steps) + 1``, run backwards,
    and ``alphas_cumprod[0]`` as the alpha before the first timestep."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(**architecture.scheduler_config())
    scheduler.set_timesteps(steps)
    official = [t + 1 for t in range(0, 1000, 1000 // steps)][::-1]
    assert scheduler.timesteps.tolist() == official
    assert scheduler.final_alpha_cumprod == scheduler.alphas_cumprod[0]
