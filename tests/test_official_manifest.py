"""The project's official-layout models against the key-and-shape manifest generated from the public GenFusion
code: every key of the released checkpoint lands in a project model with its shape, or is dropped for a stated
reason; nothing is missing."""

import pytest

from gfbench.priors.official import KeyMap, Manifest, OfficialArchitecture, compare_with_project
from gfbench.priors.official.key_map import COMPONENT_PREFIXES


@pytest.fixture(scope="module")
def official_comparison():
    return compare_with_project(Manifest.official(), OfficialArchitecture.official())


def test_every_official_key_maps_to_a_project_key_of_the_same_shape(official_comparison):
    manifest = Manifest.official()
    result = official_comparison
    assert result.unmapped == []
    assert result.unexpected == []
    assert result.misshaped == []
    assert result.missing == []
    assert result.not_invertible == []
    # the manifest itself, component by component (counts from the official state_dict())
    assert result.matched == {"unet": 1516, "image_projector": 51, "image_encoder": 389, "vae": 248}
    assert len(result.dropped) == len(manifest.keys) - sum(result.matched.values()) == 316


def test_dropped_keys_are_only_the_text_tower_leftovers_and_schedule_buffers(official_comparison):
    result = official_comparison
    text_tower = [key for key in result.dropped if key.startswith("cond_stage_model.")]
    embedder = sorted(key for key in result.dropped if key.startswith("embedder."))
    schedule = [key for key in result.dropped if "." not in key]
    assert len(text_tower) == 294
    assert embedder == ["embedder.model.ln_final.bias", "embedder.model.ln_final.weight",
                        "embedder.model.logit_scale", "embedder.model.positional_embedding",
                        "embedder.model.text_projection", "embedder.model.token_embedding.weight",
                        "embedder.model.visual.ln_post.bias", "embedder.model.visual.ln_post.weight",
                        "embedder.model.visual.proj"]
    assert len(schedule) == 13 and "alphas_cumprod" in schedule
    assert not any(key.startswith(COMPONENT_PREFIXES["unet"]) for key in result.dropped)


def test_parameter_counts_of_the_released_model():
    manifest = Manifest.official()
    architecture = OfficialArchitecture.official()
    unet = architecture.build("unet", device="meta")
    assert sum(p.numel() for p in unet.parameters()) == manifest.parameter_count("model.diffusion_model.")
    assert manifest.parameter_count("model.diffusion_model.") == 1_438_854_980


def test_manifest_records_its_official_source():
    source = Manifest.official().source
    assert source["repository"] == "https://github.com/Inception3D/GenFusion"
    assert source["config"] == "Reconstruction/generation_infer.yaml"
    assert len(source["commit"]) == 40


def test_a_wrong_unet_config_is_caught_by_the_manifest():
    """The check can fail: one attention level fewer leaves official keys without a project home."""
    official = OfficialArchitecture.official()
    data = official.as_dict()
    data["unet"] = {**data["unet"], "attention_resolutions": [4, 2]}
    result = compare_with_project(Manifest.official(), OfficialArchitecture.from_dict(data))
    assert not result.ok
    assert "model.diffusion_model.input_blocks.1.1.norm.weight" in result.unmapped


def test_key_map_examples():
    key_map = KeyMap(OfficialArchitecture.official().unet)
    cases = {
        "model.diffusion_model.input_blocks.1.0.temopral_conv.conv4.3.weight":
            ("unet", "down_blocks.0.stages.0.resnet.temporal_conv.layers.3.conv.weight"),
        "model.diffusion_model.input_blocks.3.0.op.weight": ("unet", "down_blocks.0.downsample.weight"),
        "model.diffusion_model.output_blocks.2.1.conv.bias": ("unet", "up_blocks.0.upsample.bias"),
        "model.diffusion_model.output_blocks.5.3.conv.weight": ("unet", "up_blocks.1.upsample.weight"),
        "model.diffusion_model.init_attn.0.proj_in.weight": ("unet", "input_temporal_attention.proj_in.weight"),
        "model.diffusion_model.output_blocks.5.2.transformer_blocks.0.attn1.to_out.0.weight":
            ("unet", "up_blocks.1.stages.2.temporal_attention.transformer_blocks.0.attn1.to_out.weight"),
        "image_proj_model.layers.3.1.3.weight": ("image_projector", "layers.3.feed_forward.proj_out.weight"),
        "embedder.model.visual.transformer.resblocks.31.attn.in_proj_weight":
            ("image_encoder", "model.visual.transformer.resblocks.31.attn.in_proj_weight"),
        "first_stage_model.decoder.conv_out.weight": ("vae", "decoder.conv_out.weight"),
    }
    for official, (component, key) in cases.items():
        target = key_map.to_project(official)
        assert (target.component, target.key) == (component, key)
        assert key_map.to_official(component, key) == official
    assert key_map.to_project("model.something_else.weight").component is None
