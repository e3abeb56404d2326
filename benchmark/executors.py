"""Executors beyond the default one: ``RayExecutor`` runs each job as a Ray task on a cluster.

The driver (the process running ``gfbench run``) plans the jobs, skips those already recorded, holds each
running job's lock, and writes every record itself, atomically, as the local executor does; a worker only
fits, renders and scores into the job's temporary folder inside the results folder, which is why that folder
must be storage every worker sees (checked before any job starts: a probe task on every node writes a file
the driver must see). A job that raises is recorded as failed; a worker that dies mid-job is retried by Ray
up to ``max_retries`` times, then recorded as failed with the reason. Ctrl-C cancels the outstanding tasks
and writes no record for them (their temporary folders are removed; a re-run resumes).

Ray is an optional dependency (``pip install 'gfbench[ray]'``).
"""

from __future__ import annotations

import os
import platform
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

from gfbench import methods as method_registry
from gfbench import runner, shards
from gfbench.methods.core.memory import retain_freed_memory
from gfbench.paths import user_spec_dirs
from gfbench.storage import DiskFull

FORWARDED_ENV = ("TORCH_HOME", "HF_HOME", "HF_HUB_OFFLINE")  # and every GFBENCH_* variable
RESOURCE_KEYS = {"cpus", "gpus", "memory_gb"}
PROBE_TIMEOUT_S = 300
DEATH_ERRORS = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "ActorDiedError")


class NotShared(RuntimeError):
    """The results folder (or the data folder) is not visible from every Ray node; the message says which."""


class BadResources(ValueError):
    """A method class's ``resources`` attribute is not what ``job_resources`` reads; the message names it."""


class RayMissing(RuntimeError):
    """``--executor ray`` without Ray installed."""


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RayMissing("--executor ray needs Ray: pip install 'gfbench[ray]'") from exc
    return ray


def job_resources(method_class: type, device: str) -> dict[str, Any]:
    """Ray task options for one job of a method: its class's ``resources`` (``{"cpus": 2, "gpus": 1,
    "memory_gb": 24}``, each optional) over the defaults (1 CPU; 1 GPU with ``--device cuda``, none on CPU)."""
    declared = getattr(method_class, "resources", None) or {}
    where = f"{method_class.__module__}.{method_class.__qualname__}.resources"
    if not isinstance(declared, dict):
        raise BadResources(f"{where}: expected a dict with keys {sorted(RESOURCE_KEYS)}, got {declared!r}")
    unknown = sorted(set(declared) - RESOURCE_KEYS)
    if unknown:
        raise BadResources(f"{where}: unknown key {unknown[0]!r}; keys: {', '.join(sorted(RESOURCE_KEYS))}")
    for key, value in declared.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise BadResources(f"{where}: {key!r} is {value!r}, expected a number >= 0")
    options: dict[str, Any] = {"num_cpus": declared.get("cpus", 1),
                               "num_gpus": declared.get("gpus", 1) if device == "cuda" else 0}
    if declared.get("memory_gb"):
        options["memory"] = int(declared["memory_gb"] * 2**30)
    return options


def worker_env() -> dict[str, str]:
    """Environment a worker needs to find what the driver finds: GFBENCH_* settings (spec folders given
    with ``--specs`` included), and the weight caches."""
    env = {k: v for k, v in os.environ.items() if k.startswith("GFBENCH_") or k in FORWARDED_ENV}
    spec_path = [str(d.resolve()) for d in user_spec_dirs()]
    if spec_path:
        env["GFBENCH_SPEC_PATH"] = os.pathsep.join(spec_path)
    return env


# ---------------------------------------------------------------- what runs on a worker

_WORKER_SCENES: dict = {}  # one scene kept per worker process, as the local executor keeps one


def _run_on_worker(job: runner.Job, root: str, workdir: str, device: str) -> dict[str, Any]:
    """One job on a worker: the part of its record it produces (see ``runner.execute_job``)."""
    retain_freed_memory()  # as the gfbench command does at start-up
    folder = Path(workdir)
    if not folder.is_dir():
        return {"status": "failed", "host": platform.node(),
                "error": f"NotShared: the worker on {platform.node()} does not see the job's folder {folder}; "
                         "the results folder must be storage every node mounts"}
    for item in folder.iterdir():  # a retried attempt starts from an empty folder
        shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
    try:
        return runner.execute_job(job, root, folder, device, None, _WORKER_SCENES)
    except DiskFull as exc:
        return {"disk_full": [str(exc.path), exc.what, exc.detail]}


def _probe(results_dir: str, token: str, root: str) -> dict[str, str]:
    """On one node: write a probe file into the results folder, and look at the data root."""
    host = platform.node()
    report = {"host": host, "write": "", "data": ""}
    try:
        Path(results_dir).mkdir(parents=True, exist_ok=True)
        (Path(results_dir) / f".probe-{token}-{host}").write_text(token)
    except OSError as exc:
        report["write"] = f"{type(exc).__name__}: {exc}"
    if not shards.is_remote(root) and not Path(root).is_dir():
        report["data"] = f"no folder {root}"
    return report


# ---------------------------------------------------------------- the driver


