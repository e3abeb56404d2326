"""The Ray executor on a local Ray instance with 2 CPUs (one for the module): the same records as the local
executor, a job that raises recorded as failed while the others finish, a worker killed mid-job retried,
a worker that always dies recorded as failed with the reason, and a second run that skips everything."""

import importlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from gfbench import results, specs  # noqa: E402
from gfbench.executors import RayExecutor, job_resources  # noqa: E402
from gfbench.runner import plan_jobs, run_suite  # noqa: E402
from gfbench.shards import write_scene  # noqa: E402
from helpers import tiny_scene  # noqa: E402

TESTS = Path(__file__).parent


def fake_distribution(folder: Path) -> None:
    """Register the stand-in methods as ``gfbench.methods`` entry points, as an installed plug-in would, so
    that Ray's worker processes find them too."""
    import ray_standins

    dist = folder / "gfbench_ray_standins-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gfbench-ray-standins\nVersion: 0\n")
    lines = [f"{name} = ray_standins:{cls}" for name, cls in ray_standins.ENTRY_POINTS.items()]
    (dist / "entry_points.txt").write_text("[gfbench.methods]\n" + "\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Specs and tiny scenes, the stand-ins installed, and one local Ray instance (2 CPUs) for the module."""
    base = tmp_path_factory.mktemp("ray")
    spec_dir = base / "specs"
    (spec_dir / "suites").mkdir(parents=True)
    (spec_dir / "testset.yaml").write_text("id: testset\nkind: dataset\nversion: 1\nlayout: colmap\nscenes: [a, b]\n")
    suite = {"id": "test-ray", "kind": "suite", "version": 1, "dataset": "testset", "scenes": "all",
             "protocol": specs.load_suite("synthetic-masked").protocol, "metrics": ["psnr", "ssim"],
             "preset": "quick", "seeds": [0, 1]}
    (spec_dir / "suites" / "test-ray.yaml").write_text(json.dumps(suite))
    data = base / "data"
    for scene_id, seed in (("a", 0), ("b", 1)):
        write_scene(tiny_scene(frames=6, width=24, height=16, seed=seed, dataset="testset", scene_id=scene_id), data)
    plugins = base / "plugins"
    fake_distribution(plugins)
    with pytest.MonkeyPatch.context() as patch:
        path = os.pathsep.join([str(TESTS), str(plugins), os.environ.get("PYTHONPATH", "")])
        patch.setenv("PYTHONPATH", path)  # Ray's workers inherit this environment
        patch.setenv("GFBENCH_SPECS", str(spec_dir))
        patch.syspath_prepend(str(plugins))
        importlib.invalidate_caches()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield {"data": data, "suite": specs.load_suite("test-ray"), "base": base}
        finally:
            ray.shutdown()
    importlib.invalidate_caches()


def plan(cluster, method_names, **overrides):
    return plan_jobs(cluster["suite"], method_names, None, None, None, overrides)


def ray_run(cluster, jobs, results_dir, max_retries=1):
    return run_suite(jobs, results_dir, cluster["data"], show_progress=False,
                     executor=RayExecutor(max_retries=max_retries))


def numbers(results_dir: Path) -> dict[str, tuple]:
    return {record["config_hash"]: (record["status"], record["metrics"], record["per_image"])
            for _, record in results.iter_records(results_dir)}


def test_ray_gives_the_local_records_and_a_second_run_skips_everything(cluster, tmp_path):
    jobs = plan(cluster, ["mean-color"])
    assert len(jobs) == 4  # 2 scenes x 2 seeds
    local = run_suite(jobs, tmp_path / "local", cluster["data"], show_progress=False)
    distributed = ray_run(cluster, jobs, tmp_path / "ray")
    assert len(local.done) == len(distributed.done) == 4 and not distributed.failed
    assert numbers(tmp_path / "ray") == numbers(tmp_path / "local")
    assert len({json.dumps(m[1], sort_keys=True) for m in numbers(tmp_path / "ray").values()}) == 4
    for path in distributed.done:  # renders came back with each record, nothing left beside them
        assert sorted(p.name for p in (path.with_suffix("") / "compare").iterdir())
        assert [p.name for p in path.parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")] == []
    assert int((distributed.done[0].with_suffix("") / "fit.txt").read_text()) != os.getpid()  # ran on a worker

    again = ray_run(cluster, jobs, tmp_path / "ray")
    assert sorted(again.skipped) == sorted(distributed.done) and not again.done and not again.failed


def test_a_raising_job_fails_alone_a_killed_worker_is_retried_and_one_always_killed_fails(cluster, tmp_path):
    marker = tmp_path / "killed-once"
    jobs = [job for job in plan(cluster, ["mean-color", "crashes", "dies-once", "always-dies"], marker=str(marker))
            if job.scene == "a" and job.seed == 0]
    summary = ray_run(cluster, jobs, tmp_path / "results", max_retries=1)
    by_method = {results.read_record(p)["method"]: results.read_record(p) for p in summary.done + summary.failed}
    assert by_method["mean-color"]["status"] == "ok"
    assert by_method["crashes"]["status"] == "failed" and "injected crash" in by_method["crashes"]["error"]
    assert by_method["dies-once"]["status"] == "ok"  # killed once, then done on the retry, in another process
    retried = next(p for p in summary.done if results.read_record(p)["method"] == "dies-once")
    assert int(marker.read_text()) != int((retried.with_suffix("") / "fit.txt").read_text())
    dead = by_method["always-dies"]
    assert dead["status"] == "failed" and dead["error"].startswith("the worker died on each of 2 attempt(s)")
    assert len(summary.done) == 2 and len(summary.failed) == 2


def test_ctrl_c_cancels_outstanding_jobs_leaves_no_partial_record_and_a_rerun_resumes(cluster, tmp_path):
    marker = tmp_path / "started"
    jobs = [job for job in plan(cluster, ["slow-once"], marker=str(marker)) if job.seed == 0 and job.scene == "a"]

    def interrupt_once_started():
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        ray_run(cluster, jobs, tmp_path / "results")
    assert marker.exists()
    folder = tmp_path / "results" / "test-ray" / "a" / "slow-once"
    assert [p.name for p in folder.iterdir() if not p.name.endswith(".lock")] == []  # no record, no partial files

    again = ray_run(cluster, jobs, tmp_path / "results")
    assert len(again.done) == 1 and results.read_record(again.done[0])["status"] == "ok"


def test_declared_resources_become_task_options():
    class Big:
        resources = {"cpus": 4, "gpus": 2, "memory_gb": 1.5}

    class Bad:
        resources = {"gpu": 1}

    assert job_resources(Big, "cuda") == {"num_cpus": 4, "num_gpus": 2, "memory": 3 * 2**29}
    assert job_resources(Big, "cpu")["num_gpus"] == 0
    assert job_resources(object, "cuda") == {"num_cpus": 1, "num_gpus": 1}
    with pytest.raises(ValueError, match=r"Bad.resources: unknown key 'gpu'"):
        job_resources(Bad, "cuda")


def test_a_results_folder_a_node_does_not_see_is_refused_before_any_job(cluster, tmp_path, monkeypatch):
    """As if a node mounted other storage at the results path: its probe file lands where the driver never
    looks, and the run stops naming the folder before any job starts."""
    from gfbench import executors

    elsewhere = tmp_path / "node-local-disk"
    real_probe = executors._probe
    monkeypatch.setattr(executors, "_probe", lambda results_dir, token, root: real_probe(str(elsewhere), token, root))
    with pytest.raises(executors.NotShared, match="wrote a probe file into .* that this machine does not see"):
        ray_run(cluster, plan(cluster, ["mean-color"]), tmp_path / "results")
    assert results.record_files(tmp_path / "results") == []


def test_cli_runs_on_ray_and_dry_run_then_lists_every_job_as_recorded(cluster, tmp_path):
    from click.testing import CliRunner

    from gfbench.cli import main

    args = ["run", "--suite", "test-ray", "--method", "mean-color", "--scenes", "b", "--data", str(cluster["data"]),
            "--results", str(tmp_path / "results")]
    result = CliRunner().invoke(main, args + ["--executor", "ray", "--max-retries", "0"])
    assert result.exit_code == 0, result.output
    assert "2 ran, 0 skipped" in result.output
    listed = CliRunner().invoke(main, args + ["--dry-run"])
    assert listed.exit_code == 0 and "2 job(s), 2 already recorded, 0 to run" in listed.output
