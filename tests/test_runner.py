"""The runner with stand-in methods: resume, overwrite, changed configs, crashes, records and renders."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gfbench import methods, results, specs
from gfbench.cli import main
from gfbench.methods import Render
from gfbench.runner import plan_jobs, run_suite
from gfbench.shards import write_scene
from gfbench.storage import DiskFull
from helpers import tiny_scene

WORKER = Path(__file__).with_name("run_worker.py")

CALLS = []


class MeanColor:
    """Renders the mean color of its train pixels everywhere."""

    name = "mean-color"

    def __init__(self, device="cpu"):
        self.color = None

    def fit(self, train_views, *, points, config, seed, workdir, progress=None):
        CALLS.append(("fit", config.get("steps"), seed))
        self.color = np.mean([v.image.reshape(-1, 3).mean(0) for v in train_views], axis=0) / 255.0
        if progress:
            progress(config.get("steps", 1), {"loss": 0.5, "psnr": 10.0})

    def render(self, cameras):
        return [Render(np.broadcast_to(self.color, (c.height, c.width, 3)).astype(np.float32)) for c in cameras]


class Crashes(MeanColor):
    name = "crashes"

    def fit(self, *args, **kwargs):
        raise RuntimeError("injected crash")


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A suite over a tiny built dataset, and the two stand-in methods registered."""
    spec_dir = tmp_path / "specs"
    (spec_dir / "suites").mkdir(parents=True)
    (spec_dir / "testset.yaml").write_text(
        "id: testset\nkind: dataset\nversion: 1\nlayout: colmap\nscenes: [a, b]\n")
    suite = {
        "id": "test-masked", "kind": "suite", "version": 1, "dataset": "testset", "scenes": "all",
        "protocol": specs.load_suite("synthetic-masked").protocol,
        "metrics": ["psnr", "ssim"], "preset": "quick", "seeds": [0],
    }
    (spec_dir / "suites" / "test-masked.yaml").write_text(json.dumps(suite))
    data = tmp_path / "data"
    for scene_id, seed in (("a", 0), ("b", 1)):
        write_scene(tiny_scene(frames=6, width=24, height=16, seed=seed, dataset="testset", scene_id=scene_id), data)
    monkeypatch.setenv("GFBENCH_SPECS", str(spec_dir))
    table = {"mean-color": f"{__name__}:MeanColor", "crashes": f"{__name__}:Crashes"}
    monkeypatch.setattr(methods, "_entry_points", lambda: table)
    presets = tmp_path / "mean-color.yaml"
    presets.write_text("settings:\n  steps: {type: int, min: 1}\npresets:\n  quick: {steps: 7}\n")
    monkeypatch.setattr(MeanColor, "presets_file", str(presets), raising=False)
    CALLS.clear()
    return {"data": data, "results": tmp_path / "results", "suite": specs.load_suite("test-masked"),
            "specs": spec_dir}


def run(world, method_names, **kwargs):
    overrides = kwargs.pop("overrides", {})
    jobs = plan_jobs(world["suite"], method_names, None, None, None, overrides)
    return run_suite(jobs, world["results"], world["data"], show_progress=False, **kwargs)


def test_records_hold_metrics_config_and_provenance(world):
    summary = run(world, ["mean-color"])
    assert len(summary.done) == 2 and not summary.failed
    record = results.read_record(summary.done[0])
    assert record["status"] == "ok" and record["method"] == "mean-color" and record["scene"] == "a"
    assert record["config"] == {"steps": 7} and len(record["config_hash"]) == 64
    assert set(record["metrics"]) >= {"psnr", "ssim"}
    assert len(record["per_image"]) == 3  # 6 frames, every 2nd is a train frame
    assert record["metrics"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in record["per_image"]]))
    for key in ("versions", "git_commit", "device", "wall_time_s", "peak_memory_mb", "created", "split"):
        assert key in record
    compare = summary.done[0].with_suffix("") / "compare"
    assert len(list(compare.glob("*.png"))) == 3


def test_rerun_skips_finished_jobs_and_overwrite_redoes_them(world):
    run(world, ["mean-color"])
    assert len(CALLS) == 2
    again = run(world, ["mean-color"])
    assert len(again.skipped) == 2 and not again.done and len(CALLS) == 2
    redo = run(world, ["mean-color"], overwrite=True)
    assert len(redo.done) == 2 and len(CALLS) == 4


