"""Jobs (suite x scene x method x seed): load the scene, split it by the suite's protocol, fit the method,
render the test views, score them, and write one result record per job.

The runner knows scenes, views and metrics, never what a method does inside. A job whose identity hash
already has a successful record is skipped (unless ``overwrite``); a job that raises is recorded as failed
and the next job still runs. Jobs run through an executor (``LocalExecutor``, one after another in this
process, by default; ``gfbench.executors.RayExecutor`` on a Ray cluster); the process that plans them
writes every record. Each job runs under a lock in the results folder: a job another run is doing is
put off to the end and then taken from that run's record instead of being done twice. A file where a job's
record should be that is not a record of that job is reported by name and left alone; the other jobs run.
A full disk stops the run with ``DiskFull`` naming the path (finished records are kept; the job's partial
files are removed).
"""

from __future__ import annotations

import platform
import resource
import shutil
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import yaml
from PIL import Image

from gfbench import methods as method_registry
from gfbench import metrics, results, shards
from gfbench.data import load_scene
from gfbench.methods.core import lanes
from gfbench.paths import data_root
from gfbench.priors import PriorSource, Priors, prior_kind
from gfbench.protocols import Split
from gfbench.scene import Scene
from gfbench.specs import SuiteSpec
from gfbench.splits import check_scene_inputs, split_for_run
from gfbench.storage import DiskFull, is_disk_full, reporting_disk_full

ERROR_GAIN = 4.0  # the error panel shows |prediction - ground truth| x this, so small errors are visible


@dataclass(frozen=True)
class Job:
    suite: SuiteSpec
    scene: str
    method: str
    seed: int
    config: dict[str, Any]
    preset: str
    priors: dict[str, PriorSource] = field(default_factory=dict)  # kind -> the prior this job's method gets
    prior_cache: Path | None = None  # where priors cache their per-scene predictions
    cpu_compositing: str = "auto"  # the CPU rasterizer's compositing asked for (methods.core.lanes)

    def identity(self, scene_sha256: str) -> dict[str, Any]:
        """Everything that determines this job's numbers; its hash keys the record."""
        identity = {
            "suite": self.suite.id, "suite_version": self.suite.version, "protocol": self.suite.protocol,
            "metrics": list(self.suite.metrics), "quantize": self.suite.quantize, "dataset": self.suite.dataset,
            "scene": self.scene, "scene_sha256": scene_sha256, "method": self.method, "config": self.config,
            "seed": self.seed,
        }
        if self.priors:  # only then, so that jobs without priors keep the identity they always had
            identity["priors"] = {kind: source.identity() for kind, source in sorted(self.priors.items())}
        return identity


@dataclass
class RunSummary:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)
    shared: list[Path] = field(default_factory=list)  # done by another run on the same results folder meanwhile
    problems: list[tuple[Path, str]] = field(default_factory=list)  # record files that are not this job's record


