"""Suites of your own: suite files named by path, user spec folders beside the built-ins, include: of a
built-in suite, frozen splits beside the suite (never in the package), `gfbench validate` on frozen split
files, the TnT notice, and the README's "Benchmark your own capture" run end to end on a COLMAP fixture."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from gfbench import paths, results, runner, specs
from gfbench.cli import main
from gfbench.splits import SceneInputMissing, check_scene_inputs, checksum
from test_builders import colmap_capture

REPO = Path(__file__).resolve().parents[1]


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def dataset(dataset_id: str = "mine", scenes=("cap",)) -> dict:
    return {"id": dataset_id, "kind": "dataset", "version": 1, "layout": "colmap", "scenes": list(scenes)}


def user_suite(suite_id: str, include: str = "synthetic-masked", **fields) -> dict:
    return {"include": include, "id": suite_id, "kind": "suite", "version": 1, "dataset": "mine", "scenes": "all",
            **fields}


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


# ---------------------------------------------------------------- finding suites of your own


def test_a_suite_file_includes_a_builtin_suite_and_finds_its_dataset_beside_it(tmp_path):
    write_yaml(tmp_path / "mine.yaml", dataset())
    path = write_yaml(tmp_path / "my-masked.yaml", user_suite("my-masked"))
    suite = specs.load_suite(str(path))
    builtin = specs.load_suite("synthetic-masked")
    assert (suite.id, suite.dataset, suite.scenes) == ("my-masked", "mine", ("cap",))
    assert suite.protocol == builtin.protocol and suite.metrics == builtin.metrics and suite.preset == "quick"
    assert suite.splits_dir == tmp_path / "splits"


def test_suite_file_errors_name_the_file(tmp_path):
    with pytest.raises(specs.SpecError, match=r"nowhere\.yaml: suite file not found"):
        specs.load_suite(str(tmp_path / "nowhere.yaml"))
    write_yaml(tmp_path / "mine.yaml", dataset())
    path = write_yaml(tmp_path / "bad.yaml", user_suite("bad", include="no-such-suite"))
    with pytest.raises(specs.SpecError, match=r"bad\.yaml: field 'include': 'no-such-suite' is neither a file beside "
                                              r"it nor a known suite \(known suites: dl3dv-masked"):
        specs.load_suite(str(path))
    path = write_yaml(tmp_path / "synthetic-masked.yaml", user_suite("synthetic-masked"))
    with pytest.raises(specs.SpecError, match=r"suite id 'synthetic-masked' is also defined by .*datasets/suites/"
                                              r"synthetic-masked\.yaml; give one of them another id"):
        specs.load_suite(str(path))


def test_user_spec_folders_add_to_the_builtins(tmp_path, monkeypatch):
    folder = tmp_path / "specs"
    write_yaml(folder / "mine.yaml", dataset())
    write_yaml(folder / "suites" / "my-masked.yaml", user_suite("my-masked"))
    builtin_suites, builtin_datasets = specs.list_suites(), specs.list_datasets()
    for how in ("flag", "env"):
        args, env = (["--specs", str(folder)], None) if how == "flag" else ([], {paths.SPEC_PATH_ENV: str(folder)})
        result = invoke(*args, "ls", "suites", env=env)
        assert result.exit_code == 0, result.output
        listed = [line.split()[0] for line in result.output.splitlines() if not line.startswith(" ")]
        assert listed == sorted([*builtin_suites, "my-masked"])
        assert f"({folder / 'suites' / 'my-masked.yaml'})" in result.output
        assert invoke(*args, "ls", "scenes", "--suite", "my-masked", env=env).output == "cap\n"
        validated = invoke(*args, "validate", env=env)
        counts = f"{len(builtin_datasets) + 1} datasets, {len(builtin_suites) + 1} suites"  # built-ins + yours
        assert validated.exit_code == 0 and counts in validated.output, validated.output
    monkeypatch.setenv(paths.SPEC_PATH_ENV, str(folder))
    assert specs.load_suite("my-masked").splits_dir == folder / "splits"
    assert specs.load_suite("synthetic-masked").path == REPO / "datasets" / "suites" / "synthetic-masked.yaml"


def test_a_user_folder_never_shadows_a_builtin(tmp_path, monkeypatch):
    folder = tmp_path / "specs"
    write_yaml(folder / "suites" / "synthetic-masked.yaml", {"include": "dl3dv-masked", "id": "synthetic-masked"})
    write_yaml(folder / "tnt.yaml", dataset("tnt"))
    monkeypatch.setenv(paths.SPEC_PATH_ENV, str(folder))
    with pytest.raises(specs.SpecError, match="suite id 'synthetic-masked' is also defined by"):
        specs.load_suite("synthetic-masked")
    with pytest.raises(specs.SpecError, match="dataset id 'tnt' is also defined by"):
        specs.load_dataset("tnt")
    problems = specs.validate_all()
    assert any("synthetic-masked" in p and "also defined by" in p for p in problems)
    assert any("'tnt' is also defined by" in p for p in problems)


def test_gfbench_specs_still_replaces_the_builtin_folder(tmp_path, monkeypatch):
    write_yaml(tmp_path / "mine.yaml", dataset())
    monkeypatch.setenv(paths.SPECS_ENV, str(tmp_path))
    assert specs.list_datasets() == ["mine"] and specs.list_suites() == []


# ---------------------------------------------------------------- frozen split files


@pytest.fixture
def repo_specs(tmp_path, monkeypatch):
    """A private copy of the built-in specs with their frozen splits, as the built-in folder."""
    shutil.copytree(REPO / "datasets", tmp_path / "datasets")
    monkeypatch.setenv(paths.SPECS_ENV, str(tmp_path / "datasets"))
    return tmp_path / "datasets"


def edit(path: Path, change, forge: bool = False) -> None:
    frozen = json.loads(path.read_text())
    change(frozen)
    if forge:
        frozen["checksum"] = checksum(frozen)
    path.write_text(json.dumps(frozen))


@pytest.mark.parametrize("change,forge,message", [
    (lambda f: f["splits"][0]["train"][3]["box"].__setitem__(0, 7), False, "does not match its checksum"),
    (lambda f: f["splits"][0]["train"][3]["box"].__setitem__(0, 7), True, None),  # caught by `splits verify` only
    (lambda f: f.update(suite_version=3), True, "suite_version is 3, suite synthetic-masked"),
    (lambda f: f["protocol"].update(downsample=3), True, "protocol is"),
    (lambda f: f["splits"][0]["train"][1].update(index=3), True, "train frames [0, 3, 4"),
    (lambda f: f["splits"][0]["test"].pop(), True, "test frames"),
    (lambda f: f.update(format_version=1), False, "gfbench-split version 1"),
])
def test_validate_checks_every_frozen_split_file(repo_specs, change, forge, message):
    assert invoke("validate").exit_code == 0
    path = repo_specs / "splits" / "synthetic-masked" / "room.json"
    edit(path, change, forge)
    result = invoke("validate")
    if message is None:
        assert result.exit_code == 0
        return
    assert result.exit_code == 1 and f"error: {path}: " in result.output and message in result.output


def test_validate_reports_frozen_splits_that_belong_to_no_suite(repo_specs):
    shutil.copytree(repo_specs / "splits" / "synthetic-masked", repo_specs / "splits" / "old-suite")
    (repo_specs / "splits" / "synthetic-masked" / "room.json").rename(repo_specs / "splits" / "synthetic-masked" / "attic.json")
    result = invoke("validate")
    assert result.exit_code == 1
    assert f"{repo_specs / 'splits' / 'old-suite'}: frozen splits of suite 'old-suite'" in result.output
    assert "attic.json: scene is 'room'" in result.output


def test_splits_are_never_frozen_into_the_installed_package(monkeypatch):
    monkeypatch.setenv(paths.SPECS_ENV, str(REPO / "datasets"))
    monkeypatch.setattr(paths, "_PACKAGE_DIR", REPO)  # as if the specs were inside the installed package
    result = invoke("splits", "freeze", "--suite", "synthetic-masked")
    assert result.exit_code == 1
    assert "built into the installed gfbench package" in result.output and "include: synthetic-masked" in result.output


# ---------------------------------------------------------------- TnT: gfbench's own protocol, said everywhere


def test_tnt_suites_say_they_are_not_the_papers_protocol(tmp_path):
    result = invoke("ls", "suites")
    for suite_id in ("tnt-masked", "tnt-masked-4x"):
        suite = specs.load_suite(suite_id)
        assert "not the paper's" in suite.notice and "not the paper's" in suite.description
        line = result.output.splitlines().index(next(line for line in result.output.splitlines()
                                                     if line.startswith(suite_id + " ")))
        assert "gfbench's own masked protocol on Tanks and Temples" in result.output.splitlines()[line + 1]
    suite = specs.load_suite("tnt-masked")
    record = {"suite": suite.id, "suite_version": suite.version, "protocol_hash": results.protocol_hash(suite),
              "dataset": "tnt", "scene": "barn", "method": "3dgs", "seed": 0, "preset": "paper", "status": "ok",
              "metrics": {"psnr": 20.0, "ssim": 0.7, "lpips_vgg_3dgs": 0.3},
              "config": runner.resolve_config("3dgs", "paper", {}), "config_hash": "abc"}
    results.write_record(results.record_path(tmp_path / "results", suite.id, "barn", "3dgs", 0, "abc"), record)
    result = invoke("leaderboard", "--suite", "tnt-masked", "--results", str(tmp_path / "results"),
                    "--out", str(tmp_path / "boards"), "--compare-paper")
    assert result.exit_code == 0, result.output
    assert f"warning: {suite.notice}" in result.output
    board = (tmp_path / "boards" / "tnt-masked.md").read_text()
    assert f"> **Note:** {suite.notice}" in board and f"> **Warning:** {suite.notice}" in board


# ---------------------------------------------------------------- scene inputs checked before training


def test_a_split_file_suite_on_a_shard_without_the_file_stops_before_training(tmp_path):
    colmap_capture(tmp_path / "cap", frames=10)
    out = tmp_path / "data"
    assert invoke("build-data", "colmap", str(tmp_path / "cap"), "--dataset", "mine", "--out", str(out)).exit_code == 0
    write_yaml(tmp_path / "specs" / "mine.yaml", dataset())
    path = write_yaml(tmp_path / "specs" / "my-sparse.yaml", user_suite("my-sparse", include="mipnerf360-sparse-3"))
    suite = specs.load_suite(str(path))
    with pytest.raises(SceneInputMissing, match=r"scene mine/cap was built without train_test_split_3.json, which "
                                                r"suite my-sparse reads its 3 train views from.*--splits DIR"):
        check_scene_inputs([(suite, "cap")], out)
    result = invoke("run", "--suite", str(path), "--data", str(out), "--method", "3dgs", "--results",
                    str(tmp_path / "results"))
    assert result.exit_code == 1 and "built without train_test_split_3.json" in result.output
    assert not (tmp_path / "results").exists()  # stopped before any job
    assert invoke("build-data", "colmap", str(tmp_path / "cap"), "--dataset", "mipnerf360", "--scene", "garden",
                  "--out", str(out)).exit_code == 0
    with pytest.raises(SceneInputMissing, match=r"mipnerf360/garden was built without train_test_split_6.json.*"
                                                r"drive\.google\.com.*Or run the variant suite "
                                                r"mipnerf360-sparse-6-fsgs-rule"):
        check_scene_inputs([(specs.load_suite("mipnerf360-sparse-6"), "garden")], out)
    check_scene_inputs([(specs.load_suite("mipnerf360-sparse-6-fsgs-rule"), "garden")], out)


def test_a_dl3dv_suite_refuses_scenes_undistorted_another_way(tmp_path):
    colmap_capture(tmp_path / "cap")  # an OPENCV capture, built with the default keep-size
    out = tmp_path / "data"
    assert invoke("build-data", "colmap", str(tmp_path / "cap"), "--dataset", "mine", "--out", str(out)).exit_code == 0
    suite = specs.SuiteSpec(**{**specs.load_suite("dl3dv-masked").__dict__, "dataset": "mine"})
    assert suite.undistort == "opencv-alpha0"
    with pytest.raises(SceneInputMissing, match=r"mine/cap was undistorted with 'keep-size', but the dataset spec of "
                                                r"suite dl3dv-masked asks for 'opencv-alpha0'; build it again with "
                                                r"--undistort opencv-alpha0"):
        check_scene_inputs([(suite, "cap")], out)
    assert invoke("build-data", "colmap", str(tmp_path / "cap"), "--dataset", "mine", "--out", str(out),
                  "--undistort", "opencv-alpha0").exit_code == 0
    check_scene_inputs([(suite, "cap")], out)


# ---------------------------------------------------------------- the README's four commands


def readme_commands() -> list[list[str]]:
    """The commands of the README's "Benchmark your own capture" block, without ``gfbench`` and comments."""
    text = (REPO / "README.md").read_text().split("## Benchmark your own capture", 1)[1]
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line.split("#", 1)[0])[1:] for line in block.splitlines() if line.strip()]


