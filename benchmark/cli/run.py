"""``gfbench run``: train and score methods on a suite."""

from __future__ import annotations

from pathlib import Path

import click

from gfbench.results import DEFAULT_RESULTS


@click.command()
@click.option("--suite", "suite_id", required=True,
              help="Suite id (see 'gfbench ls suites') or the path of a suite file of your own.")
@click.option("--method", "method_names", multiple=True,
              help="Method to run (repeatable). Default: every registered method.")
@click.option("--scenes", "scenes", multiple=True, help="Only these scenes (repeatable, or comma-separated).")
@click.option("--seed", "seeds", type=int, multiple=True, help="Seed (repeatable). Default: the suite's seeds.")
@click.option("--preset", help="Method preset (default: the suite's, e.g. 'paper' or 'quick').")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override one preset setting, e.g. --set steps=200 (repeatable).")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RESULTS,
              show_default=True, help="Where result records and renders go.")
@click.option("--data", "root", metavar="PATH|URL",
              help="Shard root (default: $GFBENCH_DATA, else ~/.cache/gfbench/data): a folder, or a URL that "
                   "WebDataset reads (http(s)://..., s3://... through fsspec, or 'pipe:COMMAND' with {path} for "
                   "<dataset>/<file>); shards from a URL are checked against the manifest's sha256.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
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
def run(suite_id, method_names, scenes, seeds, preset, settings, results_dir, root, device, overwrite, executor,
        address, max_retries, dry_run) -> None:
    """Run methods on a suite: one job per scene x method x seed, one result record per job.

    Finished jobs (same suite, protocol, data, config and seed) are skipped, so an interrupted run resumes
    where it stopped; a job that crashes is recorded as failed and the next one still runs. Several runs may
    share one results folder: each job is locked while it runs, and a job another run is doing is taken
    from its record instead of being done twice.
    """
    from gfbench import methods, runner, shards, specs
    from gfbench.metrics import LpipsWeightsMissing

    try:
        suite = specs.load_suite(suite_id)
        chosen = list(method_names) or methods.available_methods()
        for name in chosen:
            methods.load_method_class(name)
        scene_list = [s for item in scenes for s in item.split(",") if s]
        jobs = runner.plan_jobs(suite, chosen, scene_list or None, list(seeds) or None, preset,
                                runner.parse_overrides(list(settings)))
    except (specs.SpecError, KeyError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if dry_run:
        print_dry_run(jobs, results_dir, root)
        return
    if device == "cuda" and executor == "local":  # with Ray the workers' GPUs count, not this machine's
        import torch

        if not torch.cuda.is_available():
            raise click.ClickException("--device cuda: no CUDA device is available here")
    click.echo(f"{len(jobs)} job(s): suite {suite.id} v{suite.version}, methods {', '.join(chosen)}, "
               f"{len({j.scene for j in jobs})} scene(s), results in {results_dir}")
    from gfbench import executors

    try:
        chosen_executor = None
        if executor == "ray":
            for name in chosen:  # a method's declared resources are checked before anything runs
                executors.job_resources(methods.load_method_class(name), device)
            chosen_executor = executors.RayExecutor(address, max_retries)
        summary = runner.run_suite(jobs, results_dir, root, device=device, overwrite=overwrite,
                                   executor=chosen_executor)
    except (shards.ShardError, LpipsWeightsMissing, executors.NotShared, executors.RayMissing,
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
