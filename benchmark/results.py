"""Result records: one JSON per job (suite x scene x method x seed), written when the job ends.

A record is keyed by the hash of everything that determines its numbers (suite id and version, protocol,
scene, method, resolved config, seed, metric settings), so a re-run finds finished jobs and skips them, and a
changed config gets a new record instead of overwriting the old one. Layout::

    <results>/<suite>/<scene>/<method>/seed<seed>-<hash[:12]>.json
    <results>/<suite>/<scene>/<method>/seed<seed>-<hash[:12]>/renders/...   # PNGs of the test views
    <results>/<suite>/<scene>/<method>/.seed<seed>-<hash[:12]>.lock         # held while the job runs

A job's renders are written to a hidden temporary folder and moved into place together with the record:
the record is the commit point, and a renders folder without its record is a leftover of an interrupted run
(removed when the job runs again). A job is run under its lock, so two runs on one results folder share the
jobs instead of doing each twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from gfbench.storage import reporting_disk_full

SCHEMA = "gfbench-result/1"
DEFAULT_RESULTS = Path("results")
REQUIRED_FIELDS = {"suite": str, "scene": str, "method": str, "seed": int, "status": str, "config_hash": str}


class RecordError(ValueError):
    """A file where a record should be is not a readable gfbench record; the message names it."""


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


def renders_dir(path: Path) -> Path:
    """The folder of a record's renders and compare images (and the method's working files)."""
    return Path(path).with_suffix("")


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temporary(path: Path, record: dict[str, Any]) -> Path:
    """The record as a synced temporary file beside ``path``, not yet in place."""
    with reporting_disk_full(path, "a result record"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump({"schema": SCHEMA, **record}, handle, indent=2, sort_keys=True, default=str)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return Path(tmp)


def write_record(path: Path, record: dict[str, Any], renders: Path | None = None) -> None:
    """Put ``record`` at ``path`` atomically, with the folder ``renders`` (a temporary folder beside it, when
    given) moved into place as its renders folder.

    Order: the new record is written aside first; then the old record goes, the old renders folder is moved
    aside, the new renders folder is renamed into place, and the new record is renamed into place (the commit).
    A crash at any point leaves either the old record, or no record (and leftovers that the next run of the
    job removes), or the new record with its renders; never a record beside renders of another run."""
    path = Path(path)
    tmp = _write_temporary(path, record)
    final_dir, old_dir = renders_dir(path), None
    try:
        if renders is not None or final_dir.exists():
            path.unlink(missing_ok=True)
            if final_dir.exists():
                old_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.stem}.old-"))
                os.replace(final_dir, old_dir / final_dir.name)
            if renders is not None:
                os.replace(renders, final_dir)
        os.replace(tmp, path)
        _sync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
        if old_dir is not None:
            shutil.rmtree(old_dir, ignore_errors=True)


def temporary_renders_dir(path: Path) -> Path:
    """A fresh hidden folder beside ``path`` for a job's renders and working files until its record is written."""
    with reporting_disk_full(path.parent, "a job's working folder"):
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.stem}.partial-"))


def remove_leftovers(path: Path) -> list[Path]:
    """Remove what interrupted runs of this job left (temporary folders and records, and a renders folder
    without a record); call it only while holding the job's lock. Returns what was removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = [p for pattern in (f".{path.stem}.partial-*", f".{path.stem}.old-*", f".{path.name}.*.tmp")
             for p in path.parent.glob(pattern)]
    if not path.exists() and renders_dir(path).is_dir():
        stale.append(renders_dir(path))
    for item in stale:
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
    return stale


def read_record(path: Path) -> dict[str, Any]:
    """The record at ``path``; ``RecordError`` naming the file when it is not valid JSON, not an object, of
    another schema, or lacks a field every record has."""
    try:
        record = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordError(f"{path}: not a valid result record: {exc}") from exc
    if not isinstance(record, dict):
        raise RecordError(f"{path}: not a result record: a JSON {type(record).__name__}, not an object")
    if record.get("schema") != SCHEMA:
        raise RecordError(f"{path}: schema {record.get('schema')!r}, expected {SCHEMA!r} (not a gfbench record)")
    for name, kind in REQUIRED_FIELDS.items():
        value = record.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise RecordError(f"{path}: field {name!r} is {value!r}, expected {kind.__name__}")
    if record["status"] == "ok" and not isinstance(record.get("metrics"), dict):
        raise RecordError(f"{path}: an ok record without a 'metrics' object")
    return record


def record_files(results: Path, suite: str | None = None) -> list[Path]:
    """Record files (``<suite>/<scene>/<method>/seed*.json``) under ``results``, in a stable order; files
    inside renders folders are not records."""
    base = Path(results)
    pattern = f"{suite}/*/*/seed*.json" if suite else "*/*/*/seed*.json"
    return sorted(p for p in base.glob(pattern) if p.is_file())


def iter_records(results: Path, suite: str | None = None) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every record under ``results`` (of one suite when given), in a stable order; an unreadable one raises
    ``RecordError`` (``scan_records`` reports it and goes on)."""
    for path in record_files(results, suite):
        yield path, read_record(path)


@dataclass
class Scan:
    records: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)  # (file, what is wrong with it)


def scan_records(results: Path, suite: str | None = None) -> Scan:
    """Every readable record under ``results``, and every unreadable one with the reason, by name."""
    scan = Scan()
    for path in record_files(results, suite):
        try:
            scan.records.append((path, read_record(path)))
        except (RecordError, OSError) as exc:
            scan.problems.append((path, str(exc).removeprefix(f"{path}: ")))
    return scan


# ---------------------------------------------------------------- per-job lock


class JobLock:
    """An exclusive lock on one job of a results folder (``flock`` on a hidden file beside the record), so
    concurrent runs never do one job twice. The kernel drops it when its process dies, even by SIGKILL."""

    def __init__(self, path: Path):
        self.path = Path(path).parent / f".{Path(path).stem}.lock"
        self._handle = None

    def acquire(self, wait: bool) -> bool:
        """Take the lock; without ``wait``, return False at once when another process holds it."""
        with reporting_disk_full(self.path, "a job lock"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            return False
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "JobLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