def package_state() -> dict[str, tuple[int, int]]:
    """Every file of the package and its specs (size, mtime): what a user's run must leave untouched."""
    roots = [REPO / "benchmark", REPO / "methods", REPO / "datasets", REPO / "leaderboards"]
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_benchmark_your_own_capture_in_four_commands(tmp_path, monkeypatch):
    """README "Benchmark your own capture": build, suite, run, leaderboard, in a temporary folder, with the
    ReconFusion-style split file of a sparse suite of your own beside it; the package is left as it was."""
    before = package_state()
    builtin_datasets, builtin_suites = len(specs.list_datasets()), len(specs.list_suites())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GFBENCH_DATA", str(tmp_path / "data"))
    colmap_capture(tmp_path / "garden", frames=10)
    (tmp_path / "garden" / "train_test_split_3.json").write_text(json.dumps({"train_ids": [1, 4, 9],
                                                                             "test_ids": [0, 8]}))
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["build-data", "colmap"], ["suite", "new"], ["run", "--suite"],
                                         ["leaderboard", "--suite"]]
    commands[2] += ["--set", "steps=30"]  # a short run: the test is about the plumbing
    commands[3] += ["--out", "boards", "--all-configs"]  # steps=30 is not the suite's preset
    for command in commands:
        result = invoke(*command)
        assert result.exit_code == 0, (command, result.output)
    assert (tmp_path / "specs" / "mine.yaml").is_file()
    [record] = [r for _, r in results.iter_records(tmp_path / "results", "my-masked")]
    assert record["status"] == "ok" and record["dataset"] == "mine" and record["metrics"]["psnr"] > 0
    assert "my-masked" in (tmp_path / "boards" / "my-masked.md").read_text()
    # the same capture under a sparse suite of your own: include a built-in, override what differs
    write_yaml(tmp_path / "specs" / "my-sparse.yaml", user_suite("my-sparse", include="mipnerf360-sparse-3",
                                                                 metrics=["psnr", "ssim"], preset="quick"))
    result = invoke("run", "--suite", "specs/my-sparse.yaml", "--method", "3dgs", "--set", "steps=30")
    assert result.exit_code == 0, result.output
    [record] = [r for _, r in results.iter_records(tmp_path / "results", "my-sparse")]
    assert record["split"]["train_indices"] == [1, 4, 9] and record["split"]["split_file"] == "train_test_split_3.json"
    result = invoke("splits", "freeze", "--suite", "specs/my-sparse.yaml")
    assert result.exit_code == 0, result.output
    frozen = tmp_path / "specs" / "splits" / "my-sparse" / "garden.json"  # beside the suite, not in the package
    assert [t["index"] for t in json.loads(frozen.read_text())["splits"][0]["train"]] == [1, 4, 9]
    validated = invoke("--specs", "specs", "validate")  # the folder of your own, suites at its top level
    assert validated.exit_code == 0, validated.output
    counts = f"{builtin_datasets + 1} datasets, {builtin_suites + 2} suites), 13 frozen split files"
    assert counts in validated.output, validated.output  # built-ins + mine, my-masked, my-sparse and its split
    assert package_state() == before


def test_a_suite_of_your_own_does_not_inherit_the_shipped_synthetic_prior(tmp_path):
    """`suite new --from synthetic-masked` writes `default_priors: {video: null}`: the shipped prior was trained for
    the synthetic scenes, so a capture of your own names its prior by flag."""
    assert specs.load_suite("synthetic-masked").default_priors == {"video": "synthetic-video"}
    write_yaml(tmp_path / "mine.yaml", dataset())  # the dataset's spec beside the suite: nothing to build
    result = invoke("suite", "new", str(tmp_path / "mine-masked.yaml"), "--from", "synthetic-masked",
                    "--dataset", "mine")
    assert result.exit_code == 0, result.output
    data = yaml.safe_load((tmp_path / "mine-masked.yaml").read_text())
    assert data["default_priors"] == {"video": None} and data["include"] == "synthetic-masked"
    assert not specs.load_suite(str(tmp_path / "mine-masked.yaml")).default_priors  # none inherited