def test_changed_config_is_a_new_job(world):
    first = run(world, ["mean-color"])
    changed = run(world, ["mean-color"], overrides={"steps": 9})
    assert len(changed.done) == 2 and set(changed.done).isdisjoint(first.done)
    assert CALLS[-1] == ("fit", 9, 0)


def test_a_crash_is_recorded_and_the_other_jobs_still_run(world):
    summary = run(world, ["crashes", "mean-color"])
    assert len(summary.failed) == 2 and len(summary.done) == 2
    failed = results.read_record(summary.failed[0])
    assert failed["status"] == "failed" and "injected crash" in failed["error"]
    assert all(results.read_record(p)["status"] == "ok" for p in summary.done)
    # a failed job is retried on the next run; the finished ones are not
    retry = run(world, ["crashes", "mean-color"])
    assert len(retry.failed) == 2 and len(retry.skipped) == 2


def test_missing_real_scene_fails_before_any_training(world, tmp_path):
    with pytest.raises(Exception, match="not built.*gfbench build-data testset"):
        run_suite(plan_jobs(world["suite"], ["mean-color"], None, None, None, {}), world["results"],
                  tmp_path / "empty", show_progress=False)
    assert CALLS == []


def test_cli_run_and_bad_input(world):
    cli = CliRunner()
    args = ["run", "--suite", "test-masked", "--method", "mean-color", "--data", str(world["data"]),
            "--results", str(world["results"])]
    result = cli.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2 ran, 0 skipped" in result.output
    assert "0 ran, 2 skipped" in cli.invoke(main, args).output
    bad = cli.invoke(main, args + ["--scenes", "zzz"])
    assert bad.exit_code != 0 and "no scene 'zzz'" in bad.output
    bad = cli.invoke(main, ["run", "--suite", "test-masked", "--method", "nope"])
    assert bad.exit_code != 0 and "unknown method 'nope'" in bad.output
    crash = cli.invoke(main, ["run", "--suite", "test-masked", "--method", "crashes", *args[5:]])
    assert crash.exit_code == 1 and "2 failed" in crash.output


