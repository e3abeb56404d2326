"""``gfbench leaderboard``: the CSV, Markdown and chart of a suite's results, optionally beside the paper's."""

from __future__ import annotations

from pathlib import Path

import click

from gfbench import leaderboard as boards
from gfbench import paper, results, specs


@click.command("leaderboard")
@click.option("--suite", "suite_id", required=True,
              help="Suite id (see 'gfbench ls suites') or the path of a suite file.")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path),
              default=results.DEFAULT_RESULTS, show_default=True, help="Folder of result records.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=boards.DEFAULT_OUT, show_default=True, help="Folder to write <suite>.csv/.md/.png into.")
@click.option("--compare-paper", is_flag=True,
              help="Add the GenFusion supplement's numbers for this suite beside ours, with the difference.")
def leaderboard(suite_id: str, results_dir: Path, out_dir: Path, compare_paper: bool) -> None:
    """Build the leaderboard of a suite from its result records.

    Only records of the suite's current version and protocol are used; others are listed and left out.
    """
    try:
        spec = specs.load_suite(suite_id)
    except specs.SpecError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        pairs = list(results.iter_records(results_dir, spec.id))
    except ValueError as exc:  # an unreadable record
        raise click.ClickException(str(exc)) from exc
    if not pairs:
        raise click.ClickException(
            f"no result records for suite {spec.id!r} under {results_dir / spec.id}; "
            f"make them with 'gfbench run --suite {spec.id}' (or point --results at their folder)")
    board = boards.build_leaderboard(pairs, spec)
    for refused in board.refused:
        click.echo(f"warning: left out {refused.path}: {refused.reason}", err=True)
    if board.long.empty and board.failed.empty:
        raise click.ClickException(
            f"none of the {len(pairs)} record(s) for suite {spec.id!r} belong to its current version "
            f"(v{spec.version}) and protocol; re-run them with 'gfbench run --suite {spec.id}'")
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
