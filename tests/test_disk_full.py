"""A real full disk: a small tmpfs mounted in a private mount namespace (``unshare``), where builds and runs
must stop with one line naming the path, leave no partial files, and keep what was there before. Skipped
where unprivileged mount namespaces are not allowed (the same cases are simulated by failing writes at
chosen points in test_shards.py and test_runner.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_builders import colmap_capture
from test_runner import world  # noqa: F401  (the fixture)

WORKER = Path(__file__).with_name("tmpfs_worker.py")


def tmpfs_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not tmpfs_available(), reason="cannot mount a tmpfs in a user namespace here")


def on_tmpfs(mount: Path, size: str, *args: str) -> dict:
    mount.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}
    script = 'mount -t tmpfs -o size="$1" none "$2" && shift 2 && exec "$@"'
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", size, str(mount), sys.executable,
                           str(WORKER), args[0], str(mount), *args[1:]], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_builds_on_a_full_disk_stop_cleanly_and_keep_the_old_scene(tmp_path):
    colmap_capture(tmp_path / "capture", model="PINHOLE", params=[300.0, 300.0, 200.0, 150.0],
                   model_size=(400, 300), frames=4)
    seen = on_tmpfs(tmp_path / "mnt", "512k", "build", str(tmp_path / "capture"))
    shard = tmp_path / "mnt" / "testset"
    assert seen["new scene"] == (f"{shard / 'big.tar'}: disk full (no space left on device) while writing the "
                                 "shard; nothing was changed (an earlier shard of the scene is intact)")
    assert seen["rebuild"].startswith(f"{shard / 'small.tar'}: disk full")
    assert seen["small intact"] and seen["built"] == ["small"] and seen["temporaries"] == []
    cli = seen["cli"]
    assert cli["code"] == 1 and "Traceback" not in cli["stderr"]
    assert cli["stderr"].strip().splitlines()[-1] == (
        f"Error: {tmp_path / 'mnt' / 'cli' / 'custom' / 'capture.tar'}: disk full (no space left on device) while "
        "writing the shard; nothing was changed (an earlier shard of the scene is intact)")
    assert seen["cli temporaries"] == []


def test_a_run_on_a_full_disk_stops_on_one_line_and_resumes_when_there_is_room(world, tmp_path):  # noqa: F811
    seen = on_tmpfs(tmp_path / "mnt", "256k", "run", str(world["specs"]), str(world["data"]))
    assert seen["code"] == 1, seen["output"]
    errors = [line for line in seen["output"].splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "disk full (no space left on device) while writing" in errors[0]
    assert str(tmp_path / "mnt" / "results") in errors[0] and "Traceback" not in seen["output"]
    assert seen["problems"] == [] and seen["temporaries"] == []  # whatever was recorded is whole
    assert seen["again"]["code"] == 0 and seen["again"]["ok"] == 2, seen["again"]["output"]