def test_missing_lpips_weights_stop_the_run_before_training(world, tmp_path, monkeypatch):
    from gfbench.metrics import LpipsWeightsMissing

    monkeypatch.setenv("GFBENCH_LPIPS_WEIGHTS", str(tmp_path / "no-weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))
    suite = specs.SuiteSpec(**{**world["suite"].__dict__, "metrics": ("psnr", "lpips_vgg_3dgs")})
    with pytest.raises(LpipsWeightsMissing, match="vgg16-397923af.pth"):
        run_suite(plan_jobs(suite, ["mean-color"], None, None, None, {}), world["results"], world["data"],
                  show_progress=False)
    assert CALLS == []


# ---------------------------------------------------------------- records, renders and leftovers


def visible_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def hidden_entries(folder: Path) -> list[str]:
    """Hidden files and folders other than the job locks (which stay, empty, by design)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


def test_renders_arrive_with_their_record_and_nothing_else_stays(world):
    summary = run(world, ["mean-color"])
    folder = summary.done[0].parent
    record = summary.done[0]
    assert visible_entries(folder) == [record.stem, record.name]
    assert hidden_entries(folder) == []
    assert sorted(p.name for p in (folder / record.stem).iterdir()) == ["compare", "renders"]


def test_corrupt_and_foreign_records_are_reported_by_name_and_the_run_goes_on(world):
    first = run(world, ["mean-color"])
    garbage, foreign = sorted(first.done)
    garbage.write_text("{truncated")
    other = results.read_record(foreign)
    foreign.write_text(json.dumps({**other, "config_hash": "f" * 64}))
    summary = run(world, ["mean-color"], overwrite=True)
    assert summary.done == [] and summary.failed == []
    problems = dict(summary.problems)
    assert set(problems) == {garbage, foreign}
    assert problems[garbage].startswith(f"{garbage}: not a valid result record") and "left as is" in problems[garbage]
    assert "holds the record of another job" in problems[foreign]
    assert garbage.read_text() == "{truncated"  # never overwritten
    # a non-object record stops nothing either, and the CLI names it and exits 1
    garbage.write_text("[1, 2, 3]")
    result = CliRunner().invoke(main, ["run", "--suite", "test-masked", "--method", "mean-color", "--data",
                                       str(world["data"]), "--results", str(world["results"])])
    assert result.exit_code == 1, result.output
    assert f"not run: {garbage}: not a result record: a JSON list" in result.output
    assert "2 not run (a file in the way)" in result.output


def test_leftovers_of_an_interrupted_job_are_removed_when_it_runs_again(world):
    summary = run(world, ["mean-color"])
    record = summary.done[0]
    folder = record.parent
    record.unlink()  # as if the run had died after moving the renders in, before the record
    (folder / f".{record.stem}.partial-x1").mkdir()
    (folder / f".{record.name}.abc.tmp").write_text("{")
    again = run(world, ["mean-color"])
    assert again.done == [record]
    assert visible_entries(folder) == [record.stem, record.name] and hidden_entries(folder) == []


# ---------------------------------------------------------------- disk full (writes failing at chosen points)


def fail_with_enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_renders_stops_the_run_naming_the_file(world, monkeypatch):
    from PIL import Image

    first = run(world, ["mean-color"])  # scene a and b recorded
    monkeypatch.setattr(Image.Image, "save", fail_with_enospc)
    with pytest.raises(DiskFull) as caught:
        run(world, ["mean-color"], overwrite=True)
    assert "disk full (no space left on device) while writing a test render" in str(caught.value)
    assert caught.value.path.name.endswith(".png") and caught.value.path.parent.name == "renders"
    folder = first.done[0].parent
    assert hidden_entries(folder) == []  # the partial renders are gone
    assert visible_entries(folder) == [first.done[0].stem, first.done[0].name]  # the old result is kept


def test_disk_full_while_writing_the_record_leaves_no_trace(world, monkeypatch):
    monkeypatch.setattr(results.os, "fsync", fail_with_enospc)
    with pytest.raises(DiskFull) as caught:
        run(world, ["mean-color"])
    path = caught.value.path
    assert path.suffix == ".json" and "while writing a result record" in str(caught.value)
    assert visible_entries(path.parent) == [] and hidden_entries(path.parent) == []


def test_cli_reports_a_full_disk_on_one_line(world, monkeypatch):
    monkeypatch.setattr(results.os, "fsync", fail_with_enospc)
    result = CliRunner().invoke(main, ["run", "--suite", "test-masked", "--method", "mean-color", "--data",
                                       str(world["data"]), "--results", str(world["results"])])
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and error[0].endswith("disk full (no space left on device) while writing a result record")
    assert str(world["results"]) in error[0] and "Traceback" not in result.output


# ---------------------------------------------------------------- SIGKILL and concurrent runs (child processes)


def worker(world, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(WORKER), str(world["specs"]), str(world["data"]),
                             str(world["results"]), *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


@pytest.mark.parametrize("point", ["render", "commit"])
def test_sigkill_mid_job_leaves_no_record_and_no_visible_renders_and_the_next_run_recovers(world, point):
    code, out, err = finish(worker(world, "--kill-at", point))
    assert code == -9, (out, err)
    job_folders = [p for p in (world["results"] / "test-masked").glob("*/*") if p.is_dir()]
    assert len(job_folders) == 1  # the first job's folder; nothing was recorded
    folder = job_folders[0]
    assert not list(folder.glob("seed*.json"))
    if point == "render":  # the renders were being written: nothing visible at all
        assert visible_entries(folder) == []
    else:  # killed between the two renames: the renders folder has no record, so it is no result
        assert len(visible_entries(folder)) == 1 and not visible_entries(folder)[0].endswith(".json")
    assert results.scan_records(world["results"]).records == []

    again = run(world, ["mean-color"])  # the kernel dropped the dead run's lock; its leftovers are removed
    assert len(again.done) == 2 and again.problems == []
    (record,) = [p for p in again.done if p.parent == folder]
    assert visible_entries(folder) == [record.stem, record.name] and hidden_entries(folder) == []


def test_two_concurrent_runs_share_the_jobs_instead_of_doing_each_twice(world, tmp_path):
    log = tmp_path / "fits.log"
    common = ["--fit-log", str(log), "--fit-seconds", "0.5", "--barrier", str(tmp_path / "barrier"), "--peers", "2"]
    first, second = worker(world, *common), worker(world, *common)
    outcomes = [finish(first), finish(second)]
    for code, out, err in outcomes:
        assert code == 0, err
    summaries = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in outcomes]
    fits = log.read_text().splitlines()
    jobs = {(line.split()[0], line.split()[1]) for line in fits}
    assert len(fits) == 4 and len(jobs) == 4  # 2 scenes x 2 seeds, each fitted exactly once
    assert len({line.split()[2] for line in fits}) == 2  # both runs did some of the work
    done = [p for s in summaries for p in s["done"]]
    assert len(done) == len(set(done)) == 4
    assert sorted(p for s in summaries for p in s["shared"] + s["skipped"]) == sorted(done)
    assert all(s["failed"] == [] for s in summaries)
    records = results.scan_records(world["results"])
    assert len(records.records) == 4 and records.problems == []


# ---------------------------------------------------------------- runs to leaderboard


def test_a_preset_run_and_a_set_run_are_two_entries_and_published_tables_stay(world, tmp_path, monkeypatch):
    """The issue's check, with the stand-in method: the preset run and a `--set steps=30` run of one scene
    make two entries labelled apart; nothing but `--publish` touches leaderboards/."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "leaderboards").mkdir()
    published = tmp_path / "leaderboards" / "test-masked.md"
    published.write_text("published\n")
    cli = CliRunner()
    base = ["run", "--suite", "test-masked", "--method", "mean-color", "--scenes", "a", "--data", str(world["data"])]
    assert cli.invoke(main, base).exit_code == 0
    assert cli.invoke(main, base + ["--set", "steps=30"]).exit_code == 0
    assert CALLS == [("fit", 7, 0), ("fit", 30, 0)]

    result = cli.invoke(main, ["leaderboard", "--suite", "test-masked"])
    assert result.exit_code == 0, result.output
    board = (tmp_path / "results" / "leaderboards" / "test-masked.csv").read_text()
    assert {line.split(",")[2] for line in board.splitlines()[1:]} == {"mean-color"}
    assert "config cfg-" in result.output and "is not the suite's preset 'quick' (quick with steps=30" \
        in result.output

    result = cli.invoke(main, ["leaderboard", "--suite", "test-masked", "--all-configs"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "results" / "leaderboards" / "test-masked.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| scene |"))
    (label,) = {cell.split()[0] for cell in header.split("|")[2:-1]} - {"mean-color"}
    assert label.startswith("mean-color@cfg-") and f"- `{label}`: quick with steps=30 (preset: 7)" in text
    assert published.read_text() == "published\n" and sorted(p.name for p in published.parent.iterdir()) == [
        "test-masked.md"]


# ---------------------------------------------------------------- --dry-run


def test_dry_run_lists_jobs_hashes_and_what_is_recorded_and_runs_nothing(world):
    cli = CliRunner()
    args = ["run", "--suite", "test-masked", "--method", "mean-color", "--method", "crashes", "--data",
            str(world["data"]), "--results", str(world["results"])]
    before = cli.invoke(main, args + ["--dry-run"])
    assert before.exit_code == 0, before.output
    assert CALLS == [] and not world["results"].exists()
    assert before.output.count("to run ") == 4 and "4 job(s), 0 already recorded, 4 to run" in before.output
    summary = run(world, ["crashes", "mean-color"])
    after = cli.invoke(main, args + ["--dry-run"])
    lines = after.output.splitlines()
    for path in summary.done:  # each recorded job: its status, its hash and its record file on one line
        record = results.read_record(path)
        (line,) = [line for line in lines if str(path) in line]
        assert line.startswith("recorded") and record["config_hash"][:12] in line
    assert sum(line.startswith("failed (recorded; runs again)") for line in lines) == 2
    assert "4 job(s), 2 already recorded, 2 to run" in after.output
    assert len(CALLS) == 2  # only the real run fitted
