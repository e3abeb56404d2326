"""Depth priors: tiny randomly initialised Depth Anything and DPT models built from configs, saved to a folder
and used end to end through ``--depth-prior`` (never downloaded); clear errors for missing or wrong folders
before any training; the per-scene cache; the ``oracle`` prior only where the suite allows it, labelled."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gfbench import results, specs
from gfbench.cli import main
from gfbench.leaderboard import method_label
from gfbench.priors import PriorError, folder_fingerprint
from gfbench.priors.depth import (DepthPrior, OracleDepthPrior, SceneDepthPrior, TransformersDepthPrior, image_key,
                                  load_model, resolve_source)
from gfbench.protocols import make_split
from helpers import tiny_scene
from worlds import install_plugin, make_world, tiny_depth_anything, tiny_dpt

BUILDERS = {"depth-anything": tiny_depth_anything, "dpt": tiny_dpt}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    return {name: build(root / name) for name, build in BUILDERS.items()}


def direct_prediction(folder, image: np.ndarray) -> np.ndarray:
    """transformers used by hand: processor, model, bicubic resize of the prediction to the image size."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForDepthEstimation.from_pretrained(folder).eval()
    with torch.no_grad():
        predicted = model(**processor(images=image, return_tensors="pt")).predicted_depth
    resized = torch.nn.functional.interpolate(predicted[:, None], size=image.shape[:2], mode="bicubic",
                                              align_corners=False)
    return resized[0, 0].numpy()


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_model_predicts_what_transformers_does(folders, name):
    source = resolve_source(str(folders[name]), suite_id="s", allow_oracle=False)
    assert source.name == name and source.files_sha256 == folder_fingerprint(folders[name])
    assert set(source.files_sha256) == {"config.json", "preprocessor_config.json", "model.safetensors"}
    prior = TransformersDepthPrior(source)
    images = [np.random.default_rng(i).integers(0, 256, (30 + i, 40, 3), dtype=np.uint8) for i in range(2)]
    maps = prior.predict(images)
    for image, depth in zip(images, maps):
        assert depth.shape == image.shape[:2] and depth.dtype == np.float32
        np.testing.assert_allclose(depth, direct_prediction(folders[name], image), rtol=1e-5, atol=1e-7)
    assert maps[0].std() > 0.01  # a real map, not a constant
    assert load_model(source) is load_model(source)  # loaded once per process