class RayExecutor:
    """Each job a Ray task, on the cluster at ``address`` or on a Ray instance started here for the run."""

    name = "ray"

    def __init__(self, address: str | None = None, max_retries: int = 2, init_options: dict | None = None):
        if max_retries < 0:
            raise ValueError(f"--max-retries must be >= 0, got {max_retries}")
        self.address = address
        self.max_retries = max_retries
        self.init_options = init_options or {}

    def run(self, jobs: list[runner.Job], context: runner.RunContext,
            report: Callable[[runner.Job, runner.JobOutcome], None]) -> None:
        ray = import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            starts_one = self.address is None and not os.environ.get("RAY_ADDRESS")
            options = {"include_dashboard": False, **self.init_options} if starts_one else self.init_options
            ray.init(address=self.address, runtime_env={"env_vars": worker_env()}, **options)
        try:
            check_shared_storage(ray, Path(context.results_dir), context.root)
            _Driver(ray, self.max_retries, context, report).run(jobs)
        finally:
            if started_here:
                ray.shutdown()


def check_shared_storage(ray, results_dir: Path, root: Path | str) -> None:
    """Raise ``NotShared`` unless every alive node writes a probe file into ``results_dir`` that this
    process then sees (and sees the data folder, when it is a folder)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    results_dir = results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    probe = ray.remote(_probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [probe.options(num_cpus=0, max_retries=0,
                          scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(str(results_dir), token, _worker_root(root)) for n in nodes]
    problems = []
    try:
        for node, found in zip(nodes, ray.get(refs, timeout=PROBE_TIMEOUT_S)):
            where = f"node {node.get('NodeManagerAddress', '?')} ({found['host']})"
            probe_file = results_dir / f".probe-{token}-{found['host']}"
            if found["write"]:
                problems.append(f"{where} cannot write into {results_dir}: {found['write']}")
            elif not probe_file.exists():
                problems.append(f"{where} wrote a probe file into {results_dir} that this machine does not see")
            if found["data"]:
                problems.append(f"{where} does not see the data folder: {found['data']}")
    finally:
        for stale in results_dir.glob(f".probe-{token}-*"):
            stale.unlink(missing_ok=True)
    if problems:
        raise NotShared("the results folder must be storage every Ray node sees (jobs write their renders there "
                        "and this machine writes the records): " + "; ".join(problems))


def _worker_root(root: Path | str) -> str:
    return str(root) if shards.is_remote(root) else str(Path(root).resolve())


class _Driver:
    """Submits claimed jobs, collects their results and commits their records."""

    def __init__(self, ray, max_retries: int, context: runner.RunContext,
                 report: Callable[[runner.Job, runner.JobOutcome], None]):
        self.ray, self.max_retries, self.context, self.report = ray, max_retries, context, report
        self.pending: dict[Any, tuple[runner.Claim, Path]] = {}
        self.task = ray.remote(_run_on_worker)

    def run(self, jobs: list[runner.Job]) -> None:
        busy = []
        try:
            for job in jobs:
                if not self.claim_and_submit(job, wait=False):
                    busy.append(job)
            self.drain()
            for job in busy:  # another run holds these; wait for it, then take its record or run the job
                self.claim_and_submit(job, wait=True)
            self.drain()
        finally:
            self.cancel_outstanding()

    def claim_and_submit(self, job: runner.Job, wait: bool) -> bool:
        """False when another run holds the job (``busy``); else the job is reported or submitted."""
        c = self.context
        claim = runner.claim_job(job, c.results_dir, c.root, c.overwrite, wait=wait, since=c.started)
        if isinstance(claim, runner.JobOutcome):
            if claim.status == "busy":
                return False
            self.report(job, claim)
            return True
        try:
            workdir = runner.results.temporary_renders_dir(claim.path)
            options = job_resources(method_registry.load_method_class(job.method), c.device)
            options.update(max_retries=self.max_retries, name=f"gfbench {job.scene} {job.method} seed{job.seed}")
            ref = self.task.options(**options).remote(job, _worker_root(c.root), str(workdir.resolve()), c.device)
        except BaseException:
            claim.release()
            raise
        self.pending[ref] = (claim, workdir)
        self.show_running()
        return True

    def drain(self) -> None:
        while self.pending:
            done, _ = self.ray.wait(list(self.pending), num_returns=1)
            for ref in done:
                self.finish(ref, *self.pending.pop(ref))
            self.show_running()

    def finish(self, ref, claim: runner.Claim, workdir: Path) -> None:
        c = self.context
        try:
            produced = self.result_of(ref)
            if "disk_full" in produced:
                raise DiskFull(*produced["disk_full"])
            status = runner.commit_record(claim, produced, workdir, c.device, c.lpips_hashes)
        finally:
            runner.discard_workdir(workdir)
            claim.release()
        self.report(claim.job, runner.JobOutcome(status, claim.path))

    def result_of(self, ref) -> dict[str, Any]:
        """The task's result, or a failed one saying why there is none (the worker died on every attempt,
        or the task could not run at all, e.g. the method's module is not installed on the worker)."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            kind = type(exc).__name__
            if any(name in kind for name in DEATH_ERRORS):
                why = f"the worker died on each of {self.max_retries + 1} attempt(s) ({kind})"
            else:
                why = f"the task could not run on its worker ({kind})"
            detail = str(exc).strip().splitlines()
            return {"status": "failed", "error": f"{why}: {detail[0][:500] if detail else ''}".rstrip(": ")}

    def show_running(self) -> None:
        self.context.bar.set_postfix_str(f"{len(self.pending)} running on Ray")

    def cancel_outstanding(self) -> None:
        """Ctrl-C or an error: cancel what still runs; no record is written for it."""
        for ref, (claim, workdir) in list(self.pending.items()):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # already finished or gone: nothing to cancel
                pass
            runner.discard_workdir(workdir)
            claim.release()
        self.pending.clear()
