"""Shards read from a URL: a suite runs from shards served over HTTP by a local server (127.0.0.1), with the
same records as from the folder, and a tampered shard is refused with the on-disk message."""

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gfbench import methods, results, shards, specs
from gfbench.runner import dry_run, plan_jobs, run_suite
from gfbench.shards import ShardError, write_scene
from helpers import tiny_scene


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """Two tiny scenes built into a folder, served over HTTP on 127.0.0.1; a test suite over them."""
    spec_dir = tmp_path / "specs"
    (spec_dir / "suites").mkdir(parents=True)
    (spec_dir / "testset.yaml").write_text("id: testset\nkind: dataset\nversion: 1\nlayout: colmap\nscenes: [a, b]\n")
    suite = {"id": "test-url", "kind": "suite", "version": 1, "dataset": "testset", "scenes": "all",
             "protocol": specs.load_suite("synthetic-masked").protocol, "metrics": ["psnr", "ssim"],
             "preset": "quick", "seeds": [0]}
    (spec_dir / "suites" / "test-url.yaml").write_text(json.dumps(suite))
    data = tmp_path / "data"
    for scene_id, seed in (("a", 0), ("b", 1)):
        write_scene(tiny_scene(frames=6, width=24, height=16, seed=seed, dataset="testset", scene_id=scene_id), data)
    monkeypatch.setenv("GFBENCH_SPECS", str(spec_dir))
    monkeypatch.setenv("GFBENCH_SHARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(methods, "_entry_points", lambda: {"mean-color": "ray_standins:MeanColor"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(data)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"data": data, "url": f"http://127.0.0.1:{server.server_address[1]}", "tmp": tmp_path,
               "suite": specs.load_suite("test-url")}
    finally:
        server.shutdown()
        server.server_close()


def test_a_suite_runs_from_shards_served_over_http_with_the_records_of_the_folder(served):
    jobs = plan_jobs(served["suite"], ["mean-color"], None, None, None, {})
    remote = run_suite(jobs, served["tmp"] / "from-url", served["url"], show_progress=False)
    local = run_suite(jobs, served["tmp"] / "from-folder", served["data"], show_progress=False)
    assert len(remote.done) == 2 and not remote.failed and not remote.problems
    by_hash = {r["config_hash"]: r["metrics"] for _, r in results.iter_records(served["tmp"] / "from-url")}
    assert by_hash == {r["config_hash"]: r["metrics"] for _, r in results.iter_records(served["tmp"] / "from-folder")}
    assert sorted(p.name for p in (served["tmp"] / "cache").iterdir()) == sorted(
        f"{e['sha256']}.tar" for e in shards.read_manifest(served["data"], "testset")["scenes"].values())
    assert {p.status for p in dry_run(jobs, served["tmp"] / "from-url", served["url"])} == {"recorded"}
    assert local.done  # (the folder run did its own work: same hashes, not skipped ones)


def test_a_tampered_shard_over_http_is_refused_with_the_on_disk_message(served):
    shard = served["data"] / "testset" / "a.tar"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(raw))
    with pytest.raises(ShardError) as on_disk:
        shards.read_scene(served["data"], "testset", "a")
    with pytest.raises(ShardError) as over_http:
        shards.read_scene(served["url"], "testset", "a")
    url = f"{served['url']}/testset/a.tar"
    assert str(over_http.value) == str(on_disk.value).replace(str(shard), url)
    assert str(over_http.value).endswith("sha256 differs from the manifest (altered or corrupted)")
    assert not list((served["tmp"] / "cache").glob("*.tar"))  # nothing unverified is kept
    jobs = plan_jobs(served["suite"], ["mean-color"], ["a"], None, None, {})
    with pytest.raises(ShardError, match="sha256 differs from the manifest"):
        run_suite(jobs, served["tmp"] / "results", served["url"], show_progress=False)


def test_a_missing_file_at_the_url_names_it(served):
    with pytest.raises(ShardError, match=r"http://127\.0\.0\.1:\d+/nope/manifest\.json: could not be read"):
        shards.read_manifest(served["url"], "nope")


def test_building_into_a_url_is_refused(served):
    with pytest.raises(ShardError, match="a URL data root is only read"):
        write_scene(tiny_scene(dataset="testset", scene_id="c"), served["url"])
