"""``gfbench leaderboard``: the CSV, Markdown and chart of a suite's results, optionally beside the paper's."""

from __future__ import annotations

from pathlib import Path

import click

from gfbench import leaderboard as boards
from gfbench import paper, results, specs


def output_folder(results_dir: Path, out_dir: Path | None, publish: bool, all_configs: bool) -> Path:
    """Where the tables go: ``--out``, else ``leaderboards/`` with ``--publish``, else ``<results>/leaderboards``."""
    if publish and out_dir is not None:
        raise click.UsageError("--publish writes into leaderboards/; do not combine it with --out")
    if publish and all_configs:
        raise click.UsageError("a published leaderboard shows the suite's preset only; drop --all-configs")
    if publish:
        return boards.PUBLISHED
    return out_dir if out_dir is not None else results_dir / boards.LEADERBOARDS_IN_RESULTS


@click.command("leaderboard")
@click.option("--suite", "suite_id", required=True,
              help="Suite id (see 'gfbench ls suites') or the path of a suite file.")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path),
              default=results.DEFAULT_RESULTS, show_default=True, help="Folder of result records.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to write <suite>.csv/.md/.png into (default: <results>/leaderboards).")
@click.option("--publish", is_flag=True,
              help="Write into the checkout's published tables, leaderboards/ (the only way to change them).")
@click.option("--all-configs", is_flag=True,
              help="Show every config as its own entry (labelled by preset name or config hash), not only the "
                   "suite's preset.")
@click.option("--compare-paper", is_flag=True,
              help="Add the GenFusion supplement's numbers for this suite beside ours, with the difference.")
def leaderboard(suite_id: str, results_dir: Path, out_dir: Path | None, publish: bool, all_configs: bool,
                compare_paper: bool) -> None:
    """Build the leaderboard of a suite from its result records.

    Only records of the suite's current version and protocol are used, and by default only those that ran
    the suite's preset; every record left out is listed with the reason, and unreadable record files are
    listed under problems. Written into <results>/leaderboards unless --out or --publish say otherwise.
    """
    try:
        spec = specs.load_suite(suite_id)
    except specs.SpecError as exc:
        raise click.ClickException(str(exc)) from exc
    out_dir = output_folder(results_dir, out_dir, publish, all_configs)
    scan = results.scan_records(results_dir, spec.id)
    for path, problem in scan.problems:
        click.echo(f"warning: skipped {path}: {problem}", err=True)
    if not scan.records and not scan.problems:
        raise click.ClickException(
            f"no result records for suite {spec.id!r} under {results_dir / spec.id}; "
            f"make them with 'gfbench run --suite {spec.id}' (or point --results at their folder)")
    board = boards.build_leaderboard(scan.records, spec, all_configs=all_configs, problems=scan.problems)
    for refused in board.refused:
        click.echo(f"warning: left out {refused.path}: {refused.reason}", err=True)
    if board.long.empty and board.failed.empty:
        hint = "" if all_configs else f" or that ran its preset {spec.preset!r} (see --all-configs)"
        raise click.ClickException(
            f"none of the {len(scan.records) + len(scan.problems)} record file(s) for suite {spec.id!r} is a "
            f"readable record of its current version (v{spec.version}) and protocol{hint}; "
            f"run them with 'gfbench run --suite {spec.id}'")
    if compare_paper and spec.notice:
        click.echo(f"warning: {spec.notice}", err=True)
    try:
        if compare_paper and paper.paper_results(spec.id).empty:
            covered = ", ".join(sorted(set(paper.load_tables()["suite"])))
            click.echo(f"warning: the paper has no table for suite {spec.id!r} (it covers {covered}); "
                       "the comparison will be empty", err=True)
        written = boards.write_leaderboard(board, out_dir, compare_paper=compare_paper)
    except FileNotFoundError as exc:  # paper tables missing (an install without the checkout's leaderboards/)
        raise click.ClickException(str(exc)) from exc
    for path in written:
        click.echo(f"wrote {path}")
    if not board.failed.empty:
        click.echo(f"{len(board.failed)} failed job(s) listed in {out_dir / (spec.id + '.md')}", err=True)
    if not publish:
        click.echo(f"(the published tables in {boards.PUBLISHED}/ change only with --publish)")
