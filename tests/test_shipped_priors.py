"""Priors shipped inside the package as a suite's default: a suite's `default_priors` names one, a run takes it
when neither the flag nor the environment variable names a folder, and records and leaderboards name it by its
folder's name and the sha256 of its files like any other prior. The shipped root is pointed at a tmp folder
holding a tiny randomly initialised prior (the real one is not part of these tests)."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from dataclasses import replace

import pytest
from click.testing import CliRunner

from gfbench import leaderboard, results, specs
from gfbench.cli import main
from gfbench.priors import FROM_ENV, FROM_FLAG, FROM_SUITE, KINDS, PriorError, folder_fingerprint, priors_label
from gfbench.priors import prior_kind, shipping, video_kind
from gfbench.runner import plan_jobs
from worlds import make_world

ENV_VAR = "GFBENCH_VIDEO_PRIOR"
SHIPPED = "tiny-video"
QUICK_GENFUSION = ["--set", "steps=2", "--set", "repair_start=1", "--set", "repair_every=1", "--set",
                   "repair_until=3"]


@pytest.fixture(scope="module")
def shipped_root(tmp_path_factory):
    """A shipped-priors root holding ``tiny-video`` (a tiny prior, two DDIM steps), ``not-a-prior``, and the real
    ``synthetic-video`` (linked: the built-in synthetic suites name it, and the test world's specs include them)."""
    from gfbench.priors.video import build_video_prior, video_prior_spec

    root = tmp_path_factory.mktemp("shipped")
    (root / "synthetic-video").symlink_to(shipping.shipped_root() / "synthetic-video")
    spec = copy.deepcopy(video_prior_spec("tiny"))
    spec["prior"]["sampling"]["steps"] = 2
    build_video_prior(spec, seed=0).save_pretrained(root / SHIPPED)
    (root / "not-a-prior").mkdir()
    (root / "not-a-prior" / "notes.txt").write_text("no prior here\n")
    return root


@pytest.fixture
def world(tmp_path, monkeypatch, shipped_root):
    """The test world (dataset ``testset``), the shipped root pointed at the tiny prior, no prior variable set,
    and suite ``test-default``: ``test-masked`` with ``default_priors: {video: tiny-video}``."""
    monkeypatch.setattr(shipping, "shipped_root", lambda: shipped_root)
    monkeypatch.delenv(ENV_VAR, raising=False)
    world = make_world(tmp_path, monkeypatch)
    write_suite(world, "test-default", default_priors={"video": SHIPPED})
    world["prior"] = shipped_root / SHIPPED
    return world


def write_suite(world, suite_id, **fields):
    path = world["specs"] / "suites" / f"{suite_id}.yaml"
    path.write_text(json.dumps({"include": "test-masked", "id": suite_id, **fields}))  # `include` may be overridden
    return path


def plan(suite_id, methods, prior=None):
    return plan_jobs(specs.load_suite(suite_id), methods, ["a"], None, None, {}, priors={"video": prior})


def run_cli(world, *args):
    return CliRunner().invoke(main, ["run", "--data", str(world["data"]), "--results", str(world["results"]), *args])


def test_suite_default_is_resolved_with_no_flag_and_no_variable(world):
    (job,) = plan("test-default", ["genfusion"])
    source = job.priors["video"]
    assert source.origin == FROM_SUITE and source.name == SHIPPED
    assert source.path == str(world["prior"].resolve())
    assert source.files_sha256 == folder_fingerprint(world["prior"])
    assert "unet/diffusion_pytorch_model.safetensors" in source.files_sha256
    result = run_cli(world, "--suite", "test-default", "--method", "genfusion", "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"video prior: {SHIPPED} (the default of suite test-default, shipped with gfbench)" in result.output


def test_flag_and_variable_override_the_suite_default(world, tmp_path, monkeypatch):
    flagged, variable = tmp_path / "flag-video", tmp_path / "env-video"
    shutil.copytree(world["prior"], flagged)
    shutil.copytree(world["prior"], variable)
    monkeypatch.setenv(ENV_VAR, str(variable))
    (job,) = plan("test-default", ["genfusion"])
    assert (job.priors["video"].name, job.priors["video"].origin) == ("env-video", FROM_ENV)
    (job,) = plan("test-default", ["genfusion"], prior=str(flagged))
    assert (job.priors["video"].name, job.priors["video"].origin) == ("flag-video", FROM_FLAG)
    assert job.priors["video"].path == str(flagged.resolve())
    result = run_cli(world, "--suite", "test-default", "--method", "genfusion", "--prior", str(flagged), "--dry-run")
    assert result.exit_code == 0 and "video prior: flag-video (from --prior)" in result.output, result.output


def test_origin_is_recorded_but_no_part_of_a_job_identity(world, tmp_path):
    """A run that names a prior by flag keeps the identity it had before origins were recorded, and the
    suite's default and a flag naming the same folder are the same job (the same record)."""
    from dataclasses import replace

    (by_default,) = plan("test-default", ["genfusion"])
    (by_flag,) = plan("test-default", ["genfusion"], prior=str(world["prior"]))
    assert by_flag.priors["video"].origin == FROM_FLAG
    unrecorded = replace(by_flag, priors={"video": replace(by_flag.priors["video"], origin=None)})
    assert by_flag.identity("x") == unrecorded.identity("x") == by_default.identity("x")
    assert by_flag.identity("x")["priors"]["video"] == {
        "name": SHIPPED, "sha256": hashlib.sha256(json.dumps(
            {"name": SHIPPED, "files": folder_fingerprint(world["prior"])}, sort_keys=True).encode()).hexdigest()}
    assert by_default.priors["video"].as_record()["origin"] == FROM_SUITE
    assert "origin" not in unrecorded.priors["video"].as_record()


@pytest.mark.parametrize("default, problem", [
    ({"video": "no-such-prior"}, f"video: no shipped prior 'no-such-prior' (shipped with this gfbench: "
                                 f"not-a-prior, synthetic-video, {SHIPPED}; see 'gfbench ls priors')"),
    ({"audio": SHIPPED}, "unknown prior kind 'audio' (kinds: depth, video)"),
    ({"depth": SHIPPED}, f"depth: shipped prior '{SHIPPED}'"),
    ({"video": "not-a-prior"}, "is not a video prior folder: it has no 'prior.json'"),
    ({"video": ["a"]}, "video: expected the name of a shipped prior, got ['a']"),
])
def test_a_bad_default_prior_is_a_clear_error_naming_the_suite_file(world, default, problem):
    path = write_suite(world, "test-bad", default_priors=default)
    with pytest.raises(specs.SpecError) as info:
        specs.load_suite("test-bad")
    assert str(info.value).startswith(f"{path}: field 'default_priors': ")
    assert problem in str(info.value)
    result = CliRunner().invoke(main, ["validate"])
    assert result.exit_code == 1 and f"{path}: field 'default_priors'" in result.output


def test_an_including_suite_inherits_the_default_and_null_drops_it(world):
    write_suite(world, "test-inherits", include="test-default")
    assert specs.load_suite("test-inherits").default_priors == {"video": SHIPPED}
    write_suite(world, "test-drops", include="test-default", default_priors={"video": None})
    assert specs.load_suite("test-drops").default_priors == {}
    with pytest.raises(PriorError, match=r"no folder given; pass --prior PATH or set GFBENCH_VIDEO_PRIOR"):
        plan("test-drops", ["genfusion"])


def test_default_priors_must_be_a_mapping(world):
    path = write_suite(world, "test-bad", default_priors="tiny-video")
    with pytest.raises(specs.SpecError, match="field 'default_priors': expected dict, got 'tiny-video'"):
        specs.load_suite(str(path))


def test_kinds_required_files_match_what_their_loaders_check():
    from gfbench.priors import depth, video

    assert KINDS["video"].required_files == (video.PRIOR_JSON, *(f"{name}/{file}" for name, file in
                                                                 video.CONFIG_FILES.items()))
    assert KINDS["depth"].required_files == depth.REQUIRED_FILES


def test_a_method_without_a_video_prior_is_unaffected(world):
    (with_default,) = plan("test-default", ["3dgs"])
    (without,) = plan("test-masked", ["3dgs"])
    assert with_default.priors == {} and "priors" not in with_default.identity("x")
    identity = with_default.identity("x")
    assert {**identity, "suite": "test-masked"} == without.identity("x")


def test_a_missing_shipped_folder_at_planning_is_a_clear_error(world, monkeypatch, tmp_path):
    suite = specs.load_suite("test-default")
    monkeypatch.setattr(shipping, "shipped_root", lambda: tmp_path / "elsewhere")
    with pytest.raises(PriorError, match="no shipped prior 'tiny-video' .shipped with this gfbench: none"):
        plan_jobs(suite, ["genfusion"], ["a"], None, None, {})


def test_ls_priors_lists_each_shipped_prior_with_size_sha256_and_the_suites_taking_it(world):
    result = CliRunner().invoke(main, ["ls", "priors"])
    assert result.exit_code == 0, result.output
    files = folder_fingerprint(world["prior"])
    size = sum((world["prior"] / name).stat().st_size for name in files)
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    (line,) = [line for line in result.output.splitlines() if line.startswith(SHIPPED)]
    assert line.split()[:3] == [SHIPPED, "video", f"{size / 2**20:.2f}"]
    assert f"{len(files)} files  sha256 {digest}" in line and line.endswith("default of: test-default")
    assert str(world["prior"]) in result.output
    (other,) = [line for line in result.output.splitlines() if line.startswith("not-a-prior")]
    assert "not-a-prior" in other and "default of: no suite" in other


def test_ls_priors_says_when_none_are_shipped(monkeypatch, tmp_path):
    monkeypatch.setattr(shipping, "shipped_root", lambda: tmp_path / "none")
    result = CliRunner().invoke(main, ["ls", "priors"])
    assert result.exit_code == 0 and "no priors shipped with this gfbench" in result.output



def test_record_and_leaderboard_name_the_default_prior_with_sha256(world):
    result = run_cli(world, "--suite", "test-default", "--method", "genfusion", "--scenes", "a", *QUICK_GENFUSION)
    assert result.exit_code == 0, result.output
    (path,) = list(world["results"].rglob("seed0-*.json"))
    record = results.read_record(path)
    assert record["status"] == "ok", record.get("error")
    entry = record["priors"]["video"]
    files = folder_fingerprint(world["prior"])
    assert entry == {"kind": "video", "name": SHIPPED, "path": str(world["prior"].resolve()), "files_sha256": files,
                     "origin": FROM_SUITE}
    label = f"+video:{SHIPPED}#{hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:6]}"
    assert priors_label(record["priors"]) == label
    suite = specs.load_suite("test-default")
    entry_label = leaderboard.method_label(record, suite)  # genfusion@cfg-<hash>: the steps were set
    assert entry_label.startswith("genfusion") and entry_label.endswith(label)


def _planned_default(world, **changes):
    """The video source planning makes of test-default's shipped prior, with ``changes`` (e.g. the path a
    driver installed elsewhere would record)."""
    source = prior_kind("video").resolve_named(None, specs.load_suite("test-default"))
    assert source.origin == FROM_SUITE and source.path == str(world["prior"].resolve())
    return replace(source, **changes)


def test_a_worker_loads_the_shipped_default_from_its_own_install(world, monkeypatch):
    """A Ray worker's gfbench may be installed at another path than the driver's: the shipped prior a suite
    names is found by name in the worker's own package, and its files must hash as planned."""
    monkeypatch.setattr(video_kind, "_loaded", {})
    source = _planned_default(world, path="/driver/site-packages/gfbench/priors/shipped/tiny-video")
    prior = video_kind.loaded_prior(source)
    assert prior.source is source and prior.source.files_sha256 == folder_fingerprint(world["prior"])


def test_a_worker_refuses_a_shipped_copy_that_differs_from_the_planned_one(world, monkeypatch):
    monkeypatch.setattr(video_kind, "_loaded", {})
    source = _planned_default(world, path="/driver/shipped/tiny-video",
                              files_sha256={**folder_fingerprint(world["prior"]), "prior.json": "0" * 64})
    planned = "is not the prior the run planned .* differs from /driver/shipped/tiny-video"
    with pytest.raises(PriorError, match=planned):
        video_kind.loaded_prior(source)


def test_a_flag_named_prior_missing_on_a_worker_is_a_clear_error(world, monkeypatch):
    monkeypatch.setattr(video_kind, "_loaded", {})
    source = _planned_default(world, path="/mnt/not-mounted/my-prior", origin=FROM_FLAG)
    with pytest.raises(PriorError, match=r"/mnt/not-mounted/my-prior is not a folder on .*every machine"):
        video_kind.loaded_prior(source)