def broken_folder(tmp_path, folders, case):
    folder = tmp_path / case
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        (folder / name).write_bytes((folders["dpt"] / name).read_bytes())
    if case == "no-config":
        (folder / "config.json").unlink()
    elif case == "no-processor":
        (folder / "preprocessor_config.json").unlink()
    elif case == "no-weights":
        (folder / "model.safetensors").unlink()
    elif case == "wrong-model":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "glpn"}))
    elif case == "bad-json":
        (folder / "config.json").write_text("{not json")
    elif case == "corrupt-weights":
        (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    return folder


@pytest.mark.parametrize("case, message", [
    ("missing", "is not a folder"),
    ("no-config", "has no 'config.json'"),
    ("no-processor", "has no 'preprocessor_config.json'"),
    ("no-weights", "has no weights (model.safetensors or pytorch_model.bin)"),
    ("wrong-model", "model_type 'glpn'; supported depth models: depth_anything, dpt"),
    ("bad-json", "is not readable JSON"),
])
def test_a_missing_or_wrong_folder_is_a_clear_error(tmp_path, folders, case, message):
    folder = tmp_path / "nope" if case == "missing" else broken_folder(tmp_path, folders, case)
    with pytest.raises(PriorError) as info:
        resolve_source(str(folder), suite_id="s", allow_oracle=False)
    assert str(info.value).startswith("depth prior:") and message in str(info.value)


def test_unset_prior_names_the_flag_and_the_variable(monkeypatch):
    monkeypatch.delenv("GFBENCH_DEPTH_PRIOR", raising=False)
    with pytest.raises(PriorError, match="pass --depth-prior PATH or set GFBENCH_DEPTH_PRIOR"):
        resolve_source(None, suite_id="s", allow_oracle=True)


def test_corrupt_weights_fail_when_loading(tmp_path, folders):
    source = resolve_source(str(broken_folder(tmp_path, folders, "corrupt-weights")), suite_id="s", allow_oracle=False)
    with pytest.raises(PriorError, match="cannot be loaded by transformers"):
        load_model(source)


class Counting(DepthPrior):
    def __init__(self):
        from gfbench.priors import PriorSource

        self.source, self.calls = PriorSource(kind="depth", name="counting"), 0

    def predict(self, images):
        self.calls += len(images)
        return [np.full(np.asarray(image).shape[:2], float(np.asarray(image).mean()), np.float32) for image in images]


def test_predictions_are_cached_per_scene_by_image(tmp_path):
    backend = Counting()
    prior = SceneDepthPrior(backend, tmp_path / "cache")
    images = [np.full((4, 5, 3), v, np.uint8) for v in (10, 20)]
    first = prior.predict(images)
    assert backend.calls == 2 and sorted(p.stem for p in (tmp_path / "cache").glob("*.npy")) == sorted(
        image_key(i) for i in images)
    again = SceneDepthPrior(Counting(), tmp_path / "cache")
    second = again.predict([images[1], images[0]])
    assert again.prior.calls == 0 and np.array_equal(second[0], first[1]) and np.array_equal(second[1], first[0])
    (tmp_path / "cache" / f"{image_key(images[0])}.npy").write_bytes(b"damaged")
    assert np.array_equal(again.predict(images[:1])[0], first[0]) and again.prior.calls == 1
    again.predict(images, cache=False)  # renders during training: computed, never stored
    assert again.prior.calls == 3
    assert image_key(images[0]) != image_key(images[0].astype(np.float32) / 255)


def test_oracle_is_the_inverse_stored_depth_of_the_train_crops():
    scene = tiny_scene(frames=6, width=24, height=16, depth=True)
    scene.frames[0].depth[:, :3] = 0  # no depth there
    split = make_split(scene, specs.load_suite("synthetic-masked").protocol)
    oracle = OracleDepthPrior.from_scene(scene, split.train)
    assert oracle.source.name == "oracle" and not oracle.novel_images
    for view, inverse in zip(split.train, oracle.predict([v.image for v in split.train])):
        x, y, w, h = view.box
        z = scene.frames[view.frame_index].depth[y:y + h, x:x + w]
        np.testing.assert_array_equal(inverse, np.where(z > 0, 1 / np.where(z > 0, z, 1), 0).astype(np.float32))
    with pytest.raises(PriorError, match="knows the stored depth of the scene's train images only"):
        oracle.predict([split.test[0].image])


def test_oracle_only_where_the_suite_allows_it():
    assert resolve_source("oracle", suite_id="s", allow_oracle=True).name == "oracle"
    with pytest.raises(PriorError, match="suite 's' does not allow the 'oracle' depth prior.*allow_oracle_depth: true"):
        resolve_source("oracle", suite_id="s", allow_oracle=False)


# ---------------------------------------------------------------- end to end through the CLI


@pytest.fixture
def world(tmp_path, monkeypatch):
    world = make_world(tmp_path, monkeypatch)
    install_plugin(tmp_path, monkeypatch)
    monkeypatch.delenv("GFBENCH_DEPTH_PRIOR", raising=False)
    return world


def run_depthprobe(world, *args):
    return CliRunner().invoke(main, ["run", "--method", "depthprobe", "--scenes", "a", "--data", str(world["data"]),
                                     "--results", str(world["results"]), *args])


def probe_outputs(world):
    (path,) = list(world["results"].rglob("seed0-*.json"))
    record = results.read_record(path)
    maps = dict(np.load(path.with_suffix("") / "depth.npz"))
    return record, maps


@pytest.mark.parametrize("name, how", [("depth-anything", "flag"), ("dpt", "env")])
def test_tiny_models_end_to_end(world, folders, monkeypatch, name, how):
    folder = folders[name]
    if how == "env":
        monkeypatch.setenv("GFBENCH_DEPTH_PRIOR", str(folder))
    result = run_depthprobe(world, "--suite", "test-masked", *(["--depth-prior", str(folder)] if how == "flag" else []))
    assert result.exit_code == 0, result.output
    origin = {"flag": "--depth-prior", "env": "$GFBENCH_DEPTH_PRIOR"}[how]
    assert f"depth prior: {name} (from {origin})" in result.output
    record, maps = probe_outputs(world)
    assert record["status"] == "ok"
    assert record["priors"] == {"depth": {"kind": "depth", "name": name, "path": str(folder.resolve()),
                                          "files_sha256": folder_fingerprint(folder), "origin": how}}
    assert record["identity"]["priors"]["depth"]["name"] == name
    split = make_split(world["scenes"]["a"], specs.load_suite("test-masked").protocol)
    assert sorted(maps) == sorted(v.name for v in split.train)
    for view in split.train:
        np.testing.assert_allclose(maps[view.name], direct_prediction(folder, view.image), rtol=1e-5, atol=1e-7)
    cached = list((world["data"] / "prior-cache" / "depth").rglob("*.npy"))
    assert len(cached) == len(split.train) and all("testset/a" in p.as_posix() for p in cached)


def test_oracle_end_to_end_and_labelled(world):
    result = run_depthprobe(world, "--suite", "test-masked-oracle", "--depth-prior", "oracle")
    assert result.exit_code == 0, result.output
    record, maps = probe_outputs(world)
    assert record["priors"]["depth"]["name"] == "oracle" and record["priors"]["depth"]["path"] is None
    scene = world["scenes"]["a"]
    for view in make_split(scene, specs.load_suite("test-masked-oracle").protocol).train:
        x, y, w, h = view.box
        np.testing.assert_allclose(maps[view.name], 1 / scene.frames[view.frame_index].depth[y:y + h, x:x + w],
                                   rtol=1e-6)
    assert method_label(record, specs.load_suite("test-masked-oracle")) == "depthprobe+oracle-depth"


@pytest.mark.parametrize("args, message", [
    (["--suite", "test-masked", "--depth-prior", "oracle"],
     "suite 'test-masked' does not allow the 'oracle' depth prior"),
    (["--suite", "test-masked"], "method 'depthprobe' cannot run here: needs a depth prior (none configured"),
    (["--suite", "test-masked", "--depth-prior", "/no/such/folder"], "depth prior: /no/such/folder is not a folder"),
])
def test_refused_before_any_training(world, args, message):
    result = run_depthprobe(world, *args)
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output and not world["results"].exists()


def test_a_model_that_fails_to_load_stops_the_run_before_training(world, folders, tmp_path):
    folder = broken_folder(tmp_path, folders, "corrupt-weights")
    result = run_depthprobe(world, "--suite", "test-masked", "--depth-prior", str(folder))
    assert result.exit_code != 0 and "cannot be loaded by transformers" in result.output
    assert not list(world["results"].rglob("*.json"))
