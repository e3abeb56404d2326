"""Where each tensor of the released GenFusion checkpoint goes in the project's models, and back.

The Lightning checkpoint holds one ``LatentVisualDiffusion`` state dict. Its keys fall into:

- ``model.diffusion_model.*`` -> :class:`GenFusionUNet3D` (``unet``), renamed by a prefix table computed from
  the UNet config (the official flat ``input_blocks.N.M`` indices become ``down_blocks.L.stages.I.*``) and a
  few rules inside blocks (``in_layers.0`` -> ``norm1``, the misspelt ``temopral_conv`` -> ``temporal_conv``...);
- ``image_proj_model.*`` -> :class:`ImageProjector` (``image_projector``);
- ``embedder.model.visual.*`` -> :class:`OpenCLIPImageEncoder` (``image_encoder``), names unchanged below
  ``embedder.``;
- ``first_stage_model.*`` -> the LDM3D 4-channel VAE (``vae``, a diffusers ``AutoencoderKL``, names unchanged);
- keys the project does not use (:data:`DROPPED`): the OpenCLIP text tower, the text-side leftovers of the image
  embedder and its unused final norm / projection, and the noise-schedule buffers.

Both directions use the same tables, so a test can check the map against the manifest key by key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

COMPONENTS = ("unet", "image_projector", "image_encoder", "vae")
COMPONENT_PREFIXES = {
    "unet": "model.diffusion_model.",
    "image_projector": "image_proj_model.",
    "image_encoder": "embedder.",
    "vae": "first_stage_model.",
}

SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "scale_arr",
)

# (pattern over the official key, why the project does not load it)
DROPPED: tuple[tuple[str, str], ...] = (
    (r"cond_stage_model\..*", "OpenCLIP text encoder: GenFusion conditions on the reference image only"),
    (r"embedder\.model\.(token_embedding|positional_embedding|ln_final|text_projection|logit_scale)\b.*",
     "text-side leftovers of the OpenCLIP model inside the image embedder"),
    (r"embedder\.model\.visual\.(ln_post|proj)\b.*",
     "final norm and projection of the vision tower: the official embedder reads the tokens before them"),
    (r"(%s)" % "|".join(SCHEDULE_BUFFERS), "noise-schedule buffers, recomputed from the scheduler config"),
)


@dataclass(frozen=True)
class KeyTarget:
    """Where an official key goes: ``component`` and ``key`` in it, or ``dropped`` with the reason."""

    component: str | None
    key: str | None = None
    dropped: str | None = None


class _Rule:
    """A rename between an official and a project name fragment; ``{n}`` stands for a decimal index."""

    def __init__(self, official: str, project: str):
        self.templates = {"official": official, "project": project}
        self.patterns = {side: re.compile(re.escape(text).replace(r"\{n\}", r"(?P<n>\d+)"))
                         for side, text in self.templates.items()}

    def apply(self, name: str, source: str, target: str) -> str | None:
        match = self.patterns[source].match(name)
        if match is None:
            return None
        head = self.templates[target].format(**match.groupdict())
        return head + name[match.end():]


def _rules(pairs: Iterable[tuple[str, str]]) -> list[_Rule]:
    return [_Rule(official, project) for official, project in pairs]


_RESNET_RULES = _rules([
    ("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."),
    ("temopral_conv.conv1.0.", "temporal_conv.layers.0.norm."),
    ("temopral_conv.conv1.2.", "temporal_conv.layers.0.conv."),
    ("temopral_conv.conv2.0.", "temporal_conv.layers.1.norm."),
    ("temopral_conv.conv2.3.", "temporal_conv.layers.1.conv."),
    ("temopral_conv.conv3.0.", "temporal_conv.layers.2.norm."),
    ("temopral_conv.conv3.3.", "temporal_conv.layers.2.conv."),
    ("temopral_conv.conv4.0.", "temporal_conv.layers.3.norm."),
    ("temopral_conv.conv4.3.", "temporal_conv.layers.3.conv."),
])
_TRANSFORMER_RULES = _rules([
    ("transformer_blocks.{n}.attn1.to_out.0.", "transformer_blocks.{n}.attn1.to_out."),
    ("transformer_blocks.{n}.attn2.to_out.0.", "transformer_blocks.{n}.attn2.to_out."),
])
_PROJECTOR_RULES = _rules([
    ("layers.{n}.0.", "layers.{n}.attention."),
    ("layers.{n}.1.0.", "layers.{n}.feed_forward.norm."),
    ("layers.{n}.1.1.", "layers.{n}.feed_forward.proj_in."),
    ("layers.{n}.1.3.", "layers.{n}.feed_forward.proj_out."),
])


def unet_prefix_table(config: Mapping) -> list[tuple[str, str, str]]:
    """``(official prefix, project prefix, kind)`` for every block of a UNet with this config; ``kind`` picks
    the inner rules (``resnet``, ``transformer`` or ``plain``)."""
    table = [("time_embed.0.", "time_embedding.linear_1.", "plain"),
             ("time_embed.2.", "time_embedding.linear_2.", "plain"),
             ("fps_embedding.0.", "fps_embedding.linear_1.", "plain"),
             ("fps_embedding.2.", "fps_embedding.linear_2.", "plain"),
             ("input_blocks.0.0.", "conv_in.", "plain"),
             ("init_attn.0.", "input_temporal_attention.", "transformer"),
             ("out.0.", "norm_out.", "plain"),
             ("out.2.", "conv_out.", "plain")]

    def stage(official: str, project: str, attention: bool) -> None:
        table.append((official + "0.", project + "resnet.", "resnet"))
        if attention:
            table.append((official + "1.", project + "spatial_attention.", "transformer"))
            table.append((official + "2.", project + "temporal_attention.", "transformer"))

    mults = list(config["channel_mult"])
    blocks = int(config["num_res_blocks"])
    with_attention = [2 ** level in config["attention_resolutions"] for level in range(len(mults))]
    index = 1
    for level in range(len(mults)):
        for i in range(blocks):
            stage(f"input_blocks.{index}.", f"down_blocks.{level}.stages.{i}.", with_attention[level])
            index += 1
        if level != len(mults) - 1:
            table.append((f"input_blocks.{index}.0.op.", f"down_blocks.{level}.downsample.", "plain"))
            index += 1
    stage("middle_block.", "mid_block.stage.", True)
    table.append(("middle_block.3.", "mid_block.resnet_out.", "resnet"))
    index = 0
    for up, level in enumerate(reversed(range(len(mults)))):
        for i in range(blocks + 1):
            stage(f"output_blocks.{index}.", f"up_blocks.{up}.stages.{i}.", with_attention[level])
            if level and i == blocks:
                position = 3 if with_attention[level] else 1
                table.append((f"output_blocks.{index}.{position}.conv.", f"up_blocks.{up}.upsample.", "plain"))
            index += 1
    return table


_INNER_RULES = {"resnet": _RESNET_RULES, "transformer": _TRANSFORMER_RULES, "plain": []}


def _rename_inner(rest: str, rules: list[_Rule], source: str, target: str) -> str:
    for rule in rules:
        renamed = rule.apply(rest, source, target)
        if renamed is not None:
            return renamed
    return rest


def _translate(name: str, table: list[tuple[str, str, str]], source: str, target: str) -> str | None:
    column = {"official": 0, "project": 1}
    best = None
    for row in table:
        prefix = row[column[source]]
        if name.startswith(prefix) and (best is None or len(prefix) > len(best[column[source]])):
            best = row
    if best is None:
        return None
    rest = _rename_inner(name[len(best[column[source]]):], _INNER_RULES[best[2]], source, target)
    return best[column[target]] + rest


class KeyMap:
    """The official <-> project key map for one architecture (the UNet config fixes the block indices)."""

    def __init__(self, unet_config: Mapping):
        self.unet_table = unet_prefix_table(unet_config)

    def to_project(self, official_key: str) -> KeyTarget:
        for pattern, reason in DROPPED:
            if re.fullmatch(pattern, official_key):
                return KeyTarget(None, dropped=reason)
        for component, prefix in COMPONENT_PREFIXES.items():
            if official_key.startswith(prefix):
                key = self._component_to_project(component, official_key[len(prefix):])
                return KeyTarget(component if key is not None else None, key)
        return KeyTarget(None)

    def to_official(self, component: str, project_key: str) -> str:
        if component == "unet":
            key = _translate(project_key, self.unet_table, "project", "official")
            if key is None:
                raise KeyError(f"unet key {project_key!r} has no official name")
        elif component == "image_projector":
            key = _rename_inner(project_key, _PROJECTOR_RULES, "project", "official")
        else:
            key = project_key
        return COMPONENT_PREFIXES[component] + key

    def _component_to_project(self, component: str, rest: str) -> str | None:
        if component == "unet":
            return _translate(rest, self.unet_table, "official", "project")
        if component == "image_projector":
            return _rename_inner(rest, _PROJECTOR_RULES, "official", "project")
        if component == "image_encoder":
            return rest if rest.startswith("model.visual.") else None
        return rest
