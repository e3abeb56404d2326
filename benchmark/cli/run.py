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
@click.option("--data", "root", type=click.Path(file_okay=False, path_type=Path),
              help="Shard root (default: $GFBENCH_DATA, else ~/.cache/gfbench/data).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--overwrite", is_flag=True, help="Redo jobs that already have a successful record.")
def run(suite_id, method_names, scenes, seeds, preset, settings, results_dir, root, device, overwrite) -> None:
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
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise click.ClickException("--device cuda: no CUDA device is available here")
    click.echo(f"{len(jobs)} job(s): suite {suite.id} v{suite.version}, methods {', '.join(chosen)}, "
               f"{len({j.scene for j in jobs})} scene(s), results in {results_dir}")
    try:
        summary = runner.run_suite(jobs, results_dir, root, device=device, overwrite=overwrite)
    except (shards.ShardError, LpipsWeightsMissing) as exc:
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
