"""``gfbench run``: train and score methods on a suite."""

from __future__ import annotations

from pathlib import Path

import click

from gfbench.results import DEFAULT_RESULTS

PRIOR_CACHE = "prior-cache"  # beside the shards: <data root>/prior-cache/<kind>/<prior hash>/<dataset>/<scene>


def prior_cache_folder(root) -> Path:
    """Where prior predictions are cached: beside local shards, else (shards from a URL) in the user's cache."""
    from gfbench.paths import data_root

    base = data_root(root)
    return (Path.home() / ".cache" / "gfbench" if isinstance(base, str) else base) / PRIOR_CACHE


def runnable_methods(names: list[str], *, device: str, protocol: str, configured: set[str],
                     preset: str | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """Of the registered ``names``, those that can run here (device, the suite's protocol, the priors the
    run names, a presets file that loads and has ``preset``), and ``(name, why)`` for each of the others, a
    broken entry point included."""
    from gfbench import methods

    runnable, skipped = [], []
    for name in names:
        try:
            cls = methods.load_method_class(name)
            presets = methods.method_presets(name, cls)
        except (methods.MethodLoadError, methods.ConfigError) as exc:
            skipped.append((name, str(exc)))
            continue
        problems = methods.capabilities_of(cls).problems(device=device, protocol=protocol, priors=configured)
        if preset is not None and presets.path is not None and preset not in presets.presets:
            problems.append(f"has no preset {preset!r} (presets: {', '.join(presets.presets)})")
        if problems:
            skipped.append((name, "; ".join(problems)))
        else:
            runnable.append(name)
    return runnable, skipped


def explain(reason: str) -> str:
    """A skip reason with how to provide a missing prior."""
    from gfbench.priors import KINDS

    for kind, handler in KINDS.items():
        reason = reason.replace(f"needs a {kind} prior (none configured)",
                                f"needs a {kind} prior (none configured: {handler.how_to_name})")
    return reason


@click.command()
@click.option("--suite", "suite_id", required=True,
              help="Suite id (see 'gfbench ls suites') or the path of a suite file of your own.")
@click.option("--method", "method_names", multiple=True,
              help="Method to run (repeatable). Default: every registered method that can run here with the "
                   "device and priors given; the others are listed with the reason.")
@click.option("--scenes", "scenes", multiple=True, help="Only these scenes (repeatable, or comma-separated).")
@click.option("--seed", "seeds", type=int, multiple=True, help="Seed (repeatable). Default: the suite's seeds.")
@click.option("--preset", help="Method preset (default: the suite's, e.g. 'paper' or 'quick').")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override one preset setting, e.g. --set steps=200 (repeatable); checked against the "
                   "method's typed settings.")
@click.option("--depth-prior", "depth_prior", metavar="PATH|oracle",
              help="Depth prior for methods that need one: a local transformers folder (Depth Anything, DPT), "
                   "or 'oracle' (the dataset's own depth, only where the suite allows it). "
                   "Default: $GFBENCH_DEPTH_PRIOR, else the suite's default depth prior if it names one.")
@click.option("--prior", "video_prior", metavar="PATH",
              help="Video diffusion prior for methods that need one (GenFusion): a local folder saved by "
                   "gfbench's video prior (save_pretrained, or 'gfbench prior convert'). "
                   "Default: $GFBENCH_VIDEO_PRIOR, else the suite's default prior (its 'default_priors', a "
                   "prior shipped with gfbench: see 'gfbench ls priors').")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RESULTS,
              show_default=True, help="Where result records and renders go.")
@click.option("--data", "root", metavar="PATH|URL",
              help="Shard root (default: $GFBENCH_DATA, else ~/.cache/gfbench/data): a folder, or a URL that "
                   "WebDataset reads (http(s)://..., s3://... through fsspec, or 'pipe:COMMAND' with {path} for "
                   "<dataset>/<file>); shards from a URL are checked against the manifest's sha256. Prior "
                   "predictions are cached beside local shards.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where methods train and render.")
@click.option("--overwrite", is_flag=True, help="Redo jobs that already have a successful record.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: jobs one after another in this process. ray: each job a Ray task (pip install "
                   "'gfbench[ray]'); --results must then be storage every Ray node sees.")
@click.option("--address", help="With --executor ray: the Ray cluster to use (e.g. 'auto' or ray://HOST:10001). "
                                "Default: $RAY_ADDRESS, else a Ray instance started on this machine for the run.")
@click.option("--max-retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="With --executor ray: how many times a job whose worker died is run again before it is "
                   "recorded as failed (a job that raises is recorded as failed at once).")
@click.option("--dry-run", is_flag=True,
              help="Print the jobs, their config hashes and whether each is already recorded; run nothing.")
