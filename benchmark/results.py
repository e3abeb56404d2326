"""Result records: one JSON per job (suite x scene x method x seed), written when the job ends.

A record is keyed by the hash of everything that determines its numbers (suite id and version, protocol,
scene, method, resolved config, seed, metric settings), so a re-run finds finished jobs and skips them, and a
changed config gets a new record instead of overwriting the old one. Layout::

    <results>/<suite>/<scene>/<method>/seed<seed>-<hash[:12]>.json
    <results>/<suite>/<scene>/<method>/seed<seed>-<hash[:12]>/renders/...   # PNGs of the test views
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

SCHEMA = "gfbench-result/1"
DEFAULT_RESULTS = Path("results")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(job_identity: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of what determines a job's numbers."""
    return hashlib.sha256(canonical_json(job_identity).encode()).hexdigest()


def protocol_hash(suite) -> str:
    """Hash of what makes a suite's scores comparable (protocol block, metrics, quantization); records with
    another hash are never mixed into one leaderboard."""
    return config_hash({"protocol": suite.protocol, "metrics": list(suite.metrics), "quantize": suite.quantize})


def record_path(results: Path, suite: str, scene: str, method: str, seed: int, digest: str) -> Path:
    return Path(results) / suite / scene / method / f"seed{seed}-{digest[:12]}.json"


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write atomically (temporary file, then rename), so an interrupted run never leaves half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"schema": SCHEMA, **record}, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a valid result record: {exc}") from exc
    if record.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {record.get('schema')!r}, expected {SCHEMA!r}")
    return record


def iter_records(results: Path, suite: str | None = None) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every record under ``results`` (of one suite when given), in a stable order."""
    base = Path(results) / suite if suite else Path(results)
    for path in sorted(base.rglob("seed*.json")):
        yield path, read_record(path)