@dataclass
class JobOutcome:
    status: str  # ok | failed | skipped | shared | busy | problem
    path: Path
    problem: str = ""


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` strings (values parsed as YAML: numbers, booleans, lists) into a dict."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def resolve_config(method: str, preset: str, overrides: dict[str, Any], *, explicit_preset: bool = True,
                   device: str = "cpu", method_class: type | None = None,
                   protocol: str | None = None) -> dict[str, Any]:
    """The checked config of ``method``: its ``preset`` with ``overrides`` (typed against the method's
    settings), refused with a :class:`ConfigError` naming the setting, the value and what is allowed;
    ``protocol`` (the suite's protocol type) picks the values a preset gives per protocol.

    A method without a presets file takes no settings; it ignores the suite's default preset but refuses an
    ``explicit_preset``. The method class's ``check_config(config, device=...)`` runs last, if it has one.
    """
    cls = method_class or method_registry.load_method_class(method)
    presets = method_registry.method_presets(method, cls)
    if presets.path is None and not explicit_preset:
        config = {}
    else:
        config = presets.config(preset, protocol)
    config.update(presets.check_overrides(overrides))
    check = getattr(cls, "check_config", None)
    if callable(check):
        for variant in protocol_variants(config):
            check(variant, device=device)
    return config


def protocol_variants(config: dict[str, Any]) -> list[dict[str, Any]]:
    """``config`` resolved for each protocol its per-protocol values name (just ``config`` when it has none):
    what a method's ``check_config`` sees when no protocol was given (e.g. a leaderboard's preset lookup)."""
    from gfbench.methods.config import for_protocol, is_per_protocol

    protocols = sorted({p for value in config.values() if is_per_protocol(value) for p in value})
    variants = []
    for protocol in protocols:
        try:
            variants.append(for_protocol(config, protocol))
        except method_registry.ConfigError:
            continue  # a protocol only some settings name: the preset is not meant for it
    return variants if protocols else [config]


def resolve_priors(suite: SuiteSpec, kinds: tuple[str, ...], named: dict[str, str | None]) -> dict[str, PriorSource]:
    """The prior of each kind in ``kinds`` for a run on ``suite`` (``named``: kind -> flag value, else the
    kind's environment variable, else the suite's ``default_priors``), each recording which of them named it;
    PriorError when one is missing, broken or not allowed."""
    return {kind: prior_kind(kind).resolve_named(named.get(kind), suite) for kind in kinds}


def plan_jobs(suite: SuiteSpec, method_names: list[str], scenes: list[str] | None, seeds: list[int] | None,
              preset: str | None, overrides: dict[str, Any], *, device: str = "cpu",
              priors: dict[str, str | None] | None = None, prior_cache: Path | None = None) -> list[Job]:
    """One job per scene x method x seed, every config and prior checked before anything runs.

    ``preset``: None takes the suite's. ``priors``: kind -> what the run names (a folder, ``oracle``; None
    falls back to the kind's environment variable, then to the suite's default prior of that kind); each method
    gets exactly the kinds its capabilities list.
    """
    unknown = [s for s in scenes or [] if s not in suite.scenes]
    if unknown:
        raise ValueError(f"suite {suite.id!r} has no scene {unknown[0]!r}; scenes: {', '.join(suite.scenes)}")
    chosen_preset = preset or suite.preset
    configs, sources = {}, {}
    for method in method_names:
        cls = method_registry.load_method_class(method)
        configs[method] = resolve_config(method, chosen_preset, overrides, explicit_preset=preset is not None,
                                         device=device, method_class=cls, protocol=suite.protocol_type)
        sources[method] = resolve_priors(suite, method_registry.capabilities_of(cls).priors, priors or {})
    compositing = lanes.compositing()
    if device == "cpu":
        lanes.require(compositing)
    return [
        Job(suite, scene, method, seed, configs[method], chosen_preset, sources[method], prior_cache, compositing)
        for scene in (scenes or suite.scenes)
        for method in method_names
        for seed in (seeds or suite.seeds)
    ]


# ---------------------------------------------------------------- provenance


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("gfbench", "torch", "gsplat", "numpy", "lpips", "scikit-image"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak so far (Linux: KiB)


# ---------------------------------------------------------------- one job


def save_render_images(directory: Path, split: Split, renders: list[np.ndarray]) -> None:
    """``renders/<frame>.png`` and ``compare/<frame>.png`` (ground truth | prediction | error x ERROR_GAIN)."""
    with reporting_disk_full(directory, "the renders folder"):
        (directory / "renders").mkdir(parents=True, exist_ok=True)
        (directory / "compare").mkdir(parents=True, exist_ok=True)
    for view, render in zip(split.test, renders):
        prediction = metrics.quantize(render, "truncate")
        error = np.clip(np.abs(prediction.astype(np.int16) - view.image) * ERROR_GAIN, 0, 255).astype(np.uint8)
        stem = Path(view.name).stem
        with reporting_disk_full(directory / "renders" / f"{stem}.png", "a test render"):
            Image.fromarray(prediction).save(directory / "renders" / f"{stem}.png")
        with reporting_disk_full(directory / "compare" / f"{stem}.png", "a compare image"):
            Image.fromarray(np.concatenate([view.image, prediction, error], axis=1)).save(
                directory / "compare" / f"{stem}.png")


def score_views(split: Split, renders: list[np.ndarray], suite: SuiteSpec, device: str) -> list[dict[str, Any]]:
    rows = []
    for view, render in zip(split.test, renders):
        scores = metrics.score_image(render, view.image, suite.metrics, coverage=view.coverage,
                                     quantize=suite.quantize, device=device, valid=view.mask)
        rows.append({"name": view.name, "frame_index": view.frame_index, **scores})
    return rows


def scene_means(per_image: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of each score over the test views that have it (a region score is missing or NaN where a view
    has no pixels of that region; a perfect frame's infinite PSNR is kept, as the paper's mean would)."""
    names = sorted({k for row in per_image for k in row if k not in ("name", "frame_index")})
    means = {}
    for name in names:
        values = [row[name] for row in per_image if name in row and not np.isnan(row[name])]
        if values:
            means[name] = float(np.mean(values))
    return means


def job_priors(job: Job, scene: Scene, split: Split, device: str) -> Priors:
    """The priors object the job's method gets, bound to this scene and its train views."""
    return Priors({kind: prior_kind(kind).for_scene(source, scene, split.train, device=device,
                                                    cache_root=job.prior_cache)
                   for kind, source in job.priors.items()})


def fit_and_score(job: Job, scene: Scene, workdir: Path, device: str, on_step: Callable | None) -> dict[str, Any]:
    split = split_for_run(job.suite, scene, seed=job.seed)
    if any(view.depth is not None for view in split.train):
        raise RuntimeError("a train view carries stored depth; depth reaches a method only as a prior")
    method = method_registry.load_method_class(job.method)(device=device)
    priors = job_priors(job, scene, split, device)
    extra = {"priors": priors} if method_registry.accepts_priors(method.fit) else {}
    started = time.perf_counter()
    method.fit(split.train, points=split.points, config=job.config, seed=job.seed, workdir=workdir, progress=on_step,
               **extra)
    fit_seconds = time.perf_counter() - started
    renders = [r.rgb for r in method.render([v.camera for v in split.test])]
    save_render_images(workdir, split, renders)
    per_image = score_views(split, renders, job.suite, device)
    return {
        "metrics": scene_means(per_image),
        "per_image": per_image,
        "split": {k: v for k, v in split.info.items() if k != "frame_names"},
        "fit_seconds": fit_seconds,
        "priors": priors.records(),
    }


def preflight(jobs: list[Job], root: Path) -> dict[str, str]:
    """Fail before any training when data, prior or metric weights are missing: build missing synthetic
    scenes, refuse missing real ones with the command that builds them, load every prior model once (a broken
    folder stops here), and resolve the LPIPS weights (their sha256 go into every record)."""
    missing = []
    for dataset, scene in sorted({(job.suite.dataset, job.scene) for job in jobs}):
        if scene in shards.list_built_scenes(root, dataset):
            continue
        if dataset == "synthetic":
            load_scene(dataset, scene, root)
        else:
            missing.append(f"{dataset}/{scene}")
    if missing:
        dataset = missing[0].split("/")[0]
        raise shards.ShardError(
            f"{root}: {len(missing)} scene(s) not built: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
            f"build them with 'gfbench build-data {dataset} --source PATH --out {root}'")
    check_scene_inputs([(job.suite, job.scene) for job in jobs], root)
    loaded = set()
    for job in jobs:
        for kind, source in job.priors.items():
            if (kind, source.digest) not in loaded:
                prior_kind(kind).load(source)
                loaded.add((kind, source.digest))
    return metrics.lpips_hashes_for(sorted({m for job in jobs for m in job.suite.metrics}))


def existing_record(path: Path, digest: str) -> tuple[dict | None, str]:
    """(the record at ``path`` when it is this job's, or None; why the file there is not usable, or "")."""
    if not path.exists():
        return None, ""
    try:
        record = results.read_record(path)
    except (results.RecordError, OSError) as exc:
        return None, f"{exc}; left as is and the job not run (move or delete the file to run it)"
    if record["config_hash"] != digest:
        return None, (f"{path}: holds the record of another job (config hash {record['config_hash'][:12]}, this "
                      f"job's is {digest[:12]}); left as is and the job not run (move or delete the file to run it)")
    return record, ""


def new_record(job: Job, identity: dict[str, Any], digest: str, device: str,
               lpips_hashes: dict[str, str]) -> dict[str, Any]:
    return {
        "suite": job.suite.id, "suite_version": job.suite.version,
        "protocol_hash": results.protocol_hash(job.suite),
        "dataset": job.suite.dataset, "scene": job.scene, "method": job.method, "seed": job.seed,
        "preset": job.preset, "config": job.config, "config_hash": digest, "identity": identity,
        "versions": package_versions(), "git_commit": git_commit(), "device": device,
        "weights": lpips_hashes,
    }


@dataclass
class Claim:
    """A job this run is to do: its record is missing (or to be redone) and its lock is held until released."""

    job: Job
    path: Path
    identity: dict[str, Any]
    digest: str
    lock: results.JobLock

    def release(self) -> None:
        self.lock.release()


def locate_job(job: Job, results_dir: Path, root: Path | str) -> tuple[dict[str, Any], str, Path]:
    """(identity, config hash, record path) of a job."""
    identity = job.identity(shards.scene_sha256(root, job.suite.dataset, job.scene))
    digest = results.config_hash(identity)
    return identity, digest, results.record_path(results_dir, job.suite.id, job.scene, job.method, job.seed, digest)


def claim_job(job: Job, results_dir: Path, root: Path | str, overwrite: bool, wait: bool = True,
              since: float | None = None) -> JobOutcome | Claim:
    """Take a job to run: a ``Claim`` (its lock held, leftovers of interrupted runs removed), or the
    ``JobOutcome`` that says why it is not to be run (see ``run_job``)."""
    identity, digest, path = locate_job(job, results_dir, root)
    record, problem = existing_record(path, digest)
    if problem:
        return JobOutcome("problem", path, problem)
    if record is not None and _written_since(path, since):
        return JobOutcome("shared" if record["status"] == "ok" else "failed", path)
    if record is not None and record["status"] == "ok" and not overwrite:
        return JobOutcome("skipped", path)
    before = _stamp(path)
    lock = results.JobLock(path)
    if not lock.acquire(wait=False):
        if not wait:
            return JobOutcome("busy", path)
        lock.acquire(wait=True)
    try:
        if _stamp(path) != before:  # another run recorded this job while we looked or waited
            record, problem = existing_record(path, digest)
            if problem:
                lock.release()
                return JobOutcome("problem", path, problem)
            if record is not None:
                lock.release()
                return JobOutcome("shared" if record["status"] == "ok" else "failed", path)
        results.remove_leftovers(path)
    except BaseException:
        lock.release()
        raise
    return Claim(job, path, identity, digest, lock)


def run_job(job: Job, results_dir: Path, root: Path, device: str, overwrite: bool, lpips_hashes: dict[str, str],
            on_step: Callable | None = None, scene_cache: dict | None = None, wait: bool = True,
            since: float | None = None) -> JobOutcome:
    """Run one job unless it already has a successful record. Without ``wait``, a job that another process
    is running (its lock is held) comes back ``busy``; with it, the call waits for that run and returns
    ``shared`` when it recorded a success. A record written since ``since`` (a time.time(), e.g. when this
    run started) is another run's work of this run's time: taken as is, even with ``overwrite``."""
    claim = claim_job(job, results_dir, root, overwrite, wait, since)
    if isinstance(claim, JobOutcome):
        return claim
    try:
        workdir = results.temporary_renders_dir(claim.path)
        try:
            produced = execute_job(job, root, workdir, device, on_step, scene_cache)
            return JobOutcome(commit_record(claim, produced, workdir, device, lpips_hashes), claim.path)
        finally:
            discard_workdir(workdir)
    finally:
        claim.release()


def _stamp(path: Path) -> tuple[int, int] | None:
    """What changes when a record is written at ``path`` (records are renamed into place: a new inode)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _written_since(path: Path, since: float | None) -> bool:
    return since is not None and path.stat().st_mtime >= since


def execute_job(job: Job, root: Path | str, workdir: Path, device: str, on_step: Callable | None = None,
                scene_cache: dict | None = None) -> dict[str, Any]:
    """Fit, render and score one job into ``workdir``: the part of its record the job itself produces
    (``status`` ok with metrics, or failed with the error). Runs wherever the job runs (this process or a
    cluster worker); a full disk raises ``DiskFull``, any other error is the job's failure."""
    started = time.perf_counter()
    produced: dict[str, Any] = {"host": platform.node()}
    try:
        cache = scene_cache if scene_cache is not None else {}
        if job.scene not in cache:
            cache.clear()  # keep one scene in memory at a time
            cache[job.scene] = load_scene(job.suite.dataset, job.scene, root)
        with lanes.using(job.cpu_compositing):  # as planned, whatever this (worker) process's environment says
            if device == "cpu":  # provenance, as the host: the two compositings agree to ~1e-14, not to the bit
                produced["cpu_compositing"] = lanes.active()  # what 3DGS and 2DGS renders use
            produced.update(status="ok", **fit_and_score(job, cache[job.scene], workdir, device, on_step))
    except DiskFull:
        raise  # a full disk stops every job, not just this one
    except Exception as exc:  # one failing job must not stop the others
        if is_disk_full(exc):
            raise DiskFull(workdir, "the job's working files") from exc
        produced.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    produced.update(wall_time_s=time.perf_counter() - started, peak_memory_mb=peak_memory_mb(device))
    return produced


def commit_record(claim: Claim, produced: dict[str, Any], workdir: Path | None, device: str,
                  lpips_hashes: dict[str, str]) -> str:
    """Write a claimed job's record with its renders (``workdir``, moved into place); the status."""
    record = new_record(claim.job, claim.identity, claim.digest, device, lpips_hashes)
    record.update(produced, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    results.write_record(claim.path, record, renders=workdir)
    return record["status"]


def discard_workdir(workdir: Path) -> None:
    """Remove a job's temporary folder when it was not moved into place (the job did not finish)."""
    if workdir.exists():
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class RunContext:
    """What every job of one run shares, handed to the executor."""

    results_dir: Path
    root: Path | str
    device: str
    overwrite: bool
    lpips_hashes: dict[str, str]
    started: float  # time.time() at the start of the run: records written since are other runs' work
    show_progress: bool
    bar: Any  # the progress bar over jobs (tqdm)

    def status(self, line: str) -> None:
        """A status line above the progress bar (only when progress is shown)."""
        if self.show_progress:
            self.bar.write(line)


class Executor(Protocol):
    """Runs a run's jobs and reports each one's outcome exactly once (``report``). Records are written by
    the process that calls ``run`` (the driver), atomically, under the job's lock (see ``claim_job``)."""

    name: str

    def run(self, jobs: list[Job], context: RunContext, report: Callable[[Job, JobOutcome], None]) -> None:
        ...


class LocalExecutor:
    """Jobs one after another in this process (the default); those another run is doing are put off to the
    end, then waited for."""

    name = "local"

    def run(self, jobs: list[Job], context: RunContext, report: Callable[[Job, JobOutcome], None]) -> None:
        from tqdm import tqdm

        scene_cache: dict = {}

        def attempt(job: Job, wait: bool) -> JobOutcome:
            context.bar.set_postfix_str(f"{job.scene} {job.method} seed{job.seed}" +
                                        (" (after another run)" if wait else ""))
            steps = job.config.get("steps")
            progress = tqdm(total=steps if isinstance(steps, int) and not isinstance(steps, bool) else None,
                            desc=f"  {job.method}", unit="step", leave=False, disable=not context.show_progress,
                            position=1)

            def on_step(step: int, logs: dict[str, float]) -> None:
                progress.update(step - progress.n)
                progress.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "psnr")},
                                     refresh=False)

            try:
                return run_job(job, context.results_dir, context.root, context.device, context.overwrite,
                               context.lpips_hashes, on_step, scene_cache, wait=wait, since=context.started)
            finally:
                progress.close()

        busy = []
        for job in jobs:
            outcome = attempt(job, wait=False)
            if outcome.status == "busy":
                busy.append(job)
            else:
                report(job, outcome)
        for job in busy:
            report(job, attempt(job, wait=True))


def run_suite(jobs: list[Job], results_dir: Path, root: Path | str | None = None, device: str = "cpu",
              overwrite: bool = False, show_progress: bool = True, executor: Executor | None = None) -> RunSummary:
    """Run every job with ``executor`` (default: one after another in this process), one progress bar over
    the jobs; data and metric weights are checked first (``preflight``)."""
    from tqdm import tqdm

    root = data_root(root)
    lpips_hashes = preflight(jobs, root)
    summary = RunSummary()
    bar = tqdm(total=len(jobs), desc="jobs", unit="job", disable=not show_progress, position=0)
    context = RunContext(results_dir, root, device, overwrite, lpips_hashes, time.time(), show_progress, bar)
    try:
        (executor or LocalExecutor()).run(jobs, context, lambda job, outcome: _tally(summary, outcome, job, context))
    finally:
        bar.close()
    return summary


@dataclass
class PlannedJob:
    job: Job
    digest: str  # the config hash keying the record ("" when the scene cannot be read)
    path: Path | None
    status: str  # recorded | failed (recorded; runs again) | to run | problem: ... | no data: ...


def dry_run(jobs: list[Job], results_dir: Path, root: Path | str | None = None) -> list[PlannedJob]:
    """Each job with its config hash and what the results folder holds for it; nothing is run, built or
    locked."""
    root = data_root(root)
    planned = []
    for job in jobs:
        try:
            _, digest, path = locate_job(job, results_dir, root)
        except shards.ShardError as exc:
            planned.append(PlannedJob(job, "", None, f"no data: {exc}"))
            continue
        record, problem = existing_record(path, digest)
        status = (f"problem: {problem}" if problem else "to run" if record is None else
                  "recorded" if record["status"] == "ok" else "failed (recorded; runs again)")
        planned.append(PlannedJob(job, digest, path, status))
    return planned


def _tally(summary: RunSummary, outcome: JobOutcome, job: Job, context: RunContext) -> None:
    bar = context.bar
    bar.update(1)
    if outcome.status == "problem":
        summary.problems.append((outcome.path, outcome.problem))
        bar.write(f"PROBLEM {outcome.problem}")
        return
    {"ok": summary.done, "skipped": summary.skipped, "failed": summary.failed,
     "shared": summary.shared}[outcome.status].append(outcome.path)
    if outcome.status == "failed":
        error = results.read_record(outcome.path).get("error", "")
        bar.write(f"FAILED {job.scene} {job.method} seed{job.seed}: {error}")
    elif outcome.status in ("ok", "shared"):
        context.status(f"{'done' if outcome.status == 'ok' else 'done by another run'} {job.scene} {job.method} "
                       f"seed{job.seed}")
