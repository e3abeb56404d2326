"""Checks that run on a real, small, full file system (a tmpfs mounted in a private mount namespace by
``tests/test_disk_full.py``); prints what it saw as one JSON line, since the tmpfs vanishes with the process.

    python tmpfs_worker.py build MOUNT CAPTURE
    python tmpfs_worker.py run MOUNT SPECS DATA
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def gfbench(*args: str) -> subprocess.CompletedProcess:
    command = Path(sys.executable).with_name("gfbench")
    return subprocess.run([str(command), *args], capture_output=True, text=True, timeout=300)


def hidden_temporaries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if not p.name.endswith(".lock"))


def build(mount: Path, capture: Path) -> dict:
    from gfbench.shards import list_built_scenes, read_scene, write_scene
    from gfbench.storage import DiskFull
    from helpers import tiny_scene

    seen = {}
    write_scene(tiny_scene(scene_id="small", seed=0), mount)
    before = read_scene(mount, "testset", "small").frames[0].image.tobytes()
    for name, scene in (("new scene", tiny_scene(frames=8, width=256, height=256, scene_id="big")),
                        ("rebuild", tiny_scene(frames=8, width=256, height=256, scene_id="small", seed=1))):
        try:
            write_scene(scene, mount)
            seen[name] = "written"
        except DiskFull as exc:
            seen[name] = str(exc)
    seen["small intact"] = read_scene(mount, "testset", "small").frames[0].image.tobytes() == before
    seen["built"] = list_built_scenes(mount, "testset")
    seen["temporaries"] = hidden_temporaries(mount / "testset")
    cli = gfbench("build-data", "colmap", str(capture), "--out", str(mount / "cli"))
    seen["cli"] = {"code": cli.returncode, "stderr": cli.stderr, "stdout": cli.stdout}
    seen["cli temporaries"] = hidden_temporaries(mount / "cli") if (mount / "cli").exists() else []
    return seen


def run(mount: Path, specs_dir: Path, data: Path) -> dict:
    os.environ["GFBENCH_SPECS"] = str(specs_dir)
    from click.testing import CliRunner

    from gfbench import methods, results, runner
    from gfbench.cli import main

    methods._entry_points = lambda: {"mean-color": "test_runner:MeanColor"}
    runner.resolve_config = lambda method, preset, overrides, **_: {"steps": 7, **overrides}
    results_dir = mount / "results"
    results_dir.mkdir()
    filler = mount / "filler"
    free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
    filler.write_bytes(b"\0" * max(0, free - 12 * 1024))  # leave room for about one job
    args = ["run", "--suite", "test-masked", "--method", "mean-color", "--data", str(data), "--results",
            str(results_dir)]
    full = CliRunner().invoke(main, args)
    scan = results.scan_records(results_dir)
    seen = {"code": full.exit_code, "output": full.output, "records": len(scan.records),
            "problems": [str(p) for p in scan.problems], "temporaries": hidden_temporaries(results_dir)}
    filler.unlink()
    again = CliRunner().invoke(main, args)
    scan = results.scan_records(results_dir)
    seen["again"] = {"code": again.exit_code, "output": again.output,
                     "ok": sum(record["status"] == "ok" for _, record in scan.records)}
    return seen


if __name__ == "__main__":
    kind, mount = sys.argv[1], Path(sys.argv[2])
    report = build(mount, Path(sys.argv[3])) if kind == "build" else run(mount, Path(sys.argv[3]), Path(sys.argv[4]))
    print(json.dumps(report))
