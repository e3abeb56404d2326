import shutil
from pathlib import Path

import pytest
import yaml

from gfbench import specs
from gfbench.paths import specs_root

REPO_SPECS = specs_root()
MASKED_PROTOCOL = specs.load_suite("synthetic-masked").protocol


@pytest.fixture
def spec_dir(tmp_path, monkeypatch):
    """A private copy of the dataset specs, so tests can break them."""
    (tmp_path / "suites").mkdir()
    for path in REPO_SPECS.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setenv("GFBENCH_SPECS", str(tmp_path))
    return tmp_path


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def suite(**overrides):
    base = {"id": "s", "kind": "suite", "version": 1, "dataset": "synthetic", "scenes": ["room"],
            "protocol": MASKED_PROTOCOL, "metrics": ["psnr"]}
    return {**base, **overrides}


def test_repository_datasets_load():
    for dataset_id in ("synthetic", "dl3dv", "tnt", "mipnerf360"):
        spec = specs.load_dataset(dataset_id)
        assert spec.id == dataset_id and spec.scenes
    assert len(specs.load_dataset("dl3dv").scenes) == 24
    assert specs.load_dataset("dl3dv").resolution == (960, 540)
    assert len(specs.load_dataset("tnt").scenes) == 7
    assert len(specs.load_dataset("mipnerf360").scenes) == 9


def test_dl3dv_scene_list_matches_the_shared_hash_list():
    shared = Path(__file__).resolve().parents[2] / "shared" / "dl3dv_benchmark_24.txt"
    if not shared.exists():
        pytest.skip("../shared is not beside this checkout")
    assert list(specs.load_dataset("dl3dv").scenes) == shared.read_text().split()


def test_unknown_field_names_file_and_field(spec_dir):
    data = yaml.safe_load((spec_dir / "tnt.yaml").read_text())
    data["scenez"] = ["barn"]
    write_yaml(spec_dir / "tnt.yaml", data)
    with pytest.raises(specs.SpecError, match=r"tnt\.yaml: field 'scenez': unknown field"):
        specs.load_dataset("tnt")


def test_wrong_type_names_the_field(spec_dir):
    data = yaml.safe_load((spec_dir / "tnt.yaml").read_text())
    data["version"] = "one"
    write_yaml(spec_dir / "tnt.yaml", data)
    with pytest.raises(specs.SpecError, match=r"field 'version': expected int, got 'one'"):
        specs.load_dataset("tnt")


def test_id_must_match_file_name(spec_dir):
    data = yaml.safe_load((spec_dir / "tnt.yaml").read_text())
    data["id"] = "tanks"
    write_yaml(spec_dir / "tnt.yaml", data)
    with pytest.raises(specs.SpecError, match="field 'id'"):
        specs.load_dataset("tnt")


def test_suite_with_unknown_scene_is_refused(spec_dir):
    write_yaml(spec_dir / "suites" / "s.yaml", suite(scenes=["room", "attic"]))
    with pytest.raises(specs.SpecError, match=r"s\.yaml: field 'scenes': unknown scene 'attic'"):
        specs.load_suite("s")


def test_suite_with_unknown_dataset_is_refused(spec_dir):
    write_yaml(spec_dir / "suites" / "s.yaml", suite(dataset="nowhere"))
    with pytest.raises(specs.SpecError, match="no dataset spec 'nowhere'"):
        specs.load_suite("s")


def test_suite_missing_field_and_bad_yaml(spec_dir):
    data = suite()
    del data["dataset"]
    write_yaml(spec_dir / "suites" / "s.yaml", data)
    with pytest.raises(specs.SpecError, match="field 'dataset': missing"):
        specs.load_suite("s")
    (spec_dir / "suites" / "s.yaml").write_text("id: [unclosed")
    with pytest.raises(specs.SpecError, match="not valid YAML"):
        specs.load_suite("s")


def test_include_cycle_is_reported(spec_dir):
    write_yaml(spec_dir / "suites" / "a.yaml", {"include": "b.yaml"})
    write_yaml(spec_dir / "suites" / "b.yaml", {"include": "a.yaml"})
    with pytest.raises(specs.SpecError, match="include cycle"):
        specs.load_suite("a")


def test_unknown_suite_lists_known_ones(spec_dir):
    with pytest.raises(specs.SpecError, match="no suite 'nope'"):
        specs.load_suite("nope")


def test_validate_all_reports_each_broken_file(spec_dir):
    write_yaml(spec_dir / "suites" / "s.yaml", suite(scenes=["attic"]))
    problems = specs.validate_all()
    assert len(problems) == 1 and "s.yaml" in problems[0] and "attic" in problems[0]
