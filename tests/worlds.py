"""Test worlds: a tiny built dataset with its suites, and third-party methods installed through a dist-info."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from gfbench import specs
from gfbench.shards import write_scene
from helpers import tiny_scene

PLUGINS = Path(__file__).parent / "plugins"
PLUGIN_ENTRY_POINTS = {
    "addview": "gfbench_testplugin.methods:AddView",
    "depthprobe": "gfbench_testplugin.methods:DepthProbe",
}


def make_world(tmp_path: Path, monkeypatch) -> dict:
    """Specs for dataset ``testset`` (scenes a, b: 6 frames of 24x16 with stored depth) and two masked suites,
    ``test-masked`` and ``test-masked-oracle`` (which allows the oracle depth prior); shards built."""
    spec_dir = tmp_path / "specs"
    (spec_dir / "suites").mkdir(parents=True)
    (spec_dir / "testset.yaml").write_text("id: testset\nkind: dataset\nversion: 1\nlayout: colmap\nscenes: [a, b]\n")
    suite = {
        "id": "test-masked", "kind": "suite", "version": 1, "dataset": "testset", "scenes": "all",
        "protocol": specs.load_suite("synthetic-masked").protocol, "metrics": ["psnr", "ssim"], "preset": "quick",
        "seeds": [0],
    }
    (spec_dir / "suites" / "test-masked.yaml").write_text(json.dumps(suite))
    oracle = {**suite, "id": "test-masked-oracle", "allow_oracle_depth": True}
    (spec_dir / "suites" / "test-masked-oracle.yaml").write_text(json.dumps(oracle))
    data = tmp_path / "data"
    scenes = {}
    for scene_id, seed in (("a", 0), ("b", 1)):
        scenes[scene_id] = tiny_scene(frames=6, width=24, height=16, seed=seed, dataset="testset", scene_id=scene_id)
        write_scene(scenes[scene_id], data)
    monkeypatch.setenv("GFBENCH_SPECS", str(spec_dir))
    return {"data": data, "results": tmp_path / "results", "scenes": scenes, "specs": spec_dir}


def install_plugin(tmp_path: Path, monkeypatch, entry_points: dict[str, str] | None = None,
                   name: str = "gfbench_testplugin") -> Path:
    """Make ``tests/plugins`` importable and register ``entry_points`` in the ``gfbench.methods`` group with a
    dist-info on sys.path, as an installed third-party package would."""
    site = tmp_path / f"site-{name}"
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "".join(f"{key} = {value}\n" for key, value in (entry_points or PLUGIN_ENTRY_POINTS).items())
    (info / "entry_points.txt").write_text(f"[gfbench.methods]\n{lines}")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(PLUGINS))
    importlib.invalidate_caches()
    return site


def tiny_depth_anything(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised Depth Anything (DINOv2 backbone, ~24k parameters) saved with its processor
    (weights drawn 10x wider than the default 0.02, so that its output is of order 0.1-1, not 1e-9)."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            patch_size=14, image_size=56, out_features=["stage1", "stage2"],
                            reshape_hidden_states=False, initializer_range=0.2)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 16],
                                 fusion_hidden_size=8, head_hidden_size=8, reassemble_factors=[2, 1], patch_size=14,
                                 initializer_range=0.2)
    torch.manual_seed(seed)
    DepthAnythingForDepthEstimation(config).eval().save_pretrained(folder)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def tiny_dpt(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised DPT (ViT backbone, ~25k parameters) saved with its processor (wide weights too)."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=32,
                       patch_size=8, backbone_out_indices=[0, 1], neck_hidden_sizes=[8, 16], fusion_hidden_size=8,
                       reassemble_factors=[2, 1], head_in_index=-1, initializer_range=0.2)
    torch.manual_seed(seed)
    DPTForDepthEstimation(config).eval().save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(folder)
    return folder