def run(suite_id, method_names, scenes, seeds, preset, settings, depth_prior, video_prior, results_dir, root,
        device, overwrite, executor, address, max_retries, dry_run) -> None:
    """Run methods on a suite: one job per scene x method x seed, one result record per job.

    Finished jobs (same suite, protocol, data, config, priors and seed) are skipped, so an interrupted run
    resumes where it stopped; a job that crashes is recorded as failed and the next one still runs. Several
    runs may share one results folder: each job is locked while it runs, and a job another run is doing is
    taken from its record instead of being done twice.
    """
    import yaml

    from gfbench import methods, runner, shards, specs
    from gfbench.metrics import LpipsWeightsMissing
    from gfbench.priors import KINDS, PriorError

    if device == "cuda" and executor == "local" and not dry_run:  # with Ray the workers' GPUs count
        import torch

        if not torch.cuda.is_available():
            raise click.ClickException("--device cuda: no CUDA device is available here")
    named_priors = {"depth": depth_prior, "video": video_prior}
    try:
        suite = specs.load_suite(suite_id)
        configured = {kind for kind, handler in KINDS.items() if handler.named(named_priors.get(kind), suite)}
        chosen, skipped = choose_methods(list(method_names), device=device, protocol=suite.protocol_type,
                                         configured=configured, preset=preset or suite.preset)
        for name, reason in skipped:
            click.echo(f"skipped {name}: {explain(reason)}", err=True)
        if not chosen:
            raise click.ClickException(f"no registered method can run suite {suite.id} here")
        scene_list = [s for item in scenes for s in item.split(",") if s]
        jobs = runner.plan_jobs(suite, chosen, scene_list or None, list(seeds) or None, preset,
                                runner.parse_overrides(list(settings)), device=device, priors=named_priors,
                                prior_cache=prior_cache_folder(root))
    except yaml.YAMLError as exc:
        raise click.ClickException(f"--set: a value is not valid YAML: {exc}") from exc
    except (specs.SpecError, KeyError, ValueError, PriorError, methods.MethodLoadError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{len(jobs)} job(s): suite {suite.id} v{suite.version}, methods {', '.join(chosen)}, "
               f"{len({j.scene for j in jobs})} scene(s), results in {results_dir}")
    for kind, name, origin in sorted({(k, s.name, s.origin) for job in jobs for k, s in job.priors.items()}):
        click.echo(f"{kind} prior: {name} ({describe_origin(kind, origin, suite)})")
    if dry_run:
        print_dry_run(jobs, results_dir, root)
        return
    from gfbench import executors

    try:
        chosen_executor = None
        if executor == "ray":
            for name in chosen:  # a method's declared resources are checked before anything runs
                executors.job_resources(methods.load_method_class(name), device)
            chosen_executor = executors.RayExecutor(address, max_retries)
        summary = runner.run_suite(jobs, results_dir, root, device=device, overwrite=overwrite,
                                   executor=chosen_executor)
    except (shards.ShardError, LpipsWeightsMissing, PriorError, executors.NotShared, executors.RayMissing,
            executors.BadResources) as exc:
        raise click.ClickException(str(exc)) from exc
    shared = f", {len(summary.shared)} done by another run meanwhile" if summary.shared else ""
    problems = f", {len(summary.problems)} not run (a file in the way)" if summary.problems else ""
    click.echo(f"done: {len(summary.done)} ran, {len(summary.skipped)} skipped (already recorded){shared}, "
               f"{len(summary.failed)} failed{problems}")
    for path in summary.failed:
        click.echo(f"  failed: {path}", err=True)
    for _, problem in summary.problems:
        click.echo(f"  not run: {problem}", err=True)
    if summary.failed or summary.problems:
        raise SystemExit(1)


def describe_origin(kind: str, origin: str | None, suite) -> str:
    """Where a run's prior of ``kind`` came from, in words: the flag, the variable or the suite's default."""
    from gfbench.priors import FROM_ENV, FROM_FLAG, FROM_SUITE, KINDS

    handler = KINDS[kind]
    return {FROM_FLAG: f"from {handler.flag.split()[0]}", FROM_ENV: f"from ${handler.env_var}",
            FROM_SUITE: f"the default of suite {suite.id}, shipped with gfbench"}.get(origin, "origin unknown")


def choose_methods(requested: list[str], *, device: str, protocol: str, configured: set[str],
                   preset: str | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """The methods to run and the skipped ones with their reason. Methods named on the command line must be
    able to run (else an error saying why, at planning for presets and settings); without names, every
    registered method that can."""
    from gfbench import methods

    if not requested:
        return runnable_methods(methods.available_methods(), device=device, protocol=protocol, configured=configured,
                                preset=preset)
    for name in requested:
        cls = methods.load_method_class(name)
        problems = methods.capabilities_of(cls).problems(device=device, protocol=protocol, priors=configured)
        if problems:
            raise ValueError(f"method {name!r} cannot run here: {explain('; '.join(problems))}")
    return list(requested), []


def print_dry_run(jobs, results_dir, root) -> None:
    """One line per job: whether it is recorded, its config hash, scene, method, seed and record file."""
    from gfbench import runner

    planned = runner.dry_run(jobs, results_dir, root)
    for item in planned:
        job = item.job
        where = item.path if item.path is not None else "-"
        click.echo(f"{item.status:<8} {item.digest[:12] or '-':<12} {job.scene} {job.method} seed{job.seed} {where}")
    recorded = sum(item.status == "recorded" for item in planned)
    click.echo(f"dry run: {len(planned)} job(s), {recorded} already recorded, {len(planned) - recorded} to run")
